"""Applying migration files to one database, safely.

The protocol, per database:
1. read the history without creating anything (so `status` works for a read-only role);
2. validate every file against it before any change: an applied file edited (drift; an edit of
   only comments or white space is a warning), missing, or a new file numbered below the
   highest applied one refuses the run;
3. take a session advisory lock, polled with `pg_try_advisory_lock` (a blocking waiter would
   deadlock with CREATE INDEX CONCURRENTLY), then read and validate the history again, since
   another runner may have applied files while we waited;
4. apply each pending file: a transactional file in its own transaction with its history row
   (retried with backoff when it cannot get a table lock within lock_timeout); a
   no-transaction file statement by statement in autocommit, its progress recorded after each
   statement so that a failed or interrupted file resumes where it stopped.

Whatever goes wrong in one database (a statement, a privilege the runner lacks, a server that
stops answering, a bug) ends as that database's report, never as an exception: a fleet run
goes on with the others under its own policies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from db.migrations import history
from db.migrations.files import MigrationFile
from db.migrations.placeholders import Values
from db.tenant_roles import MAY_SET_ROLE

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from db.migrations.sql_parse import Statement

__all__ = [
    "DatabaseReport",
    "MigrationError",
    "Mode",
    "Policy",
    "Status",
    "run_database",
]

# Advisory locks are per database, so one constant key serves every tenant on a server.
LOCK_KEY = 0x5354_5544_494F_4D47  # "STUDIOMG"
DEFAULT_LOCK_TIMEOUT = "5s"
LOCK_RETRIES = 4  # a transactional file that cannot get its table locks: tries after the first
RUNNER = f"studio-migrate host={socket.gethostname()} pid={os.getpid()}"
LOCK_NOT_AVAILABLE = "55P03"

Mode = Literal["status", "up", "baseline", "repair"]


class Status(enum.StrEnum):
    UP_TO_DATE = "up-to-date"
    APPLIED = "applied"
    PENDING = "pending"  # status only: files are waiting
    BASELINED = "baselined"
    REPAIRED = "repaired"
    FAILED = "failed"
    REFUSED = "refused"  # validation refused the run before any change
    DRIFT = "drift"  # an applied file was edited: refused before any change
    LOCK_TIMEOUT = "lock-timeout"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"  # the fleet run stopped before this database
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Policy:
    """What a run accepts that it refuses by default (the operator's flags)."""

    allow_out_of_order: bool = False  # apply a new file numbered below the highest applied
    ignore_missing: bool = False  # an applied file whose file is gone: a warning, not a refusal
    cosmetic_drift: Literal["warn", "error"] = "warn"  # an applied file edited in comments only


@dataclass(frozen=True)
class MigrationError:
    """Why a database failed: where (file and line, when a file was running), what PostgreSQL
    said (SQLSTATE, when it said anything) and, read back from the attempts, when."""

    filename: str | None
    line: int | None
    sqlstate: str | None
    message: str
    at: str | None = None

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}" if self.line else self.filename
        said = f"{where}: {self.message}" if where else self.message
        if self.sqlstate:
            said += f" (SQLSTATE {self.sqlstate})"
        return f"{said} at {self.at}" if self.at else said

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.filename,
            "line": self.line,
            "sqlstate": self.sqlstate,
            "message": self.message,
            "at": self.at,
        }


@dataclass
class DatabaseReport:
    target: str  # "master", "tenant <slug>", or "<kind> host:port/dbname"
    status: Status
    server: str = ""  # host:port
    database: str = ""
    tenant: str | None = None  # the slug, for a tenant of a fleet run
    before: int | None = None
    after: int | None = None
    applied: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: MigrationError | None = None
    duration_ms: int = 0
    # Unreachable with no word from the server (silence, or a refused connection): the
    # server is taken for gone, not only this database. Not in the report.
    no_answer: bool = field(default=False, compare=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "tenant": self.tenant,
            "database": self.database,
            "server": self.server,
            "status": str(self.status),
            "before": self.before,
            "after": self.after,
            "applied": self.applied,
            "pending": self.pending,
            "problems": self.problems,
            "warnings": self.warnings,
            "error": None if self.error is None else self.error.as_dict(),
            "duration_ms": self.duration_ms,
        }


