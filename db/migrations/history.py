"""The runner's bookkeeping tables in each database, in a schema of their own.

`history` has one row per file. A transactional file's row is written in the same transaction
as the file, so the two commit or vanish together. A no-transaction file's row is written
first (status `running`) and moves on statement by statement (`statements_done`), so a failed
or interrupted file can be resumed where it stopped. `attempts` records failures, baselines
and accepted edits in autocommit, outside any migration transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from db.migrations.files import MigrationFile

__all__ = [
    "AppliedMigration",
    "RecordedFailure",
    "accept_edit",
    "ensure_history_tables",
    "history_exists",
    "last_failure",
    "read_history",
    "record_applied",
    "record_attempt",
    "record_progress",
    "user_tables_exist",
]

SCHEMA = "studio_migrate"

# Idempotent, so that a runner finding an older layout brings it up to date (under the lock).
_CREATE = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.history (
    version      integer     PRIMARY KEY,
    name         text        NOT NULL,
    filename     text        NOT NULL,
    checksum     text        NOT NULL,
    status       text        NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    execution_ms integer     NOT NULL,
    applied_by   text        NOT NULL DEFAULT current_user,
    runner       text        NOT NULL
);
ALTER TABLE {SCHEMA}.history
    ADD COLUMN IF NOT EXISTS checksum_loose text,
    ADD COLUMN IF NOT EXISTS transactional boolean NOT NULL DEFAULT true,
    ADD COLUMN IF NOT EXISTS statements_done integer,
    ADD COLUMN IF NOT EXISTS statements_total integer,
    ADD COLUMN IF NOT EXISTS statement_checksums text[],
    ADD COLUMN IF NOT EXISTS out_of_order boolean NOT NULL DEFAULT false;
ALTER TABLE {SCHEMA}.history DROP CONSTRAINT IF EXISTS history_status_check;
ALTER TABLE {SCHEMA}.history ADD CONSTRAINT history_status_check
    CHECK (status IN ('applied', 'baseline', 'running', 'failed'));
CREATE TABLE IF NOT EXISTS {SCHEMA}.attempts (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version   integer,
    filename  text,
    outcome   text        NOT NULL,
    sqlstate  text,
    message   text,
    line      integer,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    db_user   text        NOT NULL DEFAULT current_user,
    runner    text        NOT NULL
);
"""


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    filename: str
    checksum: str
    checksum_loose: str | None
    status: str  # applied | baseline | running | failed
    statements_done: int | None = None
    statement_checksums: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.status in {"applied", "baseline"}


@dataclass(frozen=True)
class RecordedFailure:
    """The last failed attempt at a file that is still pending, as `status` shows it."""

    filename: str | None
    line: int | None
    sqlstate: str | None
    message: str
    at: str  # ISO 8601


async def last_failure(
    conn: AsyncConnection[tuple[object, ...]], pending: list[int]
) -> RecordedFailure | None:
    """The latest failure recorded for one of the `pending` versions, if any (read-only)."""
    cur = await conn.execute(f"SELECT to_regclass('{SCHEMA}.attempts') IS NOT NULL")
    row = await cur.fetchone()
    if not (row and row[0]):
        return None
    cur = await conn.execute(
        f"SELECT filename, line, sqlstate, message, to_json(at) #>> '{{}}' FROM {SCHEMA}.attempts"
        " WHERE version = ANY(%s) AND outcome IN ('failed', 'lock-timeout')"
        " ORDER BY id DESC LIMIT 1",
        (pending,),
    )
    found = await cur.fetchone()
    if found is None:
        return None
    filename, line, sqlstate, message, at = found
    return RecordedFailure(
        None if filename is None else str(filename),
        None if line is None else int(str(line)),
        None if sqlstate is None else str(sqlstate),
        str(message or ""),
        str(at),
    )


async def history_exists(conn: AsyncConnection[tuple[object, ...]]) -> bool:
    cur = await conn.execute(f"SELECT to_regclass('{SCHEMA}.history') IS NOT NULL")
    row = await cur.fetchone()
    return bool(row and row[0])


