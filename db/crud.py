"""Generic row operations for the API's resources (every tenant table has id, version,
create_request_id, created_at and updated_at), written once for all of them.

Statements are built once per table and shape, with bind parameters, and compiled once
(db/sql.py): building or compiling a statement per call cost more CPU than PostgreSQL spends
running it. psycopg prepares a statement it has seen a few times on a connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    Column,
    ColumnElement,
    Label,
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

from db.sql import Sql, compiled, fetch_all, fetch_one

if TYPE_CHECKING:
    from db.sql import Connection, Row

__all__ = [
    "Filter",
    "Guard",
    "SortKey",
    "delete_row",
    "fetch_by_request_id",
    "fetch_row",
    "insert_row",
    "list_rows",
    "update_row",
]

Lock = Literal["update", "share"] | None
# A list's sort key: a column's name, or an expression labelled with the name it is
# returned under (tracks by coalesce(track_number, ...)).
SortKey = str | Label[Any]
Fixed = tuple[tuple[str, ColumnElement[Any]], ...]  # columns set to SQL expressions (DEFAULT)
Condition = ColumnElement[bool] | None


@cache
def _fetch_statement(table: Table, lock: Lock, by: str = "id") -> Sql:
    query = select(table).where(table.c[by] == bindparam("key"))
    if lock == "update":
        query = query.with_for_update()
    elif lock == "share":
        query = query.with_for_update(read=True)
    return compiled(query)


async def fetch_row(
    conn: Connection, table: Table, row_id: int, *, lock: Lock = None
) -> Row | None:
    return await fetch_one(conn, _fetch_statement(table, lock), {"key": row_id})


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
) -> Sql:
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
    return compiled(statement.returning(table))


async def insert_row(
    conn: Connection,
    table: Table,
    values: dict[str, Any],
    *,
    request_id: str | None,
    guard: Guard | None = None,
) -> Row | None:
    """Insert and return the row, in one statement. With a request id, a retry inserts
    nothing and returns the first row instead (concurrent retries wait on the unique index,
    so exactly one inserts). None only when the guard refused."""
    statement = _insert_statement(
        table, tuple(values), request_id is not None, guard.condition if guard else None
    )
    params = {**values, "create_request_id": request_id, **(guard.params if guard else {})}
    row = await fetch_one(conn, statement, params)
    if row is None and request_id is not None:
        row = await fetch_by_request_id(conn, table, request_id)
    return row


async def fetch_by_request_id(conn: Connection, table: Table, request_id: str) -> Row | None:
    """The row a create with this idempotency key made, if any."""
    statement = _fetch_statement(table, None, "create_request_id")
    return await fetch_one(conn, statement, {"key": request_id})


@lru_cache(maxsize=1024)  # a shape per set of columns an update writes
def _update_statement(
    table: Table, bound: tuple[str, ...], fixed: Fixed, condition: Condition, with_version: bool
) -> Sql:
    """UPDATE ... SET each `bound` column to a parameter of its name and each `fixed` one
    to its SQL expression (DEFAULT, say), bump the version and updated_at, RETURNING *."""
    values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in bound}
    values.update(fixed)
    statement = update(table).where(table.c.id == bindparam("row_id"))
    if with_version:
        statement = statement.where(table.c.version == bindparam("version"))
    if condition is not None:
        statement = statement.where(condition)
    statement = statement.values(**values, version=table.c.version + 1, updated_at=func.now())
    return compiled(statement.returning(table))


async def update_row(
    conn: Connection,
    table: Table,
    row_id: int,
    values: Mapping[str, Any],
    *,
    guard: Guard | None = None,
    version: int | None = None,
) -> Row | None:
    """Write `values` (plain values, or SQL expressions such as DEFAULT), bump the version
    (the etag) and updated_at; None if there is no row (at `version`, if given), or if the
    guard refused."""
    fixed = tuple((k, v) for k, v in values.items() if isinstance(v, ColumnElement))
    bound = tuple(k for k, v in values.items() if not isinstance(v, ColumnElement))
    statement = _update_statement(
        table, bound, fixed, guard.condition if guard else None, version is not None
    )
    params = {f"v_{k}": values[k] for k in bound} | (guard.params if guard else {})
    params["row_id"] = row_id
    if version is not None:
        params["version"] = version
    return await fetch_one(conn, statement, params)


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
def _lock_statement(table: Table) -> Sql:
    query = select(table.c.version).where(table.c.id == bindparam("row_id")).with_for_update()
    return compiled(query)


@cache
def _delete_statement(table: Table, with_version: bool) -> Sql:
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
    return compiled(statement.returning(table.c.id))


async def delete_row(
    conn: Connection, table: Table, row_id: int, *, version: int | None = None
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
        locked = await fetch_one(conn, _lock_statement(table), {"row_id": row_id})
        if locked is None or version not in (None, locked["version"]):
            return False
    statement = _delete_statement(table, version is not None)
    return await fetch_one(conn, statement, params) is not None


@dataclass(frozen=True)
class Filter:
    """A condition of a list (built once, with bind parameters) and its values for a call."""

    condition: ColumnElement[bool]
    params: Mapping[str, Any]


def _key_name(key: SortKey) -> str:
    return key if isinstance(key, str) else key.name


@lru_cache(maxsize=256)  # a shape per combination of filters
def _list_statement(
    table: Table,
    conditions: tuple[ColumnElement[bool], ...],
    order_by: tuple[SortKey, ...],
    paged: bool,
) -> Sql:
    columns = [table.c[key] if isinstance(key, str) else key.element for key in order_by]
    labelled = [key for key in order_by if not isinstance(key, str)]
    query = select(table, *labelled).where(*conditions).order_by(*columns).limit(bindparam("limit"))
    if paged:
        after = [
            bindparam(f"after_{_key_name(key)}", type_=column.type)
            for key, column in zip(order_by, columns, strict=True)
        ]
        query = query.where(tuple_(*columns) > tuple_(*after))
    return compiled(query)


async def list_rows(
    conn: Connection,
    table: Table,
    *,
    where: Sequence[Filter],
    order_by: Sequence[SortKey],
    after: Sequence[object] | None,
    limit: int,
) -> list[Row]:
    """One page in keyset order: the rows after `after` (the last sort key of the last page)."""
    statement = _list_statement(
        table, tuple(f.condition for f in where), tuple(order_by), after is not None
    )
    params: dict[str, Any] = {"limit": limit}
    for f in where:
        params.update(f.params)
    if after is not None:
        params.update({
            f"after_{_key_name(key)}": value for key, value in zip(order_by, after, strict=True)
        })  # fmt: skip
    return await fetch_all(conn, statement, params)
