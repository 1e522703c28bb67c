"""`studio migrate`: apply and inspect the SQL migrations, on one database or the whole fleet.

Without --database-url, the master (STUDIO_DATABASE_URL, else the embedded server of the data
directory, while `studio serve` runs it) goes first; if it fails nothing else runs. Then the
canary tenants (--canary N), then every other tenant, concurrently (--jobs overall,
--max-per-server per PostgreSQL server). One tenant's failure, whatever it is, is that tenant's
report; the others go on (unless --on-error stop, --max-failures or a failed canary says stop).

Exit codes (stable, for scripts), by what happened:
  0    every database is up to date (or was brought up to date)
  1    usage or configuration error (e.g. --jobs 0): nothing ran
  2    refused before any change: the master or the files were refused (an applied file
       edited: drift; an applied file missing; a duplicate version; a file out of order; a
       statement that cannot run in its file's transaction; a database needing a baseline),
       or every tenant that is not up to date was refused and no database was changed
  3    the master (or the one --database-url database) failed or was unreachable: no tenant
       was touched; `status`: the last run's failure is recorded there
  4    a mix: some tenants failed, were unreachable, timed out on locks, were refused or
       skipped, while others are up to date or were migrated (the report says which)
  5    the migration lock of the master (or of the one database) was not acquired in time
  6    `status` only: migrations are pending, and nothing is broken
  130  interrupted by SIGINT, 143 by SIGTERM: in-flight work rolled back, partial report
       written; the process ends within 10 s of the signal whatever it waits on (at once
       on a second signal)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import psycopg

from db.migrations.fleet import (
    Fleet,
    FleetOptions,
    Part,
    PerServer,
    placeholder_values,
    run_one,
)
from db.migrations.runner import DatabaseReport, Policy, Status
from db.tenant_catalog import list_tenants, server_of, tenant_conninfo
from server.cli._common import (
    EXIT_CONFIG,
    NoMasterDatabase,
    add_data_dir_option,
    data_dir_of,
    master_database_url,
)
from server.cli.help import StudioParser
from server.cli.migrate_lint import add_lint_parser
from server.cli.migrate_report import EXIT_FAILED, Output, exit_code, failed_targets

__all__ = ["add_parser", "exit_code"]

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
EXIT_CODES_HELP = __doc__[__doc__.index("Exit codes") :]
SIGNAL_GRACE = 10.0  # seconds from SIGINT/SIGTERM to the end, whatever the work waits on


class MigrateParser(StudioParser):
    """A bad command line exits 1 (usage error), as the exit codes say: 2 means refused."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _at_least(low: int) -> type[int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse  # type: ignore[return-value]


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def _part(text: str) -> Part:
    """`K/N`: share K of N (see Part)."""
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return Part(int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give K/N, two whole numbers with 1 <= K <= N (e.g. 2/4)"
        ) from None


def _per_server(text: str) -> tuple[str | None, float]:
    """`SECONDS` (every server) or `HOST:PORT=SECONDS` (that server)."""
    server, sep, value = text.rpartition("=")
    if sep and ":" not in server:
        raise argparse.ArgumentTypeError(f"{text!r}: name the server as HOST:PORT=SECONDS")
    return (server if sep else None), _seconds(value)


def _settings(given: list[tuple[str | None, float]] | None, default: float | None) -> PerServer:
    servers: dict[str, float | None] = {}
    for server, value in given or []:
        if server is None:
            default = value
        else:
            servers[server] = value
    return PerServer(default, servers)


def _add_common(action: argparse.ArgumentParser, name: str) -> None:
    action.add_argument(
        "--database-url",
        metavar="URL",
        help="one database (default: the master, then every tenant it lists)",
    )
    action.add_argument(
        "--kind",
        choices=("tenant", "master"),
        default="tenant",
        help="which migrations --database-url gets (default: tenant); repair and baseline"
        " without --database-url or --tenant: --kind master is the master database",
    )
    action.add_argument(
        "--tenant",
        metavar="SLUG",
        action="append",
        help="only this tenant of the master (repeatable); for repair and baseline, the one"
        " database to act on",
    )
    action.add_argument(
        "--migrations-dir",
        type=Path,
        metavar="DIR",
        help="use the files of this folder instead of the built-in ones (fleet: tenant files)",
    )
    action.add_argument(
        "--lock-wait",
        type=_seconds,
        default=60.0,
        help="seconds to wait for another runner",
    )
    action.add_argument(
        "--connect-timeout",
        type=_per_server,
        action="append",
        metavar="[HOST:PORT=]SECONDS",
        help="how long a server may take to answer a new connection: for every server, or"
        " for one (repeatable); a server that does not answer is reported, and its other"
        " tenants at once (default: 10)",
    )
    action.add_argument(
        "--statement-timeout",
        type=_per_server,
        action="append",
        metavar="[HOST:PORT=]SECONDS",
        help="PostgreSQL's statement_timeout for files that set none, every server or one"
        " (repeatable); the runner also stops waiting for a server that has not answered"
        " 5 s after it (default: no limit)",
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
            "--allow-out-of-order",
            action="store_true",
            help="apply a new file numbered below the highest applied one (its history row"
            " records that it ran out of order) instead of refusing",
        )
        action.add_argument(
            "--ignore-missing",
            action="store_true",
            help="an applied file whose file was deleted is a warning instead of a refusal",
        )
        action.add_argument(
            "--on-cosmetic-drift",
            choices=("warn", "error"),
            default="warn",
            help="an applied file edited only in comments or white space: warn, or refuse"
            " like any other edit",
        )


