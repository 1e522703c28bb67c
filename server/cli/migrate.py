"""`studio migrate`: apply and inspect the SQL migrations, on one database or the whole fleet.

Exit codes (stable, for scripts):
  0  success, everything up to date
  1  usage or configuration error
  2  refused before any change (an applied file edited or missing, a duplicate version,
     a new file numbered below the highest applied one, a database needing a baseline)
  3  a migration failed, or the database was unreachable (one database, or the master)
  4  some tenants failed or were unreachable; the others were migrated
  5  the migration lock was not acquired in time
  6  `status` only: migrations are pending
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from db.local_postgres import LocalPostgres
from db.migrations.fleet import run_fleet, run_one
from db.migrations.runner import DatabaseReport, Status
from server.cli._common import EXIT_CONFIG, configured_database_url, default_data_dir
from server.database_setup import MASTER_DATABASE

__all__ = ["add_parser", "exit_code"]

EXIT_OK, EXIT_REFUSED, EXIT_FAILED, EXIT_PARTIAL, EXIT_LOCK, EXIT_PENDING = 0, 2, 3, 4, 5, 6
BAD_FOR_TENANT = {Status.FAILED, Status.UNREACHABLE, Status.LOCK_TIMEOUT}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "migrate",
        help="apply or inspect SQL migrations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (
        ("status", "report applied and pending migrations; changes nothing"),
        ("up", "apply pending migrations"),
        (
            "baseline",
            "adopt a database built without this runner: record files up to --version as present",
        ),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument(
            "--database-url",
            help="one database (default: the master "
            "from STUDIO_DATABASE_URL, then every tenant it lists)",
        )
        action.add_argument(
            "--kind",
            choices=("tenant", "master"),
            default="tenant",
            help="which migrations --database-url gets (default: tenant)",
        )
        action.add_argument(
            "--migrations-dir",
            type=Path,
            help="use the files of this folder instead of the built-in ones",
        )
        action.add_argument(
            "--lock-wait",
            type=float,
            default=60.0,
            help="seconds to wait for another runner (default 60)",
        )
        action.add_argument(
            "--json",
            action="store_true",
            help="JSON lines: one object per database, then a summary",
        )
        if name == "baseline":
            action.add_argument("--version", type=int, required=True)
        action.set_defaults(run=run, mode=name)


def exit_code(reports: list[DatabaseReport], *, fleet: bool) -> int:
    statuses = [r.status for r in reports]
    if Status.REFUSED in statuses:
        return EXIT_REFUSED
    head, tenants = (reports[0], reports[1:]) if fleet else (reports[0], [])
    if head.status in {Status.FAILED, Status.UNREACHABLE}:
        return EXIT_FAILED
    if head.status is Status.LOCK_TIMEOUT:
        return EXIT_LOCK
    if any(r.status in BAD_FOR_TENANT for r in tenants):
        return EXIT_PARTIAL
    if Status.PENDING in statuses:
        return EXIT_PENDING
    return EXIT_OK


def _human(report: DatabaseReport) -> str:
    versions = f"{report.before or 0} -> {report.after or 0}"
    line = f"{report.target:<32} {report.status!s:<12} version {versions}"
    if report.applied:
        line += f"  applied {', '.join(f'{v:04d}' for v in report.applied)}"
    if report.pending:
        line += f"  pending {', '.join(f'{v:04d}' for v in report.pending)}"
    line += f"  ({report.duration_ms} ms)"
    details = [*report.problems, *([str(report.error)] if report.error else [])]
    return "\n".join([line, *(f"    {d}" for d in details)])


async def _reports(args: argparse.Namespace, url: str | None) -> AsyncIterator[DatabaseReport]:
    baseline = getattr(args, "version", None)
    if args.database_url:
        yield await run_one(
            args.database_url,
            args.kind,
            mode=args.mode,
            directory=args.migrations_dir,
            lock_wait=args.lock_wait,
            baseline_version=baseline,
        )
        return
    assert url is not None
    async for report in run_fleet(url, mode=args.mode, lock_wait=args.lock_wait):
        yield report


async def _run(args: argparse.Namespace) -> int:
    embedded = None
    url = configured_database_url()
    if not args.database_url:
        if args.mode == "baseline" or args.migrations_dir:
            print(
                "studio migrate: baseline and --migrations-dir need --database-url", file=sys.stderr
            )
            return EXIT_CONFIG
        if url is None:  # the embedded default, as `studio serve` runs it
            embedded = LocalPostgres(default_data_dir() / "pgdata")
            embedded.start()
            url = embedded.url(MASTER_DATABASE)
    reports = []
    try:
        async for report in _reports(args, url):
            reports.append(report)
            print(json.dumps(report.as_dict()) if args.json else _human(report), flush=True)
    finally:
        if embedded is not None:
            embedded.stop()
    code = exit_code(reports, fleet=not args.database_url)
    if args.json:
        counts: dict[str, int] = {}
        for r in reports:
            counts[str(r.status)] = counts.get(str(r.status), 0) + 1
        print(
            json.dumps(
                {"summary": {"databases": len(reports), "by_status": counts, "exit_code": code}}
            )
        )
    return code


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