@dataclass
class _Plan:
    pending: list[MigrationFile]
    partial: dict[int, history.AppliedMigration]  # no-transaction files to resume
    problems: list[str]
    drift: list[str]
    warnings: list[str]
    out_of_order: set[int] = field(default_factory=set)  # pending, below the highest applied


def _edited(
    plan: _Plan,
    row: history.AppliedMigration,
    file: MigrationFile,
    policy: Policy,
    repair_with: str,
) -> None:
    """An applied file edited since: drift, or (comments and white space only) a warning."""
    accept = f"`studio migrate repair --accept {file.version}{repair_with}`"
    sums = f"(applied {row.checksum}, file now {file.checksum})"
    if row.checksum_loose is None or row.checksum_loose != file.checksum_loose:
        plan.drift.append(
            f"{file.filename}: edited after it was applied {sums}; if the edit is intended,"
            f" record it with {accept}"
        )
        return
    cosmetic = (
        f"{file.filename}: edited after it was applied, in comments or white space only {sums}"
    )
    if policy.cosmetic_drift == "error":
        plan.drift.append(
            f"{cosmetic}; refused by --on-cosmetic-drift=error; if the edit is intended,"
            f" record it with {accept}"
        )
    else:
        plan.warnings.append(f"{cosmetic}; record it with {accept}")


def _plan(
    files: list[MigrationFile],
    applied: list[history.AppliedMigration],
    policy: Policy,
    repair_with: str,
) -> _Plan:
    """What is pending, and the problems that must refuse the run before any change."""
    plan = _Plan([], {}, [], [], [])
    by_version = {f.version: f for f in files}
    for row in applied:
        file = by_version.get(row.version)
        if file is None:
            gone = f"{row.filename}: applied (version {row.version}) but the file is gone"
            if policy.ignore_missing:
                plan.warnings.append(f"{gone}; ignored (--ignore-missing)")
            else:
                plan.problems.append(
                    f"{gone}; restore it, or pass --ignore-missing if it was removed on purpose"
                )
        elif not row.complete:
            done = row.statements_done or 0
            if file.statement_checksums[:done] != list(row.statement_checksums[:done]):
                plan.drift.append(
                    f"{file.filename}: its first {done} statements ran and were edited since"
                )
            plan.partial[row.version] = row
        elif row.status == "applied" and row.checksum not in {
            file.checksum,
            file.checksum_unannotated,  # edited by a `-- lint:` annotation alone
        }:
            _edited(plan, row, file, policy, repair_with)
    completed = {row.version for row in applied if row.complete}
    plan.pending = [f for f in files if f.version not in completed]
    highest = max(completed, default=0)
    late = [f for f in plan.pending if f.version < highest and f.version not in plan.partial]
    if policy.allow_out_of_order:
        plan.out_of_order = {f.version for f in late}
        plan.warnings += [
            f"{f.filename}: numbered below the highest applied version {highest};"
            " runs out of order (--allow-out-of-order)"
            for f in late
        ]
    else:
        plan.problems += [
            f"{f.filename}: new file numbered below the highest applied version {highest};"
            " apply it anyway with --allow-out-of-order"
            for f in late
        ]
    return plan