def _add_fleet(action: argparse.ArgumentParser) -> None:
    action.add_argument(
        "--all",
        action="store_true",
        help="the master and every tenant (the default without --database-url)",
    )
    action.add_argument(
        "--jobs", type=_at_least(1), default=8, help="tenants migrated at once, overall"
    )
    action.add_argument(
        "--max-per-server",
        type=_at_least(1),
        default=4,
        help="tenants at once per PostgreSQL server",
    )
    action.add_argument(
        "--canary",
        type=_at_least(0),
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
        type=_at_least(1),
        metavar="K",
        help="start no new tenant after K failures (default: no limit)",
    )
    action.add_argument(
        "--part",
        type=_part,
        metavar="K/N",
        help="only share K of N of the tenants (by a hash of each slug, so a tenant keeps"
        " its share as the catalogue grows): N runners, one per share, cover the fleet"
        " once; every part brings the master up to date first",
    )
    action.add_argument(
        "--only-failed",
        type=Path,
        metavar="REPORT",
        help="re-run only the tenants a previous --report did not bring up to date",
    )


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "migrate",
        help="apply or inspect SQL migrations",
        description=__doc__,
    )
    actions = parser.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=MigrateParser
    )
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
        _add_common(action, name)
        if name in {"status", "up"}:
            _add_fleet(action)
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
    add_lint_parser(actions)


def _policy(args: argparse.Namespace) -> Policy:
    return Policy(
        allow_out_of_order=getattr(args, "allow_out_of_order", False),
        ignore_missing=getattr(args, "ignore_missing", False),
        cosmetic_drift=getattr(args, "on_cosmetic_drift", "warn"),
    )


class _Usage(Exception):
    """A command line that names nothing to act on; the message says why (one line)."""


async def _tenant_target(master_url: str, slug: str) -> tuple[str, dict[str, str | int]]:
    async with await psycopg.AsyncConnection.connect(master_url, autocommit=True) as conn:
        tenants = await list_tenants(conn)
    location = next((t for t in tenants if t.slug == slug), None)
    if location is None:
        raise _Usage(f"no tenant {slug!r} in the master database")
    return tenant_conninfo(master_url, location), dict(placeholder_values(location))


async def _one_database(args: argparse.Namespace, master_url: str | None) -> DatabaseReport:
    """--database-url, or (repair, baseline) --tenant SLUG or --kind master."""
    server_timeouts = _settings(args.connect_timeout, 10.0)
    statement = _settings(args.statement_timeout, None)
    version = getattr(args, "version", None) or getattr(args, "accept", None)
    conninfo, kind, target = args.database_url, args.kind, None
    values: dict[str, str | int] | None = None
    repair_with = " --database-url URL"
    if conninfo is None and args.tenant:
        assert master_url is not None
        [slug] = args.tenant
        conninfo, values = await _tenant_target(master_url, slug)
        kind, target, repair_with = "tenant", f"tenant {slug}", f" --tenant {slug}"
    elif conninfo is None:
        assert master_url is not None
        conninfo, target, repair_with = master_url, "master", " --kind master"
    report = await run_one(
        conninfo,
        kind,
        mode=args.mode,
        directory=args.migrations_dir,
        target=target,
        lock_wait=args.lock_wait,
        baseline_version=version,
        policy=_policy(args),
        placeholders=values,
        repair_with=repair_with,
        connect_timeout=server_timeouts.of(server_of(conninfo)) or 10.0,
        statement_timeout=statement.of(server_of(conninfo)),
    )
    if values is not None:
        report.tenant = str(values["tenant_slug"])
    return report


