"""The runner's bookkeeping tables in each database, in a schema of their own.

`history` has one row per applied file, written in the same transaction as the file itself, so
the two commit or vanish together. `attempts` records failures (and other events) in autocommit,
outside the failed transaction, so an operator can see what was tried and why it failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "AppliedMigration",
    "ensure_history_tables",
    "history_exists",
    "read_history",
    "record_applied",
    "record_attempt",
    "user_tables_exist",
]

SCHEMA = "studio_migrate"

_CREATE = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.history (
    version      integer     PRIMARY KEY,
    name         text        NOT NULL,
    filename     text        NOT NULL,
    checksum     text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('applied', 'baseline')),
    applied_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    execution_ms integer     NOT NULL,
    applied_by   text        NOT NULL DEFAULT current_user,
    runner       text        NOT NULL
);
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
    status: str


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
    if not await history_exists(conn):
        return []
    cur = await conn.execute(
        f"SELECT version, filename, checksum, status FROM {SCHEMA}.history ORDER BY version"
    )
    return [
        AppliedMigration(int(str(v)), str(f), str(c), str(s)) for v, f, c, s in await cur.fetchall()
    ]


async def record_applied(
    conn: AsyncConnection[tuple[object, ...]],
    *,
    version: int,
    name: str,
    filename: str,
    checksum: str,
    status: str,
    execution_ms: int,
    runner: str,
) -> None:
    await conn.execute(
        f"INSERT INTO {SCHEMA}.history"
        " (version, name, filename, checksum, status, execution_ms, runner)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (version, name, filename, checksum, status, execution_ms, runner),
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
) -> None:
    await conn.execute(
        f"INSERT INTO {SCHEMA}.attempts"
        " (version, filename, outcome, sqlstate, message, line, runner)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (version, filename, outcome, sqlstate, message, line, runner),
    )
