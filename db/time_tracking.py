"""Time entries and task types: the statements TimeEntryService and TaskTypeService run.

An entry takes its rate and category from its task type in the INSERT itself (a snapshot: a
later change of the task type changes no entry), only while the task type is active; at most
one timer runs per context (a partial unique index, time_entries_running_timer_idx), so of
timers started at once exactly one is inserted. When an INSERT writes nothing, one more
statement says why. Statements are built once per shape and compiled once (db/sql.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Label,
    ScalarSelect,
    Select,
    Table,
    Text,
    Uuid,
    any_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    null,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert

from db.crud import Filter
from db.sql import Sql, compiled, fetch_all, fetch_one
from db.tables import projects, sessions, task_types, time_entries, tracks

if TYPE_CHECKING:
    from db.sql import Connection, Row

__all__ = [
    "CONTEXTS",
    "Context",
    "EntryFilters",
    "Refusal",
    "active_timer",
    "explain_refused_entry",
    "list_entries",
    "log_entry",
    "matching_entries",
    "task_type_filters",
    "task_type_order",
    "totals_of",
]

Context = Literal["session", "project", "track"]
CONTEXTS: tuple[Context, ...] = ("session", "project", "track")
_CONTEXT_TABLES = {"session": sessions, "project": projects, "track": tracks}

# -- task types ------------------------------------------------------------------------------

# Active ones first, then by sort_order, then id: one integer key, the active flag above the
# 32 bits of sort_order (shifted to be non-negative).
_TASK_TYPE_ORDER: Label[int] = (
    cast(case((task_types.c.is_active, 0), else_=1), BigInteger) * literal(2**32, BigInteger)
    + cast(task_types.c.sort_order, BigInteger)
    + literal(2**31, BigInteger)
).label("number_key")
_ACTIVE = Filter(task_types.c.is_active.is_(True), {})


def task_type_order() -> Label[int]:
    return _TASK_TYPE_ORDER


def task_type_filters(*, include_inactive: bool) -> list[Filter]:
    return [] if include_inactive else [_ACTIVE]


# -- logging time ----------------------------------------------------------------------------

_LOGGED_COLUMNS = [
    "task_type_id", "session_id", "project_id", "track_id", "start_time", "end_time",
    "hourly_rate_snapshot", "billable", "notes", "manually_adjusted", "create_request_id",
]  # fmt: skip


@cache
def _log_statement(timer: bool) -> Sql:
    """INSERT ... SELECT from the task type, while it is active: a timer starts now(), an
    entry made by hand has its own times. Any conflict (the request id, a running timer of
    the context) inserts nothing."""
    start: ColumnElement[Any] = (
        func.now() if timer else bindparam("start_time", type_=DateTime(timezone=True))
    )
    end: ColumnElement[Any] = (
        null() if timer else bindparam("end_time", type_=DateTime(timezone=True))
    )
    row = select(
        task_types.c.id,
        bindparam("session_id", type_=BigInteger),
        bindparam("project_id", type_=BigInteger),
        bindparam("track_id", type_=BigInteger),
        start,
        end,
        task_types.c.hourly_rate,
        task_types.c.category == "billable",
        bindparam("notes", type_=Text),
        literal(not timer, Boolean),
        bindparam("create_request_id", type_=Uuid),
    ).where(task_types.c.id == bindparam("task_type_id"), task_types.c.is_active)
    statement = insert(time_entries).from_select(_LOGGED_COLUMNS, row).on_conflict_do_nothing()
    return compiled(statement.returning(time_entries))


async def log_entry(
    conn: Connection,
    *,
    task_type_id: int,
    context: Context,
    context_id: int,
    notes: str | None,
    request_id: str | None,
    times: tuple[datetime, datetime] | None = None,
) -> Row | None:
    """Start a timer (no `times`) or log an entry made by hand; None if nothing was written
    (explain_refused_entry says why)."""
    params: dict[str, Any] = {f"{c}_id": context_id if c == context else None for c in CONTEXTS}
    params |= {"task_type_id": task_type_id, "notes": notes, "create_request_id": request_id}
    if times is not None:
        params |= {"start_time": times[0], "end_time": times[1]}
    return await fetch_one(conn, _log_statement(times is None), params)


@dataclass(frozen=True)
class Refusal:
    """Why a log_entry wrote nothing: its request id's entry (a retry), the task type's
    state (None: there is none), the timer running for the context."""

    twin: int | None
    task_type_active: bool | None
    running: int | None


@cache
def _explain_statement(context: Context) -> Sql:
    running = (
        select(time_entries.c.id)
        .where(time_entries.c.end_time.is_(None), _context_column(context) == bindparam("ctx"))
        .limit(1)
        .scalar_subquery()
    )
    return compiled(
        select(
            select(time_entries.c.id)
            .where(time_entries.c.create_request_id == bindparam("request_id", type_=Uuid))
            .scalar_subquery()
            .label("twin"),
            select(task_types.c.is_active)
            .where(task_types.c.id == bindparam("task_type_id"))
            .scalar_subquery()
            .label("task_type_active"),
            running.label("running"),
        )
    )


async def explain_refused_entry(
    conn: Connection, *, task_type_id: int, context: Context, context_id: int, request_id: str
) -> Refusal:
    params = {"task_type_id": task_type_id, "ctx": context_id, "request_id": request_id or None}
    row = await fetch_one(conn, _explain_statement(context), params)
    assert row is not None
    return Refusal(row["twin"], row["task_type_active"], row["running"])


def _context_column(context: Context) -> ColumnElement[int]:
    return time_entries.c[f"{context}_id"]


@cache
def _active_statement(context: Context) -> Sql:
    return compiled(
        select(time_entries)
        .where(time_entries.c.end_time.is_(None), _context_column(context) == bindparam("ctx"))
        .limit(1)
    )


async def active_timer(conn: Connection, context: Context, context_id: int) -> Row | None:
    return await fetch_one(conn, _active_statement(context), {"ctx": context_id})


# -- listing, with totals ---------------------------------------------------------------------


@dataclass(frozen=True)
class EntryFilters:
    """ListTimeEntries' filters. With `whole_project`, a project's entries include those of
    its sessions and tracks (each entry has one parent: none is counted twice)."""

    context: Context
    context_id: int
    whole_project: bool = False
    task_type_id: int | None = None
    start_from: datetime | None = None
    start_before: datetime | None = None

    @property
    def shape(self) -> tuple[Context, bool, bool, bool, bool]:
        return (
            self.context,
            self.whole_project,
            self.task_type_id is not None,
            self.start_from is not None,
            self.start_before is not None,
        )

    def params(self) -> dict[str, Any]:
        return {
            "ctx": self.context_id,
            "f_task_type_id": self.task_type_id,
            "f_start_from": self.start_from,
            "f_start_before": self.start_before,
        }


def matching_entries(
    shape: tuple[Context, bool, bool, bool, bool], columns: tuple[str, ...] | None = None
) -> Select[Any]:
    """The entries the filters match (all their columns, or `columns`): a UNION ALL of one
    indexed branch per parent. A project's sessions and tracks are found first, as an array,
    so that their entries are one scan of the entries' index for many keys (not one index
    probe per session in a nested loop: 1,000 sessions cost 6 ms that way, 2 ms this way)."""
    context, whole_project, by_task_type, since, until = shape
    extra: list[ColumnElement[bool]] = []
    if by_task_type:
        extra.append(time_entries.c.task_type_id == bindparam("f_task_type_id"))
    if since:
        extra.append(
            time_entries.c.start_time >= bindparam("f_start_from", type_=DateTime(timezone=True))
        )
    if until:
        extra.append(
            time_entries.c.start_time < bindparam("f_start_before", type_=DateTime(timezone=True))
        )
    selected = [time_entries.c[c] for c in columns] if columns else list(time_entries.c)
    own = select(*selected).where(_context_column(context) == bindparam("ctx"), *extra)
    if not whole_project:
        return own
    of_sessions = select(*selected).where(
        time_entries.c.session_id == any_(func.array(_ids_of_project(sessions))), *extra
    )
    of_tracks = select(*selected).where(
        time_entries.c.track_id == any_(func.array(_ids_of_project(tracks))), *extra
    )
    return union_all(own, of_sessions, of_tracks)  # type: ignore[return-value]


def _ids_of_project(table: Table) -> ScalarSelect[int]:
    return select(table.c.id).where(table.c.project_id == bindparam("ctx")).scalar_subquery()


def totals_of(matching: Any) -> list[Label[Any]]:  # noqa: ANN401 (a subquery or CTE of entries)
    """The TimeTotals of a set of entries (stopped ones count in minutes and amount), as
    total_entry_count, total_minutes, total_billable_amount, total_running_timers."""
    return [
        func.count().label("total_entry_count"),
        func.coalesce(func.sum(matching.c.duration_minutes), 0).label("total_minutes"),
        func.coalesce(func.sum(matching.c.billable_amount), 0).label("total_billable_amount"),
        func.count().filter(matching.c.end_time.is_(None)).label("total_running_timers"),
    ]


@lru_cache(maxsize=128)  # a shape per combination of filters
def _list_statement(shape: tuple[Context, bool, bool, bool, bool], paged: bool) -> Sql:
    """One round trip: a page in (start_time, id) order, beside the totals of every entry
    matched and whether the context exists, on each row (on one row of NULLs when the page is
    empty)."""
    context = shape[0]
    matching = matching_entries(shape).cte("matching")
    totals = select(
        *totals_of(matching),
        exists().where(_CONTEXT_TABLES[context].c.id == bindparam("ctx")).label("context_exists"),
    ).subquery("totals")
    page = select(matching).order_by(matching.c.start_time, matching.c.id)
    if paged:
        after = tuple_(
            bindparam("after_start_time", type_=DateTime(timezone=True)), bindparam("after_id")
        )
        page = page.where(tuple_(matching.c.start_time, matching.c.id) > after)
    lateral = page.limit(bindparam("limit")).lateral("page")
    query = select(totals, lateral).select_from(totals.outerjoin(lateral, true()))
    return compiled(query)


async def list_entries(
    conn: Connection,
    filters: EntryFilters,
    *,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[Row]:
    """Rows of the page, each with the totals (totals_of) and context_exists; one row whose
    id is None when the page is empty."""
    params = filters.params() | {"limit": limit}
    if after is not None:
        params |= {"after_start_time": after[0], "after_id": after[1]}
    return await fetch_all(conn, _list_statement(filters.shape, after is not None), params)