def _fleet(args: argparse.Namespace, url: str, out: Output) -> Fleet:
    only = failed_targets(args.only_failed) if args.only_failed else None
    if args.tenant:
        named = frozenset(f"tenant {slug}" for slug in args.tenant)
        only = named if only is None else only & named
    return Fleet(
        url,
        FleetOptions(
            mode=args.mode,
            jobs=args.jobs,
            max_per_server=args.max_per_server,
            on_error=args.on_error,
            max_failures=args.max_failures,
            canary=args.canary,
            lock_wait=args.lock_wait,
            only=only,
            part=args.part,
            tenant_dir=args.migrations_dir,
            policy=_policy(args),
            connect_timeout=_settings(args.connect_timeout, 10.0),
            statement_timeout=_settings(args.statement_timeout, None),
        ),
        on_report=out.report,
        on_plan=out.plan,
    )


def _check_usage(args: argparse.Namespace) -> None:
    one = args.mode in {"baseline", "repair"}
    if args.database_url and args.tenant:
        raise _Usage("give --database-url or --tenant, not both")
    if args.database_url and getattr(args, "part", None):
        raise _Usage("--part shares the tenants of the master: not with --database-url")
    if one and args.tenant and len(args.tenant) > 1:
        raise _Usage(f"{args.mode} acts on one database: give --tenant once")
    if one and not (args.database_url or args.tenant or args.kind == "master"):
        raise _Usage(
            f"{args.mode} acts on one database: give --database-url URL, --tenant SLUG,"
            " or --kind master (the master database)"
        )


class _Signals:
    """SIGINT and SIGTERM: stop the work (the fleet starts nothing new and cancels what runs;
    one database is cancelled), and end the process within SIGNAL_GRACE whatever it waits on
    (a server that answers neither the query nor the cancel request, say); a second signal
    ends it at once."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.received: list[signal.Signals] = []
        self.stop: list[Callable[[], None]] = []
        self.loop = asyncio.get_running_loop()

    def __enter__(self) -> _Signals:
        for sig in EXIT_SIGNAL:
            self.loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig in EXIT_SIGNAL:
            self.loop.remove_signal_handler(sig)

    @property
    def code(self) -> int | None:
        return EXIT_SIGNAL[self.received[0]] if self.received else None

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received:
            os._exit(EXIT_SIGNAL[self.received[0]])
        self.received.append(sig)
        for stop in self.stop:
            stop()
        code = EXIT_SIGNAL[sig]
        self.loop.call_later(SIGNAL_GRACE, self._hard_exit, code)
        backstop = threading.Timer(SIGNAL_GRACE + 2, os._exit, (code,))  # a loop stuck too
        backstop.daemon = True
        backstop.start()

    def _hard_exit(self, code: int) -> None:
        self.out.abandoned(code)
        os._exit(code)


def _cancel(task: asyncio.Task[DatabaseReport]) -> None:
    task.cancel()


async def _work(
    args: argparse.Namespace, url: str | None, out: Output, signals: _Signals
) -> list[DatabaseReport]:
    if not args.database_url and args.mode in {"status", "up"}:
        assert url is not None
        fleet = _fleet(args, url, out)
        signals.stop.append(fleet.interrupt)
        return await fleet.run()
    task = asyncio.create_task(_one_database(args, url))
    signals.stop.append(lambda: _cancel(task))
    try:
        report = await task
    except asyncio.CancelledError:
        target = "master" if not args.database_url else f"{args.kind} database"
        report = DatabaseReport(target, Status.INTERRUPTED)
    out.report(report)
    return [report]


async def _run(args: argparse.Namespace) -> int:
    command = f"studio migrate {args.mode}"
    try:
        _check_usage(args)
        url = None if args.database_url else master_database_url(data_dir_of(args))
    except (_Usage, NoMasterDatabase) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    report_file = args.report.open("w") if args.report else None
    out = Output(args.json, report_file)
    try:
        with _Signals(out) as signals:
            try:
                reports = await _work(args, url, out, signals)
            except _Usage as exc:
                print(f"{command}: {exc}", file=sys.stderr)
                return EXIT_CONFIG
            except (psycopg.Error, TimeoutError) as exc:  # the master, listing its tenants
                said = str(exc).strip().splitlines()[0] if str(exc).strip() else "timed out"
                print(f"{command}: the master database failed: {said}", file=sys.stderr)
                return EXIT_FAILED
            fleet = not args.database_url and args.mode in {"status", "up"}
            code = signals.code
            code = exit_code(reports, fleet=fleet) if code is None else code
            out.summary(reports, code, args.mode)
            return code
    finally:
        if report_file:
            report_file.close()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