class _StatementFailed(Exception):
    """A statement of a file failed; carries where it starts in the file and what ran."""

    def __init__(self, statement: Statement, text: str, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.statement = statement
        self.text = text  # as it ran: placeholders rendered
        self.error = error


def _migration_error(file: MigrationFile, failed: _StatementFailed) -> MigrationError:
    diag = failed.error.diag
    line = failed.statement.line
    # PostgreSQL gives a 1-based character position within the statement, when it has one.
    position = int(diag.statement_position) if diag.statement_position else None
    if position:
        line += failed.text[: position - 1].count("\n")
    return MigrationError(
        filename=file.filename,
        line=line,
        sqlstate=failed.error.sqlstate,
        message=diag.message_primary or str(failed.error).strip(),
    )


def _seconds(setting: str) -> float:
    """A PostgreSQL duration as the directives write it (no unit: milliseconds)."""
    number = int("".join(c for c in setting if c.isdigit()))
    unit = setting.lstrip("0123456789") or "ms"
    return number * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[unit]


class _Guard:
    """How long the runner waits for the server to answer, on its own side: a server that
    hangs cannot enforce its statement_timeout. Off without a statement timeout."""

    GRACE = 5.0  # beyond the server's own statement_timeout, which should fire first

    def __init__(self, statement_timeout: float | None) -> None:
        self.base = statement_timeout
        self.timeout = asyncio.timeout(None)

    def touch(self, file: MigrationFile | None = None) -> None:
        """A new statement starts: it has its own (or the file's) timeout, plus grace."""
        seconds = self.base
        if file is not None and file.statement_timeout:
            seconds = max(seconds or 0.0, _seconds(file.statement_timeout))
        when = None if not seconds else asyncio.get_running_loop().time() + seconds + self.GRACE
        self.timeout.reschedule(when)


@dataclass
class _Session:
    """One database's connection, and what every statement on it needs."""

    conn: AsyncConnection[tuple[object, ...]]
    guard: _Guard
    values: Values | None  # placeholder values of its tenant


async def _execute(session: _Session, file: MigrationFile, statement: Statement) -> None:
    text = file.sql_of(statement, session.values, session.conn)
    session.guard.touch(file)
    # No parameters: the simple protocol, which leaves no snapshot behind.
    try:
        await session.conn.execute(text.encode())
    except psycopg.Error as exc:
        raise _StatementFailed(statement, text, exc) from exc


async def _acquire_lock(session: _Session, lock_wait: float) -> bool:
    """Poll the advisory lock with backoff and jitter; never block inside PostgreSQL."""
    deadline = time.monotonic() + lock_wait
    delay = 0.05
    while True:
        session.guard.touch()
        cur = await session.conn.execute(f"SELECT pg_try_advisory_lock({LOCK_KEY})")
        row = await cur.fetchone()
        if row and row[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 1.0) * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not crypto)


def _timeouts(file: MigrationFile, *, local: bool) -> list[str]:
    scope = "SET LOCAL" if local else "SET"
    settings = [f"{scope} lock_timeout = '{file.lock_timeout or DEFAULT_LOCK_TIMEOUT}'"]
    if file.statement_timeout:
        settings.append(f"{scope} statement_timeout = '{file.statement_timeout}'")
    return settings


async def _apply_transactional(
    session: _Session, file: MigrationFile, lock_retries: int, *, out_of_order: bool
) -> None:
    """The whole file and its history row in one transaction; retried when a table lock
    could not be had within lock_timeout (it never queues behind application traffic)."""
    conn = session.conn
    for attempt in range(lock_retries + 1):
        started = time.monotonic()
        try:
            async with conn.transaction():
                for setting in _timeouts(file, local=True):
                    await conn.execute(setting)
                for statement in file.statements:
                    await _execute(session, file, statement)
                await history.record_applied(
                    conn,
                    file,
                    status="applied",
                    execution_ms=int((time.monotonic() - started) * 1000),
                    runner=RUNNER,
                    out_of_order=out_of_order,
                )
            return
        except _StatementFailed as failed:
            if failed.error.sqlstate != LOCK_NOT_AVAILABLE or attempt == lock_retries:
                raise
            await history.record_attempt(
                conn, version=file.version, filename=file.filename, outcome="lock-retry",
                runner=RUNNER, sqlstate=LOCK_NOT_AVAILABLE, message=str(failed.error).strip(),
            )  # fmt: skip
            backoff = 0.25 * 2**attempt * random.uniform(0.8, 1.2)  # noqa: S311
            await asyncio.sleep(backoff)


async def invalid_indexes(conn: AsyncConnection[tuple[object, ...]]) -> list[str]:
    """Indexes a failed CREATE INDEX CONCURRENTLY left behind (IF NOT EXISTS would skip them)."""
    cur = await conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid ORDER BY 1"
    )
    return [str(name) for (name,) in await cur.fetchall()]


async def _apply_outside_transaction(
    session: _Session,
    file: MigrationFile,
    resume: history.AppliedMigration | None,
    *,
    out_of_order: bool,
) -> None:
    """Statement by statement in autocommit, recording progress after each one."""
    conn = session.conn
    invalid = await invalid_indexes(conn)
    if invalid:
        raise _InvalidIndexes(invalid)
    statements = file.statements
    sums = file.statement_checksums
    start = (resume.statements_done or 0) if resume else 0
    started = time.monotonic()
    for setting in _timeouts(file, local=False):
        await conn.execute(setting)
    try:
        for index in range(start, len(statements)):
            await history.record_progress(
                conn, file, status="running", done=index, statement_checksums=sums, runner=RUNNER
            )
            try:
                await _execute(session, file, statements[index])
            except _StatementFailed:
                await history.record_progress(
                    conn, file, status="failed", done=index, statement_checksums=sums,
                    runner=RUNNER,
                )  # fmt: skip
                raise
        await history.record_applied(
            conn, file, status="applied", execution_ms=int((time.monotonic() - started) * 1000),
            runner=RUNNER, out_of_order=out_of_order,
        )  # fmt: skip
    finally:
        if not conn.broken:
            await conn.execute("RESET lock_timeout")
            await conn.execute("RESET statement_timeout")


