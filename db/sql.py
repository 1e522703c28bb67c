"""SQLAlchemy Core statements, compiled once, run on a psycopg connection as they are.

The statements of the call path are built with SQLAlchemy Core (db/crud.py,
db/references.py) and compiled here once, to the SQL text and parameter style psycopg takes
(`%(name)s`, with SQLAlchemy's casts). Running them through SQLAlchemy's asyncio layer cost
more CPU per call than PostgreSQL spends on them (a greenlet switch per execute, result
processing, the compiled-cache lookup: about 250 us of a 400 us primary-key read, measured in
docs/performance.md); psycopg runs the text directly, and prepares it on each connection
after a few uses, as pgbench `-M prepared` does (not through a pooler: db/tenant_pools.py).
Rows are dicts keyed by column name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

if TYPE_CHECKING:
    from sqlalchemy.sql import ClauseElement

__all__ = ["Connection", "Row", "Sql", "compiled", "fetch_all", "fetch_one", "fetch_value"]

Row = dict[str, Any]
Connection = psycopg.AsyncConnection[Row]  # a tenant connection: autocommit, dict rows
_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Sql:
    """A statement's SQL text, and the values SQLAlchemy bound by itself (the 1 of
    `version + 1`, say); the caller supplies every named parameter."""

    text: str
    literals: Mapping[str, Any]

    def params(self, given: Mapping[str, Any]) -> Mapping[str, Any]:
        return {**self.literals, **given} if self.literals else given


def compiled(statement: ClauseElement) -> Sql:
    """Compile once, where the statement is built (and cached): never per call."""
    result = statement.compile(dialect=_DIALECT)
    literals = {k: v for k, v in result.params.items() if v is not None}
    return Sql(str(result), literals)


async def fetch_one(conn: Connection, sql: Sql, params: Mapping[str, Any]) -> Row | None:
    cursor = await conn.execute(sql.text, sql.params(params))
    return await cursor.fetchone()


async def fetch_all(conn: Connection, sql: Sql, params: Mapping[str, Any]) -> list[Row]:
    cursor = await conn.execute(sql.text, sql.params(params))
    return await cursor.fetchall()


async def fetch_value(conn: Connection, sql: Sql, params: Mapping[str, Any]) -> Any:  # noqa: ANN401 (a column's value, as PostgreSQL sent it)
    """The first column of the first row, or None if there is no row."""
    row = await fetch_one(conn, sql, params)
    return None if row is None else next(iter(row.values()))
