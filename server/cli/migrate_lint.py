"""`studio migrate lint [DIR]`: check migration files before they reach a fleet, without a
database. One line per finding, `FILE:LINE: RULE: MESSAGE` (or JSON lines with --json), then
a count on stderr. DIR is a folder of migration files, or one holding master/ and tenant/
(default: the built-in files). The rules are in db/migrations/lint.py; a finding is accepted
with `-- lint: allow RULE because REASON` on a line before the statement (`allow-file`: for
the whole file).

Exit codes:
  0  no finding
  1  usage or configuration error: DIR is not a folder, or squawk cannot run
  2  findings: fix each file, or accept a finding with its reason
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from db.migrations.files import migrations_dir
from db.migrations.lint import OUR_RULES, SQUAWK_EXCLUDED, SquawkMissing, lint_paths
from server.cli._common import EXIT_CONFIG

__all__ = ["EXIT_FINDINGS", "add_lint_parser"]

EXIT_FINDINGS = 2
EXIT_CODES_HELP = __doc__[__doc__.index("Exit codes") :]


def _rules() -> str:
    ours = "\n".join(f"  {name:<30} {what}" for name, what in OUR_RULES.items())
    off = "\n".join(f"  {name:<34} {why}" for name, why in SQUAWK_EXCLUDED.items())
    return f"our rules:\n{ours}\nsquawk's other rules run too, except:\n{off}\n\n"


def add_lint_parser(actions: argparse._SubParsersAction[Any]) -> None:
    text = "check migration files (squawk and our rules) before they run anywhere"
    action = actions.add_parser(
        "lint",
        help=text,
        description=__doc__.split("\n\nExit codes")[0],
        epilog=_rules() + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action.add_argument(
        "directory",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="a folder of migration files, or one with master/ and tenant/ (default: the"
        " built-in files)",
    )
    action.add_argument("--json", action="store_true", help="one JSON object per finding")
    action.set_defaults(run=run, mode="lint")


def run(args: argparse.Namespace) -> int:
    root: Path = args.directory or migrations_dir("master").parent
    if not root.is_dir():
        print(f"studio migrate lint: {root}: not a folder", file=sys.stderr)
        return EXIT_CONFIG
    try:
        folders, findings = lint_paths(root)
    except SquawkMissing as exc:
        print(f"studio migrate lint: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for finding in findings:
        print(json.dumps(finding.as_dict()) if args.json else finding, flush=True)
    files = sum(len(list(folder.glob("*.sql"))) for folder in folders)
    where = ", ".join(str(f) for f in folders)
    print(f"studio migrate lint: {len(findings)} finding(s) in {files} file(s) ({where})",
          file=sys.stderr)  # fmt: skip
    return EXIT_FINDINGS if findings else 0
