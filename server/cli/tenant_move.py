"""`studio tenants move`: move a studio's database to another PostgreSQL server.

    studio tenants move SLUG --to URL [--max-pause SECONDS] [--json]
    studio tenants move SLUG --drop-source      (once it has switched)
    studio tenants move SLUG --abort            (before it has switched)

The database is copied (pg_dump | pg_restore, with tools as new as both servers) while the
studio's writes are held: its callers get UNAVAILABLE (TENANT_MOVING) with a retry hint and
retry; reads go on. The copy is verified (row counts of every table, the migration history's
checksum), then the catalogue names the new server and writes resume there. The pause, from
hold to switch, is printed; a copy that would take longer than --max-pause is stopped and
the studio keeps its writes where it was. Each step is recorded in the master: run the same
command again to continue a move that failed or was interrupted. The source is kept, closed
to connections, until --drop-source.

Exit codes: 0 moved (or dropped, aborted), 1 no such studio or nothing to do,
2 bad command line, 3 a step failed or was refused (the studio is served where the
catalogue says; re-run to continue).
"""

from __future__ import annotations

import argparse
import json
import sys

import psycopg

from db.database_copy import CopyFailed
from db.pg_client_tools import NoSuitableTools
from db.tenant_move import DEFAULT_MAX_PAUSE, MoveError, MoveReport, move_tenant
from db.tenant_move_end import abort_move, drop_source
from db.tenant_roles import IsolationError
from server.cli._common import EXIT_CONFIG, add_data_dir_option
from server.cli.admin import _runner, add_tenants_action  # _runner: against the master

__all__ = ["add_parser"]

EXIT_FAILED = 3


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `move` to the actions of `studio tenants` (made by server/cli/admin.py)."""
    move = add_tenants_action(
        commands,
        "move",
        "move a studio's database to another PostgreSQL server (resumable)",
        __doc__,
    )
    move.add_argument("slug", metavar="SLUG", help="the studio")
    what = move.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--to", metavar="URL", help="the target server: a libpq URL whose user may create"
        " databases and roles (as for `tenants create --server-url`)"
    )  # fmt: skip
    what.add_argument(
        "--drop-source", action="store_true",
        help="drop the database the studio was moved from (only once it has switched)",
    )  # fmt: skip
    what.add_argument(
        "--abort", action="store_true",
        help="abandon a move that has not switched: writes resume at the source, the copy goes",
    )  # fmt: skip
    move.add_argument(
        "--max-pause", type=float, default=DEFAULT_MAX_PAUSE, metavar="SECONDS",
        help="hold the studio's writes at most this long; a longer copy is stopped and the"
        " studio keeps its writes where it was",
    )  # fmt: skip
    move.add_argument("--json", action="store_true", help="print one JSON object")
    add_data_dir_option(move)
    move.set_defaults(run=_runner(_move))


def _show(report: MoveReport, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict()), flush=True)
        return
    if not report.steps:
        print(f"studio {report.tenant} already moved to {report.target}")
        return
    pause = (
        f"writes held {report.pause_seconds:.3f} s (hold to switch)"
        if report.pause_seconds is not None
        else "switched by an earlier run"
    )
    print(f"moved studio {report.tenant} ({report.database}) from {report.source} to"
          f" {report.target}: {pause}; drop the source with --drop-source")  # fmt: skip


async def _move(args: argparse.Namespace, master_url: str) -> int:
    def progress(step: str) -> None:
        if not args.json:
            print(f"studio tenants move {args.slug}: {step}", file=sys.stderr, flush=True)

    try:
        if args.drop_source or args.abort:
            end = drop_source if args.drop_source else abort_move
            said = await end(master_url, args.slug)
            print(json.dumps(said) if args.json else ", ".join(f"{k} {v}" for k, v in said.items()))
            return 0
        report = await move_tenant(
            master_url, args.slug, args.to, max_pause=args.max_pause, on_step=progress
        )
    except LookupError:
        print(f"studio tenants move: no studio {args.slug!r}", file=sys.stderr)
        return EXIT_CONFIG
    except (MoveError, CopyFailed, NoSuitableTools, IsolationError, psycopg.Error) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"studio tenants move {args.slug}: {first_line}", file=sys.stderr)
        return EXIT_FAILED
    _show(report, as_json=args.json)
    return 0