async def user_tables_exist(conn: AsyncConnection[tuple[object, ...]]) -> bool:
    """Whether the database already holds tables of its own (outside the runner's schema)."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN"
        f" ('pg_catalog', 'information_schema', '{SCHEMA}') AND n.nspname NOT LIKE 'pg_%')"
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def ensure_history_tables(conn: AsyncConnection[tuple[object, ...]]) -> None:
    await conn.execute(_CREATE)


async def read_history(conn: AsyncConnection[tuple[object, ...]]) -> list[AppliedMigration]:
    """Read-only (works for a role that cannot write), whatever layout version the table has."""
    if not await history_exists(conn):
        return []
    cur = await conn.execute(f"SELECT row_to_json(h) FROM {SCHEMA}.history h ORDER BY version")
    rows = []
    for (data,) in await cur.fetchall():
        assert isinstance(data, dict)
        rows.append(
            AppliedMigration(
                version=int(data["version"]),
                filename=str(data["filename"]),
                checksum=str(data["checksum"]),
                checksum_loose=data.get("checksum_loose"),
                status=str(data["status"]),
                statements_done=data.get("statements_done"),
                statement_checksums=tuple(data.get("statement_checksums") or ()),
            )
        )
    return rows


async def record_applied(
    conn: AsyncConnection[tuple[object, ...]],
    file: MigrationFile,
    *,
    status: str,
    execution_ms: int,
    runner: str,
    out_of_order: bool = False,
) -> None:
    """The file's row, `out_of_order` when it was numbered below a file applied before it."""
    await conn.execute(
        f"INSERT INTO {SCHEMA}.history (version, name, filename, checksum, checksum_loose,"
        " transactional, status, execution_ms, runner, out_of_order)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (version) DO UPDATE SET status = EXCLUDED.status,"
        " checksum = EXCLUDED.checksum, checksum_loose = EXCLUDED.checksum_loose,"
        " execution_ms = EXCLUDED.execution_ms, applied_at = clock_timestamp(),"
        " runner = EXCLUDED.runner, out_of_order = EXCLUDED.out_of_order",
        (file.version, file.name, file.filename, file.checksum, file.checksum_loose,
         file.transactional, status, execution_ms, runner, out_of_order),
    )  # fmt: skip


async def record_progress(
    conn: AsyncConnection[tuple[object, ...]],
    file: MigrationFile,
    *,
    status: str,
    done: int,
    statement_checksums: list[str],
    runner: str,
) -> None:
    """A no-transaction file's progress, committed at once (the connection is autocommit)."""
    await conn.execute(
        f"INSERT INTO {SCHEMA}.history (version, name, filename, checksum, checksum_loose,"
        " transactional, status, execution_ms, runner, statements_done, statements_total,"
        " statement_checksums) VALUES (%s, %s, %s, %s, %s, false, %s, 0, %s, %s, %s, %s)"
        " ON CONFLICT (version) DO UPDATE SET status = EXCLUDED.status,"
        " checksum = EXCLUDED.checksum, checksum_loose = EXCLUDED.checksum_loose,"
        " statements_done = EXCLUDED.statements_done,"
        " statements_total = EXCLUDED.statements_total,"
        " statement_checksums = EXCLUDED.statement_checksums, runner = EXCLUDED.runner",
        (file.version, file.name, file.filename, file.checksum, file.checksum_loose, status,
         runner, done, len(statement_checksums), statement_checksums),
    )  # fmt: skip


async def accept_edit(
    conn: AsyncConnection[tuple[object, ...]], file: MigrationFile, *, old: str, runner: str
) -> None:
    """Record that an applied file was edited on purpose; the audit row keeps both sums."""
    async with conn.transaction():
        await conn.execute(
            f"UPDATE {SCHEMA}.history SET checksum = %s, checksum_loose = %s WHERE version = %s",
            (file.checksum, file.checksum_loose, file.version),
        )
        await record_attempt(
            conn,
            version=file.version,
            filename=file.filename,
            outcome="accepted-edit",
            runner=runner,
            message=f"checksum {old} -> {file.checksum}",
        )


async def record_attempt(
    conn: AsyncConnection[tuple[object, ...]],
    *,
    version: int | None,
    filename: str | None,
    outcome: str,
    runner: str,
    sqlstate: str | None = None,
    message: str | None = None,
    line: int | None = None,
) -> str:
    """Record an attempt; when it was recorded (ISO 8601)."""
    cur = await conn.execute(
        f"INSERT INTO {SCHEMA}.attempts"
        " (version, filename, outcome, sqlstate, message, line, runner)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING to_json(at) #>> '{}'",
        (version, filename, outcome, sqlstate, message, line, runner),
    )
    row = await cur.fetchone()
    return str(row[0]) if row else ""
