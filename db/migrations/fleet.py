"""Migrating the master database and then every tenant it lists, on many servers at once.

The master goes first and alone: if it fails, no tenant is touched. Then an optional canary
set, which must all succeed before the rest start. Tenants run concurrently, bounded overall
(`jobs`) and per PostgreSQL server (`max_per_server`), one connection per tenant; one tenant's
failure never stops or corrupts another unless the policy says stop (`on_error="stop"`, or
`max_failures` reached: no new tenant starts, those running finish). `interrupt()` stops
starting tenants and cancels the ones running (their transactions roll back).

A server that does not answer does not slow the others: each server's first connection goes
alone (its other tenants wait for it without holding a slot of `jobs`), and once a connection
to a server has gone unanswered (no reply within the connect timeout, or refused), its
remaining tenants are reported unreachable at once instead of each waiting in turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import psycopg

from db.migrations.files import Kind, MigrationFile, load_migrations, migrations_dir
from db.migrations.placeholders import Values
from db.migrations.runner import DatabaseReport, MigrationError, Mode, Policy, Status, run_database
from db.tenant_catalog import (
    TenantLocation,
    describe_conninfo,
    list_tenants,
    server_of,
    tenant_conninfo,
)

__all__ = [
    "BAD",
    "Fleet",
    "FleetOptions",
    "Part",
    "PerServer",
    "Target",
    "placeholder_values",
    "run_one",
]

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


GOOD = frozenset({Status.UP_TO_DATE, Status.APPLIED})


def placeholder_values(location: TenantLocation) -> Values:
    """What `${tenant_slug}`, `${tenant_id}` and `${tenant_database}` stand for."""
    return {
        "tenant_slug": location.slug,
        "tenant_id": location.organization_id,
        "tenant_database": location.database_name,
    }


@dataclass(frozen=True)
class PerServer:
    """A setting with a default and values for some servers (host:port)."""

    default: float | None
    servers: Mapping[str, float | None] = field(default_factory=dict)

    def of(self, server: str) -> float | None:
        return self.servers.get(server, self.default)


async def run_one(
    conninfo: str,
    kind: Kind,
    *,
    mode: Mode,
    directory: Path | None = None,
    target: str | None = None,
    lock_wait: float = 60.0,
    baseline_version: int | None = None,
    policy: Policy | None = None,
    placeholders: Values | None = None,
    repair_with: str = " --database-url URL",
    connect_timeout: float = 10.0,
    statement_timeout: float | None = None,
    files: tuple[list[MigrationFile], list[str]] | None = None,
) -> DatabaseReport:
    """One database, with the built-in files of its kind (or those of `directory`, or the
    already loaded `files`)."""
    files_found, problems = files or load_migrations(directory or migrations_dir(kind))
    report = await run_database(
        conninfo,
        files_found,
        target=target or f"{kind} {describe_conninfo(conninfo)}",
        mode=mode,
        file_problems=problems,
        lock_wait=lock_wait,
        baseline_version=baseline_version,
        as_owner=kind == "tenant",
        policy=policy,
        placeholders=placeholders if kind == "tenant" else {},
        repair_with=repair_with,
        connect_timeout=connect_timeout,
        statement_timeout=statement_timeout,
    )
    report.server = server_of(conninfo)
    return report


@dataclass(frozen=True)
class Target:
    name: str  # "tenant <slug>"
    conninfo: str = field(repr=False)  # as the tenant's role: holds its password
    isolated: bool = True  # False: made before tenant roles, reached as the server's user
    location: TenantLocation | None = field(default=None, repr=False)

    @cached_property
    def server(self) -> str:
        return server_of(self.conninfo)

    @property
    def slug(self) -> str:
        return self.name.removeprefix("tenant ")


@dataclass
class _Server:
    """One PostgreSQL server of a run: its bound, and whether it answers."""

    slots: asyncio.Semaphore
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    probing: bool = False
    down: str | None = None  # why it is taken for gone: its tenants are not tried


@dataclass(frozen=True)
class Part:
    """Share `index` (1-based) of `count` of the tenants: several runners, one per share,
    cover a fleet once, with no tenant in two shares and none in no share.

    A tenant's share is a hash of its slug alone, so it does not move when tenants are added
    or removed (or when the catalogue is listed in another order); a change of `count` moves
    only the tenants that the new shares take. The master is not shared: every part brings it
    up to date first (under its migration lock, so the parts take turns and all but the first
    find it current).
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"part {self.index}/{self.count}: give K/N with 1 <= K <= N")

    @staticmethod
    def of(slug: str, count: int) -> int:
        """The share (1-based) that holds the tenant with this slug: the share whose hash with
        the slug is highest (rendezvous hashing), so that going from N to N+1 shares moves
        only the tenants the new share takes (about 1 in N+1), not most of them as a modulo
        would."""

        def weight(share: int) -> bytes:
            return hashlib.sha256(f"{share}/{slug}".encode()).digest()

        return max(range(1, count + 1), key=weight)

    def holds(self, slug: str) -> bool:
        return self.of(slug, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class FleetOptions:
    mode: Mode = "up"
    jobs: int = 8
    max_per_server: int = 4
    on_error: Literal["continue", "stop"] = "continue"
    max_failures: int | None = None
    canary: int = 0
    only: frozenset[str] | None = None  # re-run just these targets (e.g. from a report)
    part: Part | None = None  # this runner's share of the tenants (`--part K/N`)
    lock_wait: float = 60.0
    tenant_dir: Path | None = None  # tenant files other than the built-in ones
    policy: Policy = field(default_factory=Policy)
    connect_timeout: PerServer = field(default_factory=lambda: PerServer(10.0))
    statement_timeout: PerServer = field(default_factory=lambda: PerServer(None))


@dataclass
class Fleet:
    """One run over the master and its tenants; reports stream to `on_report`."""

    master_url: str
    options: FleetOptions
    on_report: Callable[[DatabaseReport], None] = lambda _report: None
    on_plan: Callable[[int], None] = lambda _count: None  # number of databases to visit
    reports: list[DatabaseReport] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _servers: dict[str, _Server] = field(default_factory=dict)
    _started: set[str] = field(default_factory=set)  # targets whose run began
    _failures: int = 0

    def interrupt(self) -> None:
        """Start no new database; cancel those in flight (their transactions roll back) and
        those waiting for a slot (skipped)."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()

    def _emit(self, report: DatabaseReport) -> None:
        self.reports.append(report)
        self.on_report(report)

    async def _master(self) -> DatabaseReport:
        options = self.options
        server = server_of(self.master_url)
        return await run_one(
            self.master_url, "master", mode=options.mode, target="master",
            lock_wait=options.lock_wait, policy=options.policy, repair_with=" --kind master",
            connect_timeout=options.connect_timeout.of(server) or 10.0,
            statement_timeout=options.statement_timeout.of(server),
        )  # fmt: skip

    async def _cancellable(self, work: Callable[[], Coroutine[object, object, None]]) -> None:
        task = asyncio.create_task(work())
        self._tasks.add(task)
        try:
            await task
        finally:
            self._tasks.discard(task)

    async def run(self) -> list[DatabaseReport]:
        found: list[DatabaseReport] = []
        targets: list[Target] = []

        async def master() -> None:
            started = time.monotonic()
            try:
                found.append(await self._master())
                if found[0].status in GOOD_MASTER:
                    targets.extend(await self._targets())
            except asyncio.CancelledError:
                interrupted = DatabaseReport("master", Status.INTERRUPTED)
                interrupted.server = server_of(self.master_url)
                interrupted.duration_ms = int((time.monotonic() - started) * 1000)
                found[:] = [interrupted]
                targets.clear()

        await self._cancellable(master)
        self.on_plan(1 + len(targets))
        self._emit(found[0])
        if not targets or self._stop.is_set():
            return self.reports
        files, problems = load_migrations(self.options.tenant_dir or migrations_dir("tenant"))
        canary, rest = targets[: self.options.canary], targets[self.options.canary :]
        await self._run_group(canary, files, problems)
        if any(r.status not in GOOD | {Status.PENDING} for r in self.reports[1:]):
            self._stop.set()  # a canary failed: the rest is not started
        await self._run_group(rest, files, problems)
        return self.reports

    async def _targets(self) -> list[Target]:
        timeout = self.options.connect_timeout.of(server_of(self.master_url)) or 10.0
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(self.master_url, autocommit=True)
        async with conn:
            try:
                tenants = await list_tenants(conn)
            except psycopg.errors.UndefinedTable:
                return []  # `status` on a master never migrated: it lists no tenants yet
        targets = [
            Target(
                f"tenant {t.slug}",
                tenant_conninfo(self.master_url, t),
                t.role_name is not None,
                location=t,
            )
            for t in tenants
        ]
        if self.options.only is not None:
            targets = [t for t in targets if t.name in self.options.only]
        part = self.options.part
        if part is not None:
            targets = [t for t in targets if part.holds(t.slug)]
        return targets

    def _server(self, name: str) -> _Server:
        if name not in self._servers:
            self._servers[name] = _Server(asyncio.Semaphore(self.options.max_per_server))
        return self._servers[name]

    def _not_tried(self, target: Target, server: _Server) -> DatabaseReport:
        report = DatabaseReport(target.name, Status.UNREACHABLE, server=target.server)
        report.error = MigrationError(None, None, None, f"not tried: {server.down}")
        return report

    async def _visit(
        self, target: Target, jobs: asyncio.Semaphore, files: list[MigrationFile],
        problems: list[str],
    ) -> DatabaseReport:  # fmt: skip
        """One tenant: wait for its server to have answered once (or be the one to try),
        then for a slot on its server and overall."""
        server = self._server(target.server)
        probe = not server.probing
        server.probing = True
        if not probe:
            await server.answered.wait()
        try:
            return await self._visit_slots(target, server, jobs, files, problems)
        finally:
            if probe:
                server.answered.set()  # answered or not, the others may go on

    async def _visit_slots(
        self, target: Target, server: _Server, jobs: asyncio.Semaphore,
        files: list[MigrationFile], problems: list[str],
    ) -> DatabaseReport:  # fmt: skip
        if server.down:
            return self._not_tried(target, server)
        async with server.slots, jobs:
            if self._stop.is_set():
                return DatabaseReport(target.name, Status.SKIPPED, server=target.server)
            if server.down:
                return self._not_tried(target, server)
            options = self.options
            self._started.add(target.name)
            report = await run_database(
                target.conninfo,
                files,
                target=target.name,
                mode=options.mode,
                file_problems=problems,
                lock_wait=options.lock_wait,
                as_owner=True,
                policy=options.policy,
                placeholders=None if target.location is None
                else placeholder_values(target.location),
                repair_with=f" --tenant {target.slug}",
                connect_timeout=options.connect_timeout.of(target.server) or 10.0,
                statement_timeout=options.statement_timeout.of(target.server),
                on_connected=server.answered.set,
            )  # fmt: skip
        if report.status is Status.UNREACHABLE and report.error and report.no_answer:
            # No reply at all (silence or a refused connection): the server, not the tenant.
            server.down = f"{target.server} did not answer {target.name}: {report.error.message}"
        return report

    async def _run_group(
        self, targets: list[Target], files: list[MigrationFile], problems: list[str]
    ) -> None:
        jobs = asyncio.Semaphore(self.options.jobs)

        async def visit(target: Target) -> None:
            started = time.monotonic()
            try:
                report = await self._visit(target, jobs, files, problems)
            except asyncio.CancelledError:
                ran = target.name in self._started
                status = Status.INTERRUPTED if ran else Status.SKIPPED
                report = DatabaseReport(target.name, status, server=target.server)
                report.duration_ms = int((time.monotonic() - started) * 1000)
            except Exception as exc:  # noqa: BLE001 (one tenant's bug must not end the run)
                report = DatabaseReport(target.name, Status.FAILED, server=target.server)
                report.error = MigrationError(None, None, None, f"{type(exc).__name__}: {exc}")
            self._finish(target, report)

        await asyncio.gather(*(self._cancellable(partial(visit, t)) for t in targets))

    def _finish(self, target: Target, report: DatabaseReport) -> None:
        report.server = target.server
        report.tenant = target.slug
        if target.location is not None:
            report.database = target.location.database_name
        if not target.isolated:
            report.warnings.append(
                "reached as the server's user, not a role of its own: convert it with"
                f" `studio tenants isolate {target.slug}`"
            )
        self._emit(report)
        if report.status in BAD:
            self._failures += 1
            limit = self.options.max_failures
            if self.options.on_error == "stop" or (limit and self._failures >= limit):
                self._stop.set()
