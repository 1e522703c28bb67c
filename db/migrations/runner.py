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
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import psycopg
from psycopg import sql

from db.migrations import history
from db.migrations.files import MigrationFile
from db.tenant_roles import MAY_SET_ROLE

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from db.migrations.sql_split import Statement

__all__ = ["DatabaseReport", "MigrationError", "Mode", "Status", "run_database"]

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
class MigrationError:
    """Why a file failed: where (file and line) and what PostgreSQL said (SQLSTATE)."""

    filename: str
    line: int | None
    sqlstate: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}" if self.line else self.filename
        return f"{where}: {self.message} (SQLSTATE {self.sqlstate})"


@dataclass
class DatabaseReport:
    target: str
    status: Status
    server: str = ""
    before: int | None = None
    after: int | None = None
    applied: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: MigrationError | None = None
    duration_ms: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "server": self.server,
            "status": str(self.status),
            "before": self.before,
            "after": self.after,
            "applied": self.applied,
            "pending": self.pending,
            "problems": self.problems,
            "warnings": self.warnings,
            "error": None
            if self.error is None
            else {
                "file": self.error.filename,
                "line": self.error.line,
                "sqlstate": self.error.sqlstate,
                "message": self.error.message,
            },
            "duration_ms": self.duration_ms,
        }


@dataclass
class _Plan:
    pending: list[MigrationFile]
    partial: dict[int, history.AppliedMigration]  # no-transaction files to resume
    problems: list[str]
    drift: list[str]
    warnings: list[str]


def _plan(files: list[MigrationFile], applied: list[history.AppliedMigration]) -> _Plan:
    """What is pending, and the problems that must refuse the run before any change."""
    plan = _Plan([], {}, [], [], [])
    by_version = {f.version: f for f in files}
    for row in applied:
        file = by_version.get(row.version)
        if file is None:
            plan.problems.append(
                f"{row.filename}: applied (version {row.version}) but the file is gone"
            )
        elif not row.complete:
            done = row.statements_done or 0
            if file.statement_checksums[:done] != list(row.statement_checksums[:done]):
                plan.drift.append(
                    f"{file.filename}: its first {done} statements ran and were edited since"
                )
            plan.partial[row.version] = row
        elif row.status == "applied" and file.checksum != row.checksum:
            if row.checksum_loose is not None and row.checksum_loose == file.checksum_loose:
                plan.warnings.append(
                    f"{file.filename}: edited after it was applied, in comments or white space only"
                    f" (applied {row.checksum}, file now {file.checksum}); record it with"
                    f" `studio migrate repair --accept {file.version}`"
                )
            else:
                plan.drift.append(
                    f"{file.filename}: edited after it was applied"
                    f" (applied {row.checksum}, file now {file.checksum})"
                )
    completed = {row.version for row in applied if row.complete}
    plan.pending = [f for f in files if f.version not in completed]
    highest = max(completed, default=0)
    plan.problems += [
        f"{f.filename}: new file numbered below the highest applied version {highest}"
        for f in plan.pending
        if f.version < highest and f.version not in plan.partial
    ]
    return plan


class _StatementFailed(Exception):
    """A statement of a file failed; carries where it starts in the file."""

    def __init__(self, statement: Statement, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.statement = statement
        self.error = error


def _migration_error(file: MigrationFile, failed: _StatementFailed) -> MigrationError:
    diag = failed.error.diag
    line = failed.statement.line
    # PostgreSQL gives a 1-based character position within the statement, when it has one.
    position = int(diag.statement_position) if diag.statement_position else None
    if position:
        line += failed.statement.text[: position - 1].count("\n")
    return MigrationError(
        filename=file.filename,
        line=line,
        sqlstate=failed.error.sqlstate,
        message=diag.message_primary or str(failed.error).strip(),
    )


async def _execute(conn: AsyncConnection[tuple[object, ...]], statement: Statement) -> None:
    # No parameters: the simple protocol, which leaves no snapshot behind.
    try:
        await conn.execute(statement.text.encode())
    except psycopg.Error as exc:
        raise _StatementFailed(statement, exc) from exc


async def _acquire_lock(conn: AsyncConnection[tuple[object, ...]], lock_wait: float) -> bool:
    """Poll the advisory lock with backoff and jitter; never block inside PostgreSQL."""
    deadline = time.monotonic() + lock_wait
    delay = 0.05
    while True:
        cur = await conn.execute(f"SELECT pg_try_advisory_lock({LOCK_KEY})")
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
    conn: AsyncConnection[tuple[object, ...]], file: MigrationFile, lock_retries: int
) -> None:
    """The whole file and its history row in one transaction; retried when a table lock
    could not be had within lock_timeout (it never queues behind application traffic)."""
    for attempt in range(lock_retries + 1):
        started = time.monotonic()
        try:
            async with conn.transaction():
                for setting in _timeouts(file, local=True):
                    await conn.execute(setting)
                for statement in file.statements:
                    await _execute(conn, statement)
                await history.record_applied(
                    conn,
                    file,
                    status="applied",
                    execution_ms=int((time.monotonic() - started) * 1000),
                    runner=RUNNER,
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
    conn: AsyncConnection[tuple[object, ...]],
    file: MigrationFile,
    resume: history.AppliedMigration | None,
) -> None:
    """Statement by statement in autocommit, recording progress after each one."""
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
                await _execute(conn, statements[index])
            except _StatementFailed:
                await history.record_progress(
                    conn, file, status="failed", done=index, statement_checksums=sums,
                    runner=RUNNER,
                )  # fmt: skip
                raise
        await history.record_applied(
            conn, file, status="applied", execution_ms=int((time.monotonic() - started) * 1000),
            runner=RUNNER,
        )  # fmt: skip
    finally:
        await conn.execute("RESET lock_timeout")
        await conn.execute("RESET statement_timeout")