class _InvalidIndexes(Exception):
    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _connect(
    conninfo: str, mode: Mode, connect_timeout: float, statement_timeout: float | None
) -> AsyncConnection[tuple[object, ...]]:
    """Connected, or an OperationalError (TimeoutError once `connect_timeout` has passed,
    whether the server is gone or only silent)."""
    # The session's statement_timeout is a startup option, so that RESET comes back to it;
    # none given is none (0), not the tenant role's default, which caps the service's calls.
    options = f"-c statement_timeout={int((statement_timeout or 0) * 1000)}"
    async with asyncio.timeout(connect_timeout):
        return await psycopg.AsyncConnection.connect(
            conninfo,
            autocommit=True,
            # libpq counts whole seconds, at least 2; asyncio's bound above is the exact one
            connect_timeout=max(2, math.ceil(connect_timeout)),
            application_name=f"studio-migrate {mode}",
            options=options,
        )


def _unreachable(report: DatabaseReport, exc: BaseException, connect_timeout: float) -> None:
    report.status = Status.UNREACHABLE
    if isinstance(exc, TimeoutError | psycopg.errors.ConnectionTimeout):
        message = f"the server did not answer within {connect_timeout:g}s (--connect-timeout)"
        report.error = MigrationError(None, None, None, message)
        report.no_answer = True
        return
    sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    report.error = MigrationError(None, None, sqlstate, _first_line(exc))
    # libpq relays what the server said as "FATAL: ..." (no such database, no permission):
    # without it, nothing answered (connection refused, no route).
    report.no_answer = sqlstate is None and "FATAL:" not in str(exc)


async def run_database(
    conninfo: str,
    files: list[MigrationFile],
    *,
    target: str,
    mode: Mode,
    file_problems: list[str] | None = None,
    lock_wait: float = 60.0,
    baseline_version: int | None = None,
    connect_timeout: float = 10.0,
    statement_timeout: float | None = None,
    lock_retries: int = LOCK_RETRIES,
    as_owner: bool = False,
    policy: Policy | None = None,
    placeholders: Values | None = None,
    repair_with: str = "",
    on_connected: Callable[[], None] | None = None,
) -> DatabaseReport:
    """Bring one database up to date (mode "up"), or only report on it ("status").

    "baseline" records files up to `baseline_version` as present; "repair" accepts the edit
    of applied file `baseline_version`. `as_owner` (tenant databases): act as the database's
    owner when the user connected may, so that what the files create belongs to it.
    `placeholders`: the tenant's values; files that use one refuse to run without them.
    `repair_with`: how the drift message names this database to `studio migrate repair`.
    Never raises (but for cancellation): every failure is the report's status and error.
    """
    started = time.monotonic()
    report = DatabaseReport(
        target=target,
        status=Status.UP_TO_DATE,
        database=str(conninfo_to_dict(conninfo).get("dbname") or ""),
    )
    try:
        conn = await _connect(conninfo, mode, connect_timeout, statement_timeout)
    except (psycopg.OperationalError, TimeoutError) as exc:
        _unreachable(report, exc, connect_timeout)
        report.duration_ms = int((time.monotonic() - started) * 1000)
        return report
    if on_connected is not None:
        on_connected()
    guard = _Guard(statement_timeout)
    problems = list(file_problems or [])
    if placeholders is None:
        problems += [
            f"{f.filename}: uses placeholders (${{tenant_slug}}...), known only for a tenant of"
            " the master: run it with `studio migrate up` (the fleet) or --tenant SLUG"
            for f in files
            if f.uses_placeholders
        ]
    try:
        async with conn, guard.timeout:
            guard.touch()
            session = _Session(conn, guard, placeholders)
            if as_owner:
                await _act_as_owner(conn)
            await _run(session, files, report, mode=mode, file_problems=problems,
                       lock_wait=lock_wait, version=baseline_version, lock_retries=lock_retries,
                       policy=policy or Policy(), repair_with=repair_with)  # fmt: skip
    except TimeoutError:
        report.status = Status.UNREACHABLE
        report.error = MigrationError(
            None, None, None,
            f"the server stopped answering for {statement_timeout:g}s + {_Guard.GRACE:g}s"
            " (--statement-timeout); what was running there rolls back when it notices",
        )  # fmt: skip
    except psycopg.Error as exc:
        # Gone (a broken connection) or refused (e.g. no privilege to create the runner's
        # schema): either way this database's report, not the end of a fleet run.
        report.status = Status.UNREACHABLE if conn.broken else Status.FAILED
        report.error = MigrationError(None, None, exc.sqlstate, _first_line(exc))
    except Exception as exc:  # noqa: BLE001 (a bug must not end the others' run either)
        report.status = Status.FAILED
        report.error = MigrationError(None, None, None, f"{type(exc).__name__}: {exc}")
    report.duration_ms = int((time.monotonic() - started) * 1000)
    return report


