"""What a project link is for: rollups of a project's sessions, tracks and time, each in one
statement (GetProjectSummary, ClientService.ListClientProjects).

A project's time is the entries logged against the project, its sessions and its tracks: a
UNION ALL with one indexed branch per parent (db/time_tracking.py), each entry counted once
(it has one parent). Built once and compiled once (db/sql.py).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    and_,
    any_,
    bindparam,
    func,
    literal,
    select,
    true,
    union_all,
)

from db.sql import Sql, compiled, fetch_all, fetch_one
from db.tables import NOT_HOLDING_THE_ROOM, TOTALED, projects, sessions, time_entries, tracks
from db.time_tracking import EntryFilters, matching_entries, totals_of

if TYPE_CHECKING:
    from db.sql import Connection, Row

__all__ = ["client_projects", "project_summary"]

_SECONDS = func.extract("epoch", sessions.c.end_time - sessions.c.start_time)
# (literals, not an expanding IN: the statement is compiled once)
_HOLDS_ROOM = and_(*(sessions.c.status != literal(status) for status in NOT_HOLDING_THE_ROOM))


@cache
def _summary_statement() -> Sql:
    """One row: the project (id, budget), its sessions by status (parallel arrays), its
    tracks by status, and the totals of its time; no row when there is no such project."""
    project_id = bindparam("project_id", type_=BigInteger)
    by_status = (
        select(
            sessions.c.status,
            func.count().label("n"),
            func.sum(_SECONDS).label("seconds"),
            func.sum(sessions.c.total_amount).label("total"),
            func.sum(sessions.c.deposit_amount).filter(sessions.c.deposit_paid).label("paid"),
            func.sum(sessions.c.deposit_amount).filter(~sessions.c.deposit_paid).label("due"),
        )
        .where(sessions.c.project_id == project_id)
        .group_by(sessions.c.status)
        .subquery("by_status")
    )
    session_rollup = select(
        *(
            func.array_agg(by_status.c[name]).label(f"session_{name}")
            for name in ("status", "n", "seconds", "total", "paid", "due")
        )
    ).subquery("session_rollup")
    tracks_by_status = (
        select(tracks.c.status, func.count().label("n"))
        .where(tracks.c.project_id == project_id)
        .group_by(tracks.c.status)
        .subquery("tracks_by_status")
    )
    track_rollup = select(
        func.array_agg(tracks_by_status.c.status).label("track_status"),
        func.array_agg(tracks_by_status.c.n).label("track_n"),
    ).subquery("track_rollup")
    # the entries of the project, its sessions and its tracks (its id as the "ctx" parameter)
    shape = EntryFilters("project", 0, whole_project=True).shape
    entries = matching_entries(shape, tuple(TOTALED)).subquery("entries")
    time_rollup = select(*totals_of(entries)).subquery("time_rollup")
    query = (
        select(projects.c.id, projects.c.budget, session_rollup, track_rollup, time_rollup)
        .select_from(
            projects.join(session_rollup, true())
            .join(track_rollup, true())
            .join(time_rollup, true())
        )
        .where(projects.c.id == project_id)
    )
    return compiled(query)


async def project_summary(conn: Connection, project_id: int) -> Row | None:
    """Columns: id, budget; session_status, session_n, session_seconds, session_total,
    session_paid, session_due (one item per status present); track_status, track_n; and the
    time totals (db/time_tracking.totals_of). Arrays are None when there is nothing."""
    return await fetch_one(
        conn, _summary_statement(), {"project_id": project_id, "ctx": project_id}
    )


def _entries_of_project(project_id: ColumnElement[int]) -> Select[Any]:
    """The entries of a project, its sessions and its tracks, for a project of the query
    around (correlated); as matching_entries finds them (its parents' ids as an array)."""
    columns = (time_entries.c.duration_minutes, time_entries.c.billable_amount)

    def ids(table: Table) -> Any:  # noqa: ANN401 (an ARRAY of the subquery)
        children = select(table.c.id).where(table.c.project_id == project_id)
        return func.array(children.correlate(projects).scalar_subquery())

    own = select(*columns).where(time_entries.c.project_id == project_id)
    of_sessions = select(*columns).where(time_entries.c.session_id == any_(ids(sessions)))
    of_tracks = select(*columns).where(time_entries.c.track_id == any_(ids(tracks)))
    return union_all(  # type: ignore[return-value]
        *(branch.correlate(projects) for branch in (own, of_sessions, of_tracks))
    )


@cache
def _client_projects_statement(paged: bool) -> Sql:
    """A page of a client's projects by id, each with its booked and tracked time."""
    booked = (
        select(
            func.count().label("session_count"),
            func.coalesce(func.sum(_SECONDS).filter(_HOLDS_ROOM), 0).label("booked_seconds"),
        )
        .where(sessions.c.project_id == projects.c.id)
        .correlate(projects)
        .lateral("booked")
    )
    entries = _entries_of_project(projects.c.id).subquery("entries")
    tracked = (
        select(
            func.coalesce(func.sum(entries.c.duration_minutes), 0).label("tracked_minutes"),
            func.coalesce(func.sum(entries.c.billable_amount), 0).label("tracked_amount"),
        )
        .correlate(projects)
        .lateral("tracked")
    )
    query = (
        select(projects, booked, tracked)
        .select_from(projects.join(booked, true()).join(tracked, true()))
        .where(projects.c.client_id == bindparam("client_id"))
        .order_by(projects.c.id)
        .limit(bindparam("limit"))
    )
    if paged:
        query = query.where(projects.c.id > bindparam("after_id"))
    return compiled(query)


async def client_projects(
    conn: Connection, client_id: int, *, after_id: int | None, limit: int
) -> list[Row]:
    """Project rows, each with session_count, booked_seconds, tracked_minutes and
    tracked_amount."""
    params: dict[str, Any] = {"client_id": client_id, "limit": limit}
    if after_id is not None:
        params["after_id"] = after_id
    return await fetch_all(conn, _client_projects_statement(after_id is not None), params)
