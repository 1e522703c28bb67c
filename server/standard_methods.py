"""The standard methods (AIP-131..135) written once; routers call them with their mapping:
`standard_methods.get(ctx, SESSION, "session", request.id)`.

Each runs inside the call's transaction (ctx.db), so its checks and its write are atomic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import psycopg
from google.protobuf.message import Message
from psycopg.pq import TransactionStatus

from db.crud import (
    delete_row,
    fetch_by_request_id,
    fetch_row,
    insert_row,
    list_rows,
    update_row,
)
from db.references import missing_references
from server.errors import Aborted, FailedPrecondition, NotFound, id_key
from server.paging import decode_token, encode_token, page_size, token_time
from server.resource_mapping import version_of_etag
from server.validation import validate_resource, validate_written

if TYPE_CHECKING:
    from collections.abc import Sequence

    from google.protobuf.field_mask_pb2 import FieldMask
    from sqlalchemy import Label

    from db.crud import Filter, Guard, SortKey
    from db.sql import Row
    from server.context import Ctx
    from server.resource_mapping import ResourceMapping

__all__ = [
    "Guarded",
    "check_etag",
    "create",
    "delete",
    "get",
    "list_page",
    "missing_reference",
    "not_found",
    "require_references",
    "update",
    "update_at_once",
]

M = TypeVar("M", bound=Message)


GUARDED_ATTEMPTS = 2  # a refused write runs once more after its explanation found it valid


@dataclass(frozen=True)
class Guarded(Generic[M]):
    """A reference check that a create or update makes in its own statement (one round trip
    checks and writes), and what to say when it refuses."""

    # (the resource as it would be stored, the fields written) -> the guard, or None when
    # this write needs no check
    condition: Callable[[M, Collection[str]], Guard | None]
    # raises why the resource was refused (it may read and lock what it needs)
    explain: Callable[[Ctx, M], Awaitable[None]]
    # for update_at_once: (the patch, the fields written) -> the guard, which reads what the
    # update leaves alone from the stored row itself; None when this write needs no check
    in_place: Callable[[M, Collection[str]], Guard | None] | None = None


async def _guarded_write(
    ctx: Ctx,
    guarded: Guarded[M] | None,
    resource: M,
    written: Collection[str],
    write: Callable[[Guard | None], Awaitable[Row | None]],
) -> Row:
    """`write` with its guard. When the guard refuses, its explanation says why; when the
    explanation finds nothing wrong, a concurrent change made the resource valid after the
    guard read it: the explanation has locked what it read, so the write runs again, and
    if it is refused once more the caller gets ABORTED (never a failed assertion)."""
    guard = guarded.condition(resource, written) if guarded else None
    for _attempt in range(GUARDED_ATTEMPTS):
        row = await write(guard)
        if row is not None:
            return row
        if guarded is None:
            break
        await guarded.explain(ctx, resource)
    raise Aborted("CONCURRENT_MODIFICATION", "a concurrent change got in the way; retry")


E = TypeVar("E", NotFound, FailedPrecondition)


def _no_such(error: type[E], kind: str, resource_id: int) -> E:
    """<KIND>_NOT_FOUND ("task_type": TASK_TYPE_NOT_FOUND, "task type 3 does not exist",
    taskTypeId), as `error`."""
    return error(
        f"{kind.upper()}_NOT_FOUND",
        f"{kind.replace('_', ' ')} {resource_id} does not exist",
        metadata={id_key(kind): str(resource_id)},
    )


def not_found(kind: str, resource_id: int) -> NotFound:
    """NOT_FOUND for the resource the call is about, e.g. SESSION_NOT_FOUND."""
    return _no_such(NotFound, kind, resource_id)


def missing_reference(kind: str, resource_id: int) -> FailedPrecondition:
    """FAILED_PRECONDITION for a resource the request refers to, e.g. PROJECT_NOT_FOUND."""
    return _no_such(FailedPrecondition, kind, resource_id)


async def require_references(ctx: Ctx, ids: Mapping[str, int]) -> None:
    """Refuse (FAILED_PRECONDITION) if any of the rows named by kind does not exist."""
    missing = await missing_references(ctx.db, dict(ids))
    if missing:
        raise missing_reference(missing[0], ids[missing[0]])


def check_etag(etag: str, row: Row, field: str) -> None:
    if etag and version_of_etag(etag, field) != row["version"]:
        raise Aborted(
            "ETAG_MISMATCH",
            "the resource changed since it was read; read it again and retry",
            metadata={"currentEtag": f'"{row["version"]}"'},
        )


async def get(ctx: Ctx, mapping: ResourceMapping[M], kind: str, resource_id: int) -> M:
    row = await fetch_row(ctx.db, mapping.table, resource_id)
    if row is None:
        raise not_found(kind, resource_id)
    return mapping.to_message(row)


async def create(
    ctx: Ctx,
    mapping: ResourceMapping[M],
    resource: M,
    request_id: str,
    *,
    guarded: Guarded[M] | None = None,
) -> M:
    """Insert `resource` in one statement; a retried request id returns the first result and
    creates nothing."""
    values = mapping.insert_values(resource)

    async def insert(guard: Guard | None) -> Row | None:
        return await insert_row(
            ctx.db, mapping.table, values, request_id=request_id or None, guard=guard
        )

    try:
        row = await _guarded_write(ctx, guarded, resource, mapping.fields, insert)
    except psycopg.errors.IntegrityError:
        # A retry racing its twin can meet the twin's row in another constraint (the room
        # it booked) before the request id's: then the twin's row is the answer.
        if not request_id or ctx.db.info.transaction_status is TransactionStatus.INERROR:
            raise
        twin = await fetch_by_request_id(ctx.db, mapping.table, request_id)
        if twin is None:
            raise
        row = twin
    return mapping.to_message(row)


async def update(
    ctx: Ctx,
    mapping: ResourceMapping[M],
    kind: str,
    patch: M,
    mask: FieldMask | None,
    *,
    check: Callable[[M, M, list[str]], Awaitable[None]] | None = None,
    guarded: Guarded[M] | None = None,
) -> M:
    """Write the masked fields of `patch`; the merged result must be a valid resource.

    `check(current, merged, paths)` verifies references before the write (it may lock what
    it reads); `guarded` checks them in the UPDATE itself.
    """
    resource_id: int = getattr(patch, "id")  # noqa: B009 (every resource has an id)
    paths = mapping.mask_paths(patch, mask)
    current_row = await fetch_row(ctx.db, mapping.table, resource_id, lock="update")
    if current_row is None:
        raise not_found(kind, resource_id)
    check_etag(getattr(patch, "etag"), current_row, f"{kind}.etag")  # noqa: B009
    current = mapping.to_message(current_row)
    merged = mapping.merged(current, patch, paths)
    validate_resource(merged, kind)
    if check is not None:
        await check(current, merged, paths)
    values = mapping.update_values(patch, paths)

    async def write(guard: Guard | None) -> Row | None:
        # the row is locked (above): only the guard refuses
        return await update_row(ctx.db, mapping.table, resource_id, values, guard=guard)

    row = await _guarded_write(ctx, guarded, merged, paths, write)
    return mapping.to_message(row)


async def update_at_once(
    ctx: Ctx,
    mapping: ResourceMapping[M],
    kind: str,
    patch: M,
    mask: FieldMask | None,
    *,
    guarded: Guarded[M] | None = None,
    also: Mapping[str, object] | None = None,
) -> M:
    """`update` in one statement, for a procedure declared single_statement: an UPDATE ...
    RETURNING whose WHERE holds the etag and the guard (which reads the stored row), with no
    read before it and no transaction around it. The fields written are validated here;
    rules across fields are CHECK constraints (a violation is the rule's field violation).
    When nothing is written, reading the row says why: not found, a stale etag, or the
    guard's explanation (then the update runs once more, as in _guarded_write). `also`:
    columns every such update writes besides the fields (a flag, say)."""
    resource_id: int = getattr(patch, "id")  # noqa: B009 (every resource has an id)
    etag: str = getattr(patch, "etag")  # noqa: B009
    paths = mapping.mask_paths(patch, mask)
    validate_written(mapping.merged(mapping.example, patch, paths), kind, paths)
    values = mapping.update_values(patch, paths) | dict(also or {})
    version = version_of_etag(etag, f"{kind}.etag") if etag else None
    guard = guarded.in_place(patch, paths) if guarded and guarded.in_place else None
    for _attempt in range(GUARDED_ATTEMPTS):
        row = await update_row(
            ctx.db, mapping.table, resource_id, values, guard=guard, version=version
        )
        if row is not None:
            return mapping.to_message(row)
        current = await fetch_row(ctx.db, mapping.table, resource_id)
        if current is None:
            raise not_found(kind, resource_id)
        check_etag(etag, current, f"{kind}.etag")
        if guarded is not None:
            await guarded.explain(ctx, mapping.merged(mapping.to_message(current), patch, paths))
        # nothing wrong now: what refused the write changed meanwhile, so it runs again
    raise Aborted("CONCURRENT_MODIFICATION", "a concurrent change got in the way; retry")


async def delete(
    ctx: Ctx, mapping: ResourceMapping[M], kind: str, resource_id: int, etag: str
) -> None:
    version = version_of_etag(etag, "etag") if etag else None
    if await delete_row(ctx.db, mapping.table, resource_id, version=version):
        return
    row = await fetch_row(ctx.db, mapping.table, resource_id)
    if row is None:
        raise not_found(kind, resource_id)
    check_etag(etag, row, "etag")


async def list_page(
    ctx: Ctx,
    mapping: ResourceMapping[M],
    request: Message,
    *,
    where: Sequence[Filter] = (),
    time_column: str | None = None,
    number_key: Label[int] | None = None,
    refers_to: Mapping[str, int] | None = None,
) -> tuple[list[M], str]:
    """A page in (time_column, id) order, (number_key, id) order (an integer expression), or
    id order; and the next page's token.

    `refers_to` names the rows the filters refer to ({"project": 4}): when the page is empty,
    one that does not exist is FAILED_PRECONDITION (PROJECT_NOT_FOUND), not an empty list
    (a page with rows costs no check)."""
    token = decode_token(request)
    key: SortKey | None = time_column or number_key
    order_by: list[SortKey] = [key, "id"] if key is not None else ["id"]
    after: list[object] | None = None
    if token is not None:
        first = token_time(token) if time_column else token.last_number
        after = [first, token.last_id] if key is not None else [token.last_id]
    size = page_size(getattr(request, "page_size"))  # noqa: B009
    rows = await list_rows(
        ctx.db, mapping.table, where=where, order_by=order_by, after=after, limit=size + 1
    )
    if not rows and refers_to:
        await require_references(ctx, refers_to)
    items = [mapping.to_message(r) for r in rows[:size]]
    if len(rows) <= size:
        return items, ""
    last = rows[size - 1]
    return items, encode_token(
        request,
        last["id"],
        last[time_column] if time_column else None,
        last[number_key.name] if number_key is not None else None,
    )
