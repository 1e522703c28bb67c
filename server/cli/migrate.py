"""`studio migrate`: apply and inspect the SQL migrations, on one database or the whole fleet.

Without --database-url, the master (STUDIO_DATABASE_URL, else the embedded server of the data
directory, while `studio serve` runs it) goes first; if it fails nothing else runs. Then the
canary tenants (--canary N), then every other tenant, concurrently (--jobs overall,
--max-per-server per PostgreSQL server).

Exit codes (stable, for scripts):
  0    success, everything up to date
  1    usage or configuration error
  2    refused before any change (an applied file edited: drift; an applied file missing; a
       duplicate version; a new file numbered below the highest applied one; a statement that
       cannot run in its file's transaction; a database needing a baseline)
  3    a migration failed, or the database was unreachable (one database, or the master)
  4    some tenants failed, were unreachable or timed out on locks; the others were migrated
  5    the migration lock (or a table lock, after retries) was not acquired in time
  6    `status` only: migrations are pending
  130  interrupted by SIGINT, 143 by SIGTERM: in-flight work rolled back, partial report written
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import TextIO

from db.migrations.fleet import BAD, Fleet, FleetOptions, run_one
from db.migrations.runner import DatabaseReport, Status
from server.cli._common import (
    EXIT_CONFIG,
    NoMasterDatabase,
    add_data_dir_option,
    data_dir_of,
    master_database_url,
)
from server.cli.progress import Progress

__all__ = ["add_parser", "exit_code"]

EXIT_OK, EXIT_REFUSED, EXIT_FAILED, EXIT_PARTIAL, EXIT_LOCK, EXIT_PENDING = 0, 2, 3, 4, 5, 6
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
RERUN = {str(s) for s in BAD | {Status.SKIPPED}}
EXIT_CODES_HELP = __doc__[__doc__.index("Exit codes") :]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "migrate",
        help="apply or inspect SQL migrations",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (
        (
            "status",
            "report applied and pending migrations (read-only; works for a role that cannot write)",
        ),
        ("up", "apply pending migrations"),
        (
            "baseline",
            "adopt a database built without this runner: record files up to --version as present",
        ),
        (
            "repair",
            "accept an intentional edit of an applied file (--accept VERSION), with an audit row",
        ),
    ):
        action = actions.add_parser(
            name, help=help_text, description=help_text, epilog=EXIT_CODES_HELP
        )
        action.add_argument(
            "--database-url",
            metavar="URL",
            help="one database (default: the master, then every tenant it lists)",
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
            metavar="DIR",
            help="use the files of this folder instead of the built-in ones (fleet: tenant files)",
        )
        action.add_argument(
            "--lock-wait",
            type=float,
            default=60.0,
            help="seconds to wait for another runner",
        )
        action.add_argument(
            "--json",
            action="store_true",
            help="JSON lines on stdout: one object per database, then a summary",
        )
        action.add_argument(
            "--report",
            type=Path,
            metavar="FILE",
            help="also write the JSON lines to this file, as they come",
        )
        if name in {"status", "up"}:
            action.add_argument(
                "--all",
                action="store_true",
                help="the master and every tenant (the default without --database-url)",
            )
            action.add_argument(
                "--jobs", type=int, default=8, help="tenants migrated at once, overall"
            )
            action.add_argument(
                "--max-per-server",
                type=int,
                default=4,
                help="tenants at once per PostgreSQL server",
            )
            action.add_argument(
                "--canary",
                type=int,
                default=0,
                metavar="N",
                help="migrate the first N tenants first; stop if any fails (0: no canary)",
            )
            action.add_argument(
                "--on-error",
                choices=("continue", "stop"),
                default="continue",
                help="after a tenant fails: go on, or start no new tenant",
            )
            action.add_argument(
                "--max-failures",
                type=int,
                metavar="K",
                help="start no new tenant after K failures (default: no limit)",
            )
            action.add_argument(
                "--only-failed",
                type=Path,
                metavar="REPORT",
                help="re-run only the tenants a previous --report did not bring up to date",
            )
        if name == "baseline":
            action.add_argument(
                "--version",
                type=int,
                required=True,
                help="the last file the database already has (recorded as applied)",
            )
        if name == "repair":
            action.add_argument(
                "--accept",
                type=int,
                required=True,
                metavar="VERSION",
                help="the applied file whose edit is intentional (its new checksum is recorded)",
            )
        add_data_dir_option(action)
        action.set_defaults(run=run, mode=name)


def exit_code(reports: list[DatabaseReport], *, fleet: bool) -> int:
    statuses = [r.status for r in reports]
    if Status.REFUSED in statuses or Status.DRIFT in statuses:
        return EXIT_REFUSED
    head, tenants = reports[0], reports[1:] if fleet else []
    if head.status in {Status.FAILED, Status.UNREACHABLE}:
        return EXIT_FAILED
    if head.status is Status.LOCK_TIMEOUT:
        return EXIT_LOCK
    if any(r.status in BAD for r in tenants):
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
    details = [*report.problems, *report.warnings, *([str(report.error)] if report.error else [])]
    return "\n".join([line, *(f"    {d}" for d in details)])


def _status_table(reports: list[DatabaseReport]) -> str:
    """status --all: which databases are behind, by how much, and which are broken."""
    rows = [r for r in reports if r.pending or r.status in BAD]
    if not rows:
        return f"all {len(reports)} databases are up to date"
    rows.sort(key=lambda r: (r.status not in BAD, -len(r.pending), r.target))
    lines = [f"{'database':<32} {'server':<22} {'version':>7} {'behind':>6}  state"]
    for r in rows:
        state = "broken: " + str(r.status) if r.status in BAD else "behind"
        lines.append(
            f"{r.target:<32} {r.server:<22} {r.after or 0:>7} {len(r.pending):>6}  {state}"
        )
    lines.append(f"{len(rows)} of {len(reports)} databases behind or broken")
    return "\n".join(lines)


def _failed_targets(report_file: Path) -> frozenset[str]:
    names = set()
    for line in report_file.read_text().splitlines():
        entry = json.loads(line)
        if "target" in entry and entry["status"] in RERUN and entry["target"] != "master":
            names.add(str(entry["target"]))
    return frozenset(names)


class _Output:
    """Where reports go: JSON lines or human lines on stdout, a report file, a progress bar."""

    def __init__(self, args: argparse.Namespace, report_file: TextIO | None) -> None:
        self.json = args.json
        self.report_file = report_file
        self.progress = Progress(sys.stderr) if sys.stderr.isatty() and not args.json else None

    def plan(self, count: int) -> None:
        if self.progress:
            self.progress.start(count)

    def report(self, report: DatabaseReport) -> None:
        line = json.dumps(report.as_dict())
        if self.report_file:
            self.report_file.write(line + "\n")
            self.report_file.flush()
        if self.progress:
            self.progress.advance(str(report.status))
            if report.status in BAD:
                self.progress.print(_human(report))
        else:
            print(line if self.json else _human(report), flush=True)

    def summary(self, reports: list[DatabaseReport], code: int, mode: str) -> None:
        counts: dict[str, int] = {}
        for r in reports:
            counts[str(r.status)] = counts.get(str(r.status), 0) + 1
        line = json.dumps(
            {"summary": {"databases": len(reports), "by_status": counts, "exit_code": code}}
        )
        if self.report_file:
            self.report_file.write(line + "\n")
        if self.progress:
            self.progress.finish()
        if self.json:
            print(line, flush=True)
        elif mode == "status":
            print(_status_table(reports), flush=True)
        else:
            print(" ".join(f"{k}: {v}" for k, v in sorted(counts.items())), flush=True)


async def _run(args: argparse.Namespace) -> int:
    if not args.database_url and args.mode in {"baseline", "repair"}:
        print(
            "studio migrate: baseline and repair need --database-url",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    url = None
    if not args.database_url:
        try:
            url = master_database_url(data_dir_of(args))
        except NoMasterDatabase as exc:
            print(f"studio migrate {args.mode}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    report_file = args.report.open("w") if args.report else None
    out = _Output(args, report_file)
    interrupted: list[signal.Signals] = []
    try:
        if args.database_url:
            one = await run_one(
                args.database_url,
                args.kind,
                mode=args.mode,
                directory=args.migrations_dir,
                lock_wait=args.lock_wait,
                baseline_version=getattr(args, "version", None) or getattr(args, "accept", None),
            )
            out.report(one)
            reports = [one]
        else:
            assert url is not None
            fleet = Fleet(
                url,
                FleetOptions(
                    mode=args.mode,
                    jobs=args.jobs,
                    max_per_server=args.max_per_server,
                    on_error=args.on_error,
                    max_failures=args.max_failures,
                    canary=args.canary,
                    lock_wait=args.lock_wait,
                    only=_failed_targets(args.only_failed) if args.only_failed else None,
                    tenant_dir=args.migrations_dir,
                ),
                on_report=out.report,
                on_plan=out.plan,
            )
            loop = asyncio.get_running_loop()

            def on_signal(sig: signal.Signals) -> None:
                interrupted.append(sig)
                fleet.interrupt()

            for sig in EXIT_SIGNAL:
                loop.add_signal_handler(sig, on_signal, sig)
            reports = await fleet.run()
        code = (
            EXIT_SIGNAL[interrupted[0]]
            if interrupted
            else exit_code(reports, fleet=not args.database_url)
        )
        out.summary(reports, code, args.mode)
        return code
    finally:
        if report_file:
            report_file.close()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