class _InvalidIndexes(Exception):
    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


async def run_database(
    conninfo: str,
    files: list[MigrationFile],
    *,
    target: str,
    mode: Mode,
    file_problems: list[str] | None = None,
    lock_wait: float = 60.0,
    baseline_version: int | None = None,
    connect_timeout: int = 10,
    lock_retries: int = LOCK_RETRIES,
    as_owner: bool = False,
) -> DatabaseReport:
    """Bring one database up to date (mode "up"), or only report on it ("status").

    "baseline" records files up to `baseline_version` as present; "repair" accepts the edit
    of applied file `baseline_version`. `as_owner` (tenant databases): act as the database's
    owner when the user connected may, so that what the files create belongs to it.
    """
    started = time.monotonic()
    report = DatabaseReport(target=target, status=Status.UP_TO_DATE)
    try:
        conn = await psycopg.AsyncConnection.connect(
            conninfo,
            autocommit=True,
            connect_timeout=connect_timeout,
            application_name=f"studio-migrate {mode}",
        )
    except psycopg.OperationalError as exc:
        report.status = Status.UNREACHABLE
        report.problems.append(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        report.duration_ms = int((time.monotonic() - started) * 1000)
        return report
    try:
        async with conn:
            if as_owner:
                await _act_as_owner(conn)
            await _run(conn, files, report, mode=mode, file_problems=file_problems or [],
                       lock_wait=lock_wait, version=baseline_version,
                       lock_retries=lock_retries)  # fmt: skip
    except psycopg.Error as exc:
        if not conn.broken:
            raise
        report.status = Status.UNREACHABLE
        report.problems.append(str(exc).strip())
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
    conn: AsyncConnection[tuple[object, ...]],
    files: list[MigrationFile],
    report: DatabaseReport,
    *,
    mode: Mode,
    file_problems: list[str],
    lock_wait: float,
    version: int | None,
    lock_retries: int,
) -> None:
    applied = await history.read_history(conn)
    report.before = report.after = max((r.version for r in applied if r.complete), default=None)
    plan = _plan(files, applied)
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
        return
    if not await _acquire_lock(conn, lock_wait):
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
            plan = _plan(files, applied)
            if not _refuse(report, plan, file_problems):
                await _apply_pending(conn, plan, report, lock_retries)
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
    conn: AsyncConnection[tuple[object, ...]],
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

    conn.add_notice_handler(on_notice)
    try:
        await _apply_each(conn, plan, report, lock_retries, warned)
    finally:
        conn.remove_notice_handler(on_notice)


async def _apply_each(
    conn: AsyncConnection[tuple[object, ...]],
    plan: _Plan,
    report: DatabaseReport,
    lock_retries: int,
    warned: list[str],
) -> None:
    for file in plan.pending:
        warned.clear()  # a failed file's warnings went with its rollback
        try:
            if file.transactional:
                await _apply_transactional(conn, file, lock_retries)
            else:
                await _apply_outside_transaction(conn, file, plan.partial.get(file.version))
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
            await history.record_attempt(
                conn, version=file.version, filename=file.filename,
                outcome="lock-timeout" if timed_out else "failed", runner=RUNNER,
                sqlstate=report.error.sqlstate, message=report.error.message,
                line=report.error.line,
            )  # fmt: skip
            report.pending = [f.version for f in plan.pending if f.version >= file.version]
            return
        report.applied.append(file.version)
        report.warnings += [f"{file.filename}: {message}" for message in dict.fromkeys(warned)]
        report.after = file.version
    report.pending = []
    report.status = Status.APPLIED if report.applied else Status.UP_TO_DATE
