"""Is a copied database the same as its source? Compared by what a move must not lose.

A fingerprint holds the exact row count of every table in the database's own schemas (the
migration runner's bookkeeping in studio_migrate too) and a checksum of the migration history
(every column of every row: the copy must say it has the same files applied, the same way).
Both are read while the source's writes are held, so they cannot change in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import sql

from db.migrations.history import SCHEMA

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["Fingerprint", "differences", "fingerprint", "history_checksum"]

_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
   AND NOT c.relispartition
 ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Fingerprint:
    row_counts: dict[str, int]  # "schema.table" -> rows
    history_checksum: str  # md5 of the history rows as text, in version order

    def as_dict(self) -> dict[str, object]:
        return {"row_counts": self.row_counts, "history_checksum": self.history_checksum}


async def fingerprint(conn: AsyncConnection[tuple[object, ...]]) -> Fingerprint:
    """The fingerprint of the database `conn` is connected to (in one snapshot)."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # Timestamps print in the session's time zone: the same on both sides.
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        cur = await conn.execute(_TABLES)
        counts = {}
        for schema, table in await cur.fetchall():
            name = sql.Identifier(str(schema), str(table))
            counted = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name))
            row = await counted.fetchone()
            counts[f"{schema}.{table}"] = int(str(row[0])) if row else 0
        checksum = await _history_checksum(conn)
    return Fingerprint(counts, checksum)


async def history_checksum(conn: AsyncConnection[tuple[object, ...]]) -> str:
    """The migration history's checksum alone: read before the schema is copied, it tells
    whether a migration ran between that copy and the hold."""
    async with conn.transaction():
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        return await _history_checksum(conn)


async def _history_checksum(conn: AsyncConnection[tuple[object, ...]]) -> str:
    history = await conn.execute(
        sql.SQL(
            "SELECT md5(coalesce(string_agg(h::text, E'\\n' ORDER BY h.version), '')) FROM {} h"
        ).format(sql.Identifier(SCHEMA, "history"))
    )
    row = await history.fetchone()
    return str(row[0]) if row else ""


def differences(source: Fingerprint, copy: Fingerprint) -> list[str]:
    """What differs, one line each (none: the copy is complete)."""
    found = []
    for table in sorted(source.row_counts.keys() | copy.row_counts.keys()):
        had, has = source.row_counts.get(table), copy.row_counts.get(table)
        if had != has:
            found.append(f"{table}: {had} rows in the source, {has} in the copy")
    if source.history_checksum != copy.history_checksum:
        found.append("studio_migrate.history differs (its checksum)")
    return found