async def _act_as_owner(conn: AsyncConnection[tuple[object, ...]]) -> None:
    """SET ROLE to the database's owner (a tenant's own role) for the whole session, when
    connected as another user that may: an administrator migrating one tenant by its URL
    then creates objects the tenant's role owns, as a fleet run (connected as it) does."""
    cur = await conn.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        " AND pg_get_userbyid(datdba) <> current_user"
        f" AND pg_has_role(current_user, datdba, {MAY_SET_ROLE})"
    )
    row = await cur.fetchone()
    if row is not None:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(str(row[0]))))


def _refuse(report: DatabaseReport, plan: _Plan, file_problems: list[str]) -> bool:
    """Record what refuses the run; True if it must stop before any change."""
    report.warnings = plan.warnings
    problems = file_problems + plan.problems + plan.drift
    if not problems:
        return False
    report.status = (
        Status.DRIFT if plan.drift and not file_problems + plan.problems else Status.REFUSED
    )
    report.problems = problems
    return True


async def _run(
    session: _Session,
    files: list[MigrationFile],
    report: DatabaseReport,
    *,
    mode: Mode,
    file_problems: list[str],
    lock_wait: float,
    version: int | None,
    lock_retries: int,
    policy: Policy,
    repair_with: str,
) -> None:
    conn = session.conn
    applied = await history.read_history(conn)
    report.before = report.after = max((r.version for r in applied if r.complete), default=None)
    plan = _plan(files, applied, policy, repair_with)
    report.pending = [f.version for f in plan.pending]
    if not applied and mode != "baseline" and await history.user_tables_exist(conn):
        plan.problems.append(
            "the database has tables but no migration history: adopt it with"
            " `studio migrate baseline --version V` first"
        )
    if mode == "repair":
        plan.drift = []  # accepting an edit is the point
    if _refuse(report, plan, file_problems):
        return
    if mode == "status":
        report.status = Status.PENDING if plan.pending else Status.UP_TO_DATE
        failure = await history.last_failure(conn, report.pending) if plan.pending else None
        if failure is not None:
            report.status = Status.FAILED  # the last run stopped there: not merely behind
            report.error = MigrationError(
                failure.filename, failure.line, failure.sqlstate, failure.message, failure.at
            )
        return
    if not await _acquire_lock(session, lock_wait):
        report.status = Status.LOCK_TIMEOUT
        report.problems.append(f"another runner held the migration lock for {lock_wait:g}s")
        return
    try:
        await history.ensure_history_tables(conn)
        # Another runner may have applied files while we waited for the lock.
        applied = await history.read_history(conn)
        if mode == "repair":
            await _repair(conn, files, report, applied, version)
        elif mode == "baseline":
            await _apply_baseline(conn, files, report, applied, version)
        else:
            plan = _plan(files, applied, policy, repair_with)
            if not _refuse(report, plan, file_problems):
                await _apply_pending(session, plan, report, lock_retries)
    finally:
        if not conn.broken:
            await conn.execute(f"SELECT pg_advisory_unlock({LOCK_KEY})")


