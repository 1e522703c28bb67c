"""Generic row operations for the API's resources (every tenant table has id, version,
create_request_id, created_at and updated_at), written once for all of them.

The hot statements are built once per table and shape, with bind parameters, and reused:
building a statement per call, and generating its cache key, cost more CPU than PostgreSQL
spends running it. SQLAlchemy then finds the compiled form in its cache, and psycopg
prepares a statement it has seen a few times on a connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    Column,
    ColumnElement,
    Select,
    Table,
    bindparam,
    delete,
    func,
    null,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.sql.dml import ReturningDelete, ReturningInsert, ReturningUpdate

if TYPE_CHECKING:
    from sqlalchemy import RowMapping
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "Guard",
    "delete_row",
    "fetch_by_request_id",
    "fetch_row",
    "insert_row",
    "list_rows",
    "update_row",
]

Lock = Literal["update", "share"] | None
Fixed = tuple[tuple[str, ColumnElement[Any]], ...]  # columns set to SQL expressions (DEFAULT)
Condition = ColumnElement[bool] | None


@cache
def _fetch_statement(table: Table, lock: Lock, by: str = "id") -> Select[Any]:
    query = select(table).where(table.c[by] == bindparam("key"))
    if lock == "update":
        query = query.with_for_update()
    elif lock == "share":
        query = query.with_for_update(read=True)
    return query


async def fetch_row(
    conn: AsyncConnection, table: Table, row_id: int, *, lock: Lock = None
) -> RowMapping | None:
    result = await conn.execute(_fetch_statement(table, lock), {"key": row_id})
    row: RowMapping | None = result.mappings().first()
    return row


@dataclass(frozen=True)
class Guard:
    """A condition an INSERT or UPDATE must meet to write anything, checked by the statement
    itself (no read before it): `condition` is built once with bind parameters (it is part of
    the statement's cache key), `params` are their values for this call."""

    condition: ColumnElement[bool]
    params: dict[str, Any]


@lru_cache(maxsize=256)  # a shape per set of columns a create sets
def _insert_statement(
    table: Table, columns: tuple[str, ...], with_request_id: bool, condition: Condition
) -> ReturningInsert[tuple[Any, ...]]:
    """INSERT ... SELECT each column from a parameter of its name (and create_request_id),
    WHERE the condition holds, RETURNING *; a request id already used inserts nothing."""
    row = select(
        *(bindparam(c, type_=table.c[c].type).label(c) for c in [*columns, "create_request_id"])
    )
    if condition is not None:
        row = row.where(condition)
    statement = insert(table).from_select([*columns, "create_request_id"], row)
    if with_request_id:
        statement = statement.on_conflict_do_nothing(index_elements=["create_request_id"])
    return statement.returning(table)


async def insert_row(
    conn: AsyncConnection,
    table: Table,
    values: dict[str, Any],
    *,
    request_id: str | None,
    guard: Guard | None = None,
) -> RowMapping | None:
    """Insert and return the row, in one statement. With a request id, a retry inserts
    nothing and returns the first row instead (concurrent retries wait on the unique index,
    so exactly one inserts). None only when the guard refused."""
    statement = _insert_statement(
        table, tuple(values), request_id is not None, guard.condition if guard else None
    )
    params = {**values, "create_request_id": request_id, **(guard.params if guard else {})}
    row: RowMapping | None = (await conn.execute(statement, params)).mappings().first()
    if row is None and request_id is not None:
        row = await fetch_by_request_id(conn, table, request_id)
    return row


async def fetch_by_request_id(
    conn: AsyncConnection, table: Table, request_id: str
) -> RowMapping | None:
    """The row a create with this idempotency key made, if any."""
    statement = _fetch_statement(table, None, "create_request_id")
    row: RowMapping | None = (await conn.execute(statement, {"key": request_id})).mappings().first()
    return row


@lru_cache(maxsize=1024)  # a shape per set of columns an update writes
def _update_statement(
    table: Table, bound: tuple[str, ...], fixed: Fixed, condition: Condition
) -> ReturningUpdate[tuple[Any, ...]]:
    """UPDATE ... SET each `bound` column to a parameter of its name and each `fixed` one
    to its SQL expression (DEFAULT, say), bump the version and updated_at, RETURNING *."""
    values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in bound}
    values.update(fixed)
    statement = update(table).where(table.c.id == bindparam("row_id"))
    if condition is not None:
        statement = statement.where(condition)
    return statement.values(**values, version=table.c.version + 1, updated_at=func.now()).returning(
        table
    )


