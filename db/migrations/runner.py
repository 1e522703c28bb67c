"""Applying migration files to one database, safely.

The protocol, per database:
1. read the history without creating anything (so `status` works for a read-only role);
2. validate every file against it before any change: an applied file edited or missing, or a
   new file numbered below the highest applied one, refuses the whole run;
3. take a session advisory lock, polled with `pg_try_advisory_lock` (a blocking waiter would
   deadlock with CREATE INDEX CONCURRENTLY), then read and validate the history again, since
   another runner may have applied files while we waited;
4. apply each pending file in its own transaction with its history row, so a failed file leaves
   nothing behind but an `attempts` row, and a re-run needs no "force".
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

from db.migrations import history
from db.migrations.files import MigrationFile
from db.migrations.sql_split import Statement, split_statements

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["DatabaseReport", "MigrationError", "Mode", "Status", "run_database"]

# Advisory locks are per database, so one constant key serves every tenant on a server.
LOCK_KEY = 0x5354_5544_494F_4D47  # "STUDIOMG"
DEFAULT_LOCK_TIMEOUT = "5s"
RUNNER = f"studio-migrate host={socket.gethostname()} pid={os.getpid()}"

Mode = Literal["status", "up", "baseline"]


class Status(enum.StrEnum):
    UP_TO_DATE = "up-to-date"
    APPLIED = "applied"
    PENDING = "pending"  # status only: files are waiting
    BASELINED = "baselined"
    FAILED = "failed"
    REFUSED = "refused"  # validation refused the run before any change
    LOCK_TIMEOUT = "lock-timeout"
    UNREACHABLE = "unreachable"


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
    before: int | None = None
    after: int | None = None
    applied: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: MigrationError | None = None
    duration_ms: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "status": str(self.status),
            "before": self.before,
            "after": self.after,
            "applied": self.applied,
            "pending": self.pending,
            "problems": self.problems,
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


def _validate(
    files: list[MigrationFile], applied: list[history.AppliedMigration]
) -> tuple[list[MigrationFile], list[str]]:
    """The pending files, and the problems that must refuse the run before any change."""
    problems: list[str] = []
    by_version = {f.version: f for f in files}
    for row in applied:
        file = by_version.get(row.version)
        if file is None:
            problems.append(f"{row.filename}: applied (version {row.version}) but the file is gone")
        elif row.status == "applied" and file.checksum != row.checksum:
            problems.append(
                f"{file.filename}: edited after it was applied"
                f" (applied {row.checksum}, file now {file.checksum})"
            )
    done = {row.version for row in applied}
    pending = [f for f in files if f.version not in done]
    highest = max(done, default=0)
    problems += [
        f"{f.filename}: new file numbered below the highest applied version {highest}"
        for f in pending
        if f.version < highest
    ]
    return pending, problems


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


async def _acquire_lock(conn: AsyncConnection[tuple[object, ...]], lock_wait: float) -> bool:
    """Poll the advisory lock with backoff and jitter; never block inside PostgreSQL."""
    deadline = time.monotonic() + lock_wait
    delay = 0.05
    while True:
        # No parameters: sent with the simple protocol, leaving no snapshot behind (a held
        # xmin would make another database's CREATE INDEX CONCURRENTLY wait on us).
        cur = await conn.execute(f"SELECT pg_try_advisory_lock({LOCK_KEY})")
        row = await cur.fetchone()
        if row and row[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 1.0) * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not crypto)


async def _apply_file(conn: AsyncConnection[tuple[object, ...]], file: MigrationFile) -> int:
    """Run one file and record it, in one transaction. Returns its duration in ms."""
    started = time.monotonic()
    async with conn.transaction():
        lock_timeout = file.lock_timeout or DEFAULT_LOCK_TIMEOUT
        await conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
        # One statement at a time (still one transaction), so a failure names its line even
        # when PostgreSQL reports no position. No parameters: the simple protocol.
        for statement in split_statements(file.sql):
            try:
                await conn.execute(statement.text.encode())
            except psycopg.Error as exc:
                raise _StatementFailed(statement, exc) from exc
        elapsed = int((time.monotonic() - started) * 1000)
        await history.record_applied(
            conn,
            version=file.version,
            name=file.name,
            filename=file.filename,
            checksum=file.checksum,
            status="applied",
            execution_ms=elapsed,
            runner=RUNNER,
        )
    return elapsed


async def _baseline(
    conn: AsyncConnection[tuple[object, ...]], files: list[MigrationFile], version: int
) -> list[int]:
    """Record files up to `version` as already present, for a database built without us."""
    marked = []
    async with conn.transaction():
        for file in files:
            if file.version > version:
                break
            await history.record_applied(
                conn,
                version=file.version,
                name=file.name,
                filename=file.filename,
                checksum=file.checksum,
                status="baseline",
                execution_ms=0,
                runner=RUNNER,
            )
            marked.append(file.version)
        await history.record_attempt(
            conn, version=version, filename=None, outcome="baseline", runner=RUNNER
        )
    return marked


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
) -> DatabaseReport:
    """Bring one database up to date (mode "up"), or only report on it ("status")."""
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
        return report
    try:
        async with conn:
            await _run(
                conn,
                files=files,
                report=report,
                mode=mode,
                file_problems=file_problems or [],
                lock_wait=lock_wait,
                baseline_version=baseline_version,
            )
    except psycopg.Error as exc:
        if not conn.broken:
            raise
        report.status = Status.UNREACHABLE
        report.problems.append(str(exc).strip())
    report.duration_ms = int((time.monotonic() - started) * 1000)
    return report


async def _run(
    conn: AsyncConnection[tuple[object, ...]],
    *,
    files: list[MigrationFile],
    report: DatabaseReport,
    mode: Mode,
    file_problems: list[str],
    lock_wait: float,
    baseline_version: int | None,
) -> None:
    applied = await history.read_history(conn)
    report.before = report.after = max((r.version for r in applied), default=None)
    pending, problems = _validate(files, applied)
    problems = file_problems + problems
    if not applied and mode != "baseline" and await history.user_tables_exist(conn):
        problems.append(
            "the database has tables but no migration history: adopt it with"
            " `studio migrate baseline --version V` first"
        )
    report.pending = [f.version for f in pending]
    if problems:
        report.status, report.problems = Status.REFUSED, problems
        return
    if mode == "status":
        report.status = Status.PENDING if pending else Status.UP_TO_DATE
        return
    if not await _acquire_lock(conn, lock_wait):
        report.status = Status.LOCK_TIMEOUT
        report.problems.append(f"another runner held the migration lock for {lock_wait:g}s")
        return
    try:
        await history.ensure_history_tables(conn)
        # Another runner may have applied files while we waited for the lock.
        applied = await history.read_history(conn)
        pending, problems = _validate(files, applied)
        if problems:
            report.status, report.problems = Status.REFUSED, problems
            return
        if mode == "baseline":
            await _apply_baseline(conn, files, report, applied, baseline_version)
            return
        await _apply_pending(conn, pending, report)
    finally:
        await conn.execute(f"SELECT pg_advisory_unlock({LOCK_KEY})")


async def _apply_baseline(
    conn: AsyncConnection[tuple[object, ...]],
    files: list[MigrationFile],
    report: DatabaseReport,
    applied: list[history.AppliedMigration],
    version: int | None,
) -> None:
    if applied:
        report.status = Status.REFUSED
        report.problems.append("the database already has a migration history; nothing to adopt")
        return
    if version is None or version not in {f.version for f in files}:
        report.status = Status.REFUSED
        report.problems.append(f"baseline version {version} is not one of the migration files")
        return
    report.applied = await _baseline(conn, files, version)
    report.after = version
    report.pending = [f.version for f in files if f.version > version]
    report.status = Status.BASELINED


async def _apply_pending(
    conn: AsyncConnection[tuple[object, ...]],
    pending: list[MigrationFile],
    report: DatabaseReport,
) -> None:
    for file in pending:
        try:
            await _apply_file(conn, file)
        except _StatementFailed as failed:
            if conn.broken:
                raise failed.error from None  # gone: the caller reports it unreachable
            report.error = _migration_error(file, failed)
            report.status = Status.FAILED
            await history.record_attempt(
                conn,
                version=file.version,
                filename=file.filename,
                outcome="failed",
                runner=RUNNER,
                sqlstate=report.error.sqlstate,
                message=report.error.message,
                line=report.error.line,
            )
            report.pending = [f.version for f in pending if f.version >= file.version]
            return
        report.applied.append(file.version)
        report.after = file.version
    report.pending = []
    report.status = Status.APPLIED if report.applied else Status.UP_TO_DATE