async def _apply_baseline(
    conn: AsyncConnection[tuple[object, ...]],
    files: list[MigrationFile],
    report: DatabaseReport,
    applied: list[history.AppliedMigration],
    version: int | None,
) -> None:
    """Record files up to `version` as already present, for a database built without us."""
    if applied:
        report.status = Status.REFUSED
        report.problems.append("the database already has a migration history; nothing to adopt")
        return
    if version is None or version not in {f.version for f in files}:
        report.status = Status.REFUSED
        report.problems.append(f"baseline version {version} is not one of the migration files")
        return
    async with conn.transaction():
        for file in files:
            if file.version <= version:
                await history.record_applied(
                    conn, file, status="baseline", execution_ms=0, runner=RUNNER
                )
                report.applied.append(file.version)
        await history.record_attempt(
            conn, version=version, filename=None, outcome="baseline", runner=RUNNER
        )
    report.after = version
    report.pending = [f.version for f in files if f.version > version]
    report.status = Status.BASELINED


async def _repair(
    conn: AsyncConnection[tuple[object, ...]],
    files: list[MigrationFile],
    report: DatabaseReport,
    applied: list[history.AppliedMigration],
    version: int | None,
) -> None:
    """Accept the edit of an applied file (`repair --accept V`), with an audit row."""
    row = next((r for r in applied if r.version == version and r.complete), None)
    file = next((f for f in files if f.version == version), None)
    if row is None or file is None or row.checksum == file.checksum:
        report.status = Status.REFUSED
        report.problems.append(f"version {version} is not an applied file that was edited")
        return
    await history.accept_edit(conn, file, old=row.checksum, runner=RUNNER)
    report.status = Status.REPAIRED
    report.warnings = [f"{file.filename}: accepted {row.checksum} -> {file.checksum}"]


async def _apply_pending(
    session: _Session,
    plan: _Plan,
    report: DatabaseReport,
    lock_retries: int,
) -> None:
    """Each pending file in turn. What a file reports with RAISE WARNING (rows it repaired
    rather than fail on, say) becomes a warning of this database's report, once the file is
    applied; NOTICEs (IF NOT EXISTS skipping...) are not reported."""
    warned: list[str] = []

    def on_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized == "WARNING" and diagnostic.message_primary:
            warned.append(diagnostic.message_primary)

    session.conn.add_notice_handler(on_notice)
    try:
        await _apply_each(session, plan, report, lock_retries, warned)
    finally:
        session.conn.remove_notice_handler(on_notice)


async def _apply_each(
    session: _Session,
    plan: _Plan,
    report: DatabaseReport,
    lock_retries: int,
    warned: list[str],
) -> None:
    conn = session.conn
    for file in plan.pending:
        warned.clear()  # a failed file's warnings went with its rollback
        late = file.version in plan.out_of_order
        try:
            if file.transactional:
                await _apply_transactional(session, file, lock_retries, out_of_order=late)
            else:
                await _apply_outside_transaction(
                    session, file, plan.partial.get(file.version), out_of_order=late
                )
        except _InvalidIndexes as invalid:
            report.status = Status.FAILED
            report.error = MigrationError(
                file.filename, None, None,
                f"invalid index(es) {invalid} left by a failed concurrent build; drop them"
                " (DROP INDEX CONCURRENTLY) and run again",
            )  # fmt: skip
            return
        except _StatementFailed as failed:
            if conn.broken:
                raise failed.error from None  # gone: the caller reports it unreachable
            report.error = _migration_error(file, failed)
            timed_out = failed.error.sqlstate == LOCK_NOT_AVAILABLE
            report.status = Status.LOCK_TIMEOUT if timed_out else Status.FAILED
            left = await invalid_indexes(conn) if not file.transactional else []
            if left:
                report.problems.append(f"invalid index(es) left behind: {', '.join(left)}")
            at = await history.record_attempt(
                conn, version=file.version, filename=file.filename,
                outcome="lock-timeout" if timed_out else "failed", runner=RUNNER,
                sqlstate=report.error.sqlstate, message=report.error.message,
                line=report.error.line,
            )  # fmt: skip
            report.error = dataclasses.replace(report.error, at=at)
            report.pending = [f.version for f in plan.pending if f.version >= file.version]
            return
        report.applied.append(file.version)
        report.warnings += [f"{file.filename}: {message}" for message in dict.fromkeys(warned)]
        report.after = max(report.after or 0, file.version)
    report.pending = []
    report.status = Status.APPLIED if report.applied else Status.UP_TO_DATE
