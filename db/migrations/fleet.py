"""Migrating the master database and then every tenant it lists, on many servers at once.

The master goes first and alone: if it fails, no tenant is touched. Then an optional canary
set, which must all succeed before the rest start. Tenants run concurrently, bounded overall
(`jobs`) and per PostgreSQL server (`max_per_server`), one connection per tenant; one tenant's
failure never stops or corrupts another unless the policy says stop (`on_error="stop"`, or
`max_failures` reached: no new tenant starts, those running finish). `interrupt()` stops
starting tenants and cancels the ones running (their transactions roll back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import psycopg

from db.migrations.files import Kind, MigrationFile, load_migrations, migrations_dir
from db.migrations.runner import DatabaseReport, Mode, Status, run_database
from db.tenant_catalog import describe_conninfo, list_tenants, server_of, tenant_conninfo

__all__ = ["BAD", "Fleet", "FleetOptions", "Target", "run_one"]

BAD = frozenset(
    {
        Status.FAILED,
        Status.UNREACHABLE,
        Status.LOCK_TIMEOUT,
        Status.DRIFT,
        Status.REFUSED,
        Status.INTERRUPTED,
    }
)
GOOD_MASTER = frozenset({Status.UP_TO_DATE, Status.APPLIED, Status.PENDING})


async def run_one(
    conninfo: str,
    kind: Kind,
    *,
    mode: Mode,
    directory: Path | None = None,
    target: str | None = None,
    lock_wait: float = 60.0,
    baseline_version: int | None = None,
) -> DatabaseReport:
    """One database, with the built-in files of its kind (or those of `directory`)."""
    files, problems = load_migrations(directory or migrations_dir(kind))
    report = await run_database(
        conninfo,
        files,
        target=target or f"{kind} {describe_conninfo(conninfo)}",
        mode=mode,
        file_problems=problems,
        lock_wait=lock_wait,
        baseline_version=baseline_version,
        as_owner=kind == "tenant",
    )
    report.server = server_of(conninfo)
    return report


@dataclass(frozen=True)
class Target:
    name: str  # "tenant <slug>"
    conninfo: str = field(repr=False)  # as the tenant's role: holds its password
    isolated: bool = True  # False: made before tenant roles, reached as the server's user

    @cached_property
    def server(self) -> str:
        return server_of(self.conninfo)


@dataclass
class FleetOptions:
    mode: Mode = "up"
    jobs: int = 8
    max_per_server: int = 4
    on_error: Literal["continue", "stop"] = "continue"
    max_failures: int | None = None
    canary: int = 0
    only: frozenset[str] | None = None  # re-run just these targets (e.g. from a report)
    lock_wait: float = 60.0
    tenant_dir: Path | None = None  # tenant files other than the built-in ones


@dataclass
class Fleet:
    """One run over the master and its tenants; reports stream to `on_report`."""

    master_url: str
    options: FleetOptions
    on_report: Callable[[DatabaseReport], None] = lambda _report: None
    on_plan: Callable[[int], None] = lambda _count: None  # number of databases to visit
    reports: list[DatabaseReport] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _running: set[asyncio.Task[DatabaseReport]] = field(default_factory=set)
    _failures: int = 0

    def interrupt(self) -> None:
        """Start no new database; cancel those in flight (their transactions roll back)."""
        self._stop.set()
        for task in self._running:
            task.cancel()

    def _emit(self, report: DatabaseReport) -> None:
        self.reports.append(report)
        self.on_report(report)

    async def run(self) -> list[DatabaseReport]:
        master = await run_one(
            self.master_url, "master", mode=self.options.mode, target="master",
            lock_wait=self.options.lock_wait,
        )  # fmt: skip
        targets = await self._targets() if master.status in GOOD_MASTER else []
        self.on_plan(1 + len(targets))
        self._emit(master)
        if not targets:
            return self.reports
        files, problems = load_migrations(self.options.tenant_dir or migrations_dir("tenant"))
        canary, rest = targets[: self.options.canary], targets[self.options.canary :]
        await self._run_group(canary, files, problems)
        if any(r.status in BAD for r in self.reports[1:]):
            self._stop.set()  # a canary failed: the rest is not started
        await self._run_group(rest, files, problems)
        return self.reports

    async def _targets(self) -> list[Target]:
        async with await psycopg.AsyncConnection.connect(self.master_url, autocommit=True) as conn:
            try:
                tenants = await list_tenants(conn)
            except psycopg.errors.UndefinedTable:
                return []  # `status` on a master never migrated: it lists no tenants yet
        targets = [
            Target(f"tenant {t.slug}", tenant_conninfo(self.master_url, t), t.role_name is not None)
            for t in tenants
        ]
        if self.options.only is not None:
            targets = [t for t in targets if t.name in self.options.only]
        return targets

    async def _run_group(
        self, targets: list[Target], files: list[MigrationFile], problems: list[str]
    ) -> None:
        jobs = asyncio.Semaphore(self.options.jobs)
        per_server: dict[str, asyncio.Semaphore] = {}

        async def visit(target: Target) -> None:
            server = per_server.setdefault(
                target.server, asyncio.Semaphore(self.options.max_per_server)
            )
            async with server, jobs:
                if self._stop.is_set():
                    self._emit(DatabaseReport(target.name, Status.SKIPPED, server=target.server))
                    return
                task = asyncio.create_task(
                    run_database(
                        target.conninfo,
                        files,
                        target=target.name,
                        mode=self.options.mode,
                        file_problems=problems,
                        lock_wait=self.options.lock_wait,
                        as_owner=True,
                    )
                )
                self._running.add(task)
                started = time.monotonic()
                try:
                    report = await task
                except asyncio.CancelledError:
                    report = DatabaseReport(target.name, Status.INTERRUPTED)
                    report.duration_ms = int((time.monotonic() - started) * 1000)
                finally:
                    self._running.discard(task)
            report.server = target.server
            if not target.isolated:
                slug = target.name.removeprefix("tenant ")
                report.warnings.append(
                    "reached as the server's user, not a role of its own: convert it with"
                    f" `studio tenants isolate {slug}`"
                )
            self._emit(report)
            if report.status in BAD:
                self._failures += 1
                limit = self.options.max_failures
                if self.options.on_error == "stop" or (limit and self._failures >= limit):
                    self._stop.set()

        await asyncio.gather(*(visit(t) for t in targets))