async def update_row(
    conn: AsyncConnection,
    table: Table,
    row_id: int,
    values: dict[str, Any],
    *,
    guard: Guard | None = None,
) -> RowMapping | None:
    """Write `values` (plain values, or SQL expressions such as DEFAULT), bump the version
    (the etag) and updated_at; None if there is no row, or if the guard refused."""
    fixed = tuple((k, v) for k, v in values.items() if isinstance(v, ColumnElement))
    bound = tuple(k for k, v in values.items() if not isinstance(v, ColumnElement))
    statement = _update_statement(table, bound, fixed, guard.condition if guard else None)
    params = {f"v_{k}": values[k] for k in bound} | (guard.params if guard else {})
    result = await conn.execute(statement, {**params, "row_id": row_id})
    row: RowMapping | None = result.mappings().first()
    return row


@cache
def _unlinked_by_delete(table: Table) -> tuple[Column[Any], ...]:
    """The columns of other tables that refer to `table` with ON DELETE SET NULL."""
    assert table.metadata is not None
    return tuple(
        fk.parent
        for other in table.metadata.tables.values()
        for fk in other.foreign_keys
        if fk.ondelete == "SET NULL" and fk.column.table is table
    )


@cache
def _lock_statement(table: Table) -> Select[Any]:
    return select(table.c.version).where(table.c.id == bindparam("row_id")).with_for_update()


@cache
def _delete_statement(table: Table, with_version: bool) -> ReturningDelete[tuple[int]]:
    """DELETE ... RETURNING id, with a data-modifying CTE per ON DELETE SET NULL reference
    that unlinks the rows referring to it as an update of ours would: NULL, the version
    (their etag) bumped, updated_at now. The foreign key's own SET NULL then has nothing
    left to do, so no row changes behind the API's back."""
    statement = delete(table).where(table.c.id == bindparam("row_id"))
    if with_version:
        statement = statement.where(table.c.version == bindparam("version"))
    for column in _unlinked_by_delete(table):
        referring = column.table
        unlink = (
            update(referring)
            .where(column == bindparam("row_id"))
            .values(
                {column.name: null(), "version": referring.c.version + 1, "updated_at": func.now()}
            )
        )
        statement = statement.add_cte(unlink.cte(f"unlink_{referring.name}_{column.name}"))
    return statement.returning(table.c.id)


async def delete_row(
    conn: AsyncConnection, table: Table, row_id: int, *, version: int | None = None
) -> bool:
    """Delete the row (only at `version`, if given); False if there is none (at that version).

    Rows that refer to it through an ON DELETE SET NULL key are unlinked by the delete
    statement itself, each bumped like any write (see _delete_statement). Such a row is first
    locked in a statement of its own (in the caller's transaction): a write linking a row to
    it meanwhile has then committed, and the delete's fresh snapshot sees that link, or it
    waits for the delete (and then finds the row gone). In one statement the snapshot would
    predate the lock, and the foreign key would unlink such a row silently."""
    params = {"row_id": row_id} if version is None else {"row_id": row_id, "version": version}
    if _unlinked_by_delete(table):
        locked: int | None = await conn.scalar(_lock_statement(table), {"row_id": row_id})
        if locked is None or version not in (None, locked):
            return False
    statement = _delete_statement(table, version is not None)
    return (await conn.execute(statement, params)).first() is not None


async def list_rows(
    conn: AsyncConnection,
    table: Table,
    *,
    where: Sequence[ColumnElement[bool]],
    order_by: Sequence[str],
    after: Sequence[object] | None,
    limit: int,
) -> Sequence[RowMapping]:
    """One page in keyset order: the rows after `after` (the last sort key of the last page)."""
    columns = [table.c[name] for name in order_by]
    query = select(table).where(*where).order_by(*columns).limit(limit)
    if after is not None:
        query = query.where(tuple_(*columns) > tuple_(*after))
    return (await conn.execute(query)).mappings().all()
