"""Reads that check references between tenant rows, taking the locks that keep them true
until the transaction ends. Statements are built once, with bind parameters (see db/crud.py)."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Label,
    Select,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
)

from db.crud import Filter, Guard
from db.sql import Sql, compiled, fetch_all, fetch_one, fetch_value
from db.tables import clients, projects, sessions, tenant_metadata, time_entries, tracks

if TYPE_CHECKING:
    from db.sql import Connection

__all__ = [
    "client_exists",
    "delete_project_tracks",
    "lock_project_client",
    "missing_references",
    "project_has_sessions",
    "project_of_client",
    "project_of_client_in_place",
    "projects_of_client",
    "session_filters",
    "track_filters",
    "track_has_time_entries",
    "track_order",
]


_PROJECT_CLIENT_FOR_SHARE = (
    select(projects.c.client_id)
    .where(projects.c.id == bindparam("g_project_id"))
    .with_for_update(read=True)
)
_LOCK_PROJECT_CLIENT = compiled(_PROJECT_CLIENT_FOR_SHARE)
_CLIENT_EXISTS = compiled(select(exists().where(clients.c.id == bindparam("client_id"))))
_PROJECT_HAS_SESSIONS = compiled(
    select(exists().where(sessions.c.project_id == bindparam("project_id")))
)
_DELETE_PROJECT_TRACKS = compiled(
    delete(tracks).where(tracks.c.project_id == bindparam("project_id")).returning(tracks.c.id)
)
_OWNER_FOR_SHARE = _PROJECT_CLIENT_FOR_SHARE.cte("project_owner")
_PROJECT_OF_CLIENT = exists().where(_OWNER_FOR_SHARE.c.client_id == bindparam("g_client_id"))


def _owned(project_id: ColumnElement[int], client_id: ColumnElement[int]) -> ColumnElement[bool]:
    """The project exists and belongs to the client, locked FOR SHARE until the statement's
    transaction ends."""
    owner: Select[Any] = select(literal_column("1")).where(
        projects.c.id == project_id, projects.c.client_id == client_id
    )
    return exists(owner.with_for_update(read=True))


# For an UPDATE of a session that reads what it leaves alone from the row it updates.
_LINKS_IN_PLACE = _owned(bindparam("g_project_id"), sessions.c.client_id)
_MOVES_IN_PLACE = or_(
    sessions.c.project_id.is_(None), _owned(sessions.c.project_id, bindparam("g_client_id"))
)
_LINKS_AND_MOVES_IN_PLACE = _owned(bindparam("g_project_id"), bindparam("g_client_id"))


def project_of_client_in_place(project_id: int | None, client_id: int | None) -> Guard:
    """For a session's UPDATE that writes `project_id` (linking it), `client_id` (moving it),
    or both (None: left alone, so read from the stored row): its project, if it has one,
    exists and belongs to its client, checked and locked by the UPDATE itself."""
    if client_id is None:
        assert project_id is not None
        return Guard(_LINKS_IN_PLACE, {"g_project_id": project_id})
    if project_id is None:
        return Guard(_MOVES_IN_PLACE, {"g_client_id": client_id})
    return Guard(_LINKS_AND_MOVES_IN_PLACE, {"g_project_id": project_id, "g_client_id": client_id})


def project_of_client(project_id: int, client_id: int) -> Guard:
    """For a session's INSERT or UPDATE: the project exists and belongs to the client,
    checked in that statement itself, with the project locked FOR SHARE until the
    transaction ends (what lock_project_client does in a statement of its own)."""
    return Guard(_PROJECT_OF_CLIENT, {"g_project_id": project_id, "g_client_id": client_id})


async def lock_project_client(conn: Connection, project_id: int) -> int | None:
    """The project's client, or None if there is no such project.

    FOR SHARE: until we commit, nobody can delete the project or give it to another client,
    so a session linked to it cannot end up under the wrong client.
    """
    client_id: int | None = await fetch_value(
        conn, _LOCK_PROJECT_CLIENT, {"g_project_id": project_id}
    )
    return client_id


_TABLE_OF_KIND = {table.info["kind"]: table for table in tenant_metadata.tables.values()}


@cache
def _exist_statement(kinds: tuple[str, ...]) -> Sql:
    return compiled(
        select(
            *(
                exists().where(_TABLE_OF_KIND[kind].c.id == bindparam(f"e_{kind}")).label(kind)
                for kind in kinds
            )
        )
    )


async def missing_references(conn: Connection, ids: dict[str, int]) -> list[str]:
    """Of the rows named by kind ({"project": 4, "room": 2}), those that do not exist, in one
    statement."""
    kinds = tuple(ids)
    row = await fetch_one(conn, _exist_statement(kinds), {f"e_{k}": v for k, v in ids.items()})
    assert row is not None
    return [kind for kind in kinds if not row[kind]]


async def client_exists(conn: Connection, client_id: int) -> bool:
    return bool(await fetch_value(conn, _CLIENT_EXISTS, {"client_id": client_id}))


async def project_has_sessions(conn: Connection, project_id: int) -> bool:
    return bool(await fetch_value(conn, _PROJECT_HAS_SESSIONS, {"project_id": project_id}))


async def delete_project_tracks(conn: Connection, project_id: int) -> int:
    return len(await fetch_all(conn, _DELETE_PROJECT_TRACKS, {"project_id": project_id}))


# ListSessions' filters, each served by an index; built once, with bind parameters.
_BY_PROJECT = sessions.c.project_id == bindparam("f_project_id")
_WITHOUT_PROJECT = sessions.c.project_id.is_(None)
_BY_CLIENT = sessions.c.client_id == bindparam("f_client_id")
_BY_ROOM = sessions.c.room_id == bindparam("f_room_id")
_STARTING_FROM = sessions.c.start_time >= bindparam("f_start_from")
_STARTING_BEFORE = sessions.c.start_time < bindparam("f_start_before")
_PROJECTS_OF_CLIENT = projects.c.client_id == bindparam("f_client_id")


def session_filters(
    *,
    project_id: int | None,
    client_id: int | None,
    room_id: int | None,
    start_from: datetime | None,
    start_before: datetime | None,
    without_project: bool,
) -> list[Filter]:
    """ListSessions' filters (combined with AND)."""
    where: list[Filter] = []
    if project_id is not None:
        where.append(Filter(_BY_PROJECT, {"f_project_id": project_id}))
    if without_project:
        where.append(Filter(_WITHOUT_PROJECT, {}))
    if client_id is not None:
        where.append(Filter(_BY_CLIENT, {"f_client_id": client_id}))
    if room_id is not None:
        where.append(Filter(_BY_ROOM, {"f_room_id": room_id}))
    if start_from is not None:
        where.append(Filter(_STARTING_FROM, {"f_start_from": start_from}))
    if start_before is not None:
        where.append(Filter(_STARTING_BEFORE, {"f_start_before": start_before}))
    return where


def projects_of_client(client_id: int) -> Filter:
    """ListProjects' filter by client."""
    return Filter(_PROJECTS_OF_CLIENT, {"f_client_id": client_id})


_TRACK_HAS_TIME_ENTRIES = compiled(
    select(exists().where(time_entries.c.track_id == bindparam("track_id")))
)


async def track_has_time_entries(conn: Connection, track_id: int) -> bool:
    return bool(await fetch_value(conn, _TRACK_HAS_TIME_ENTRIES, {"track_id": track_id}))


# ListTracks: a project's tracks by number, the unnumbered ones last (numbers are positive
# int32s, so the largest one sorts after all of them), then by id.
_TRACK_ORDER: Label[int] = func.coalesce(tracks.c.track_number, 2**31 - 1).label("number_key")
_TRACKS_OF_PROJECT = tracks.c.project_id == bindparam("f_project_id")
_TRACKS_IN_STATUS = tracks.c.status == bindparam("f_status")


def track_order() -> Label[int]:
    return _TRACK_ORDER


def track_filters(*, project_id: int, status: str | None) -> list[Filter]:
    where = [Filter(_TRACKS_OF_PROJECT, {"f_project_id": project_id})]
    if status is not None:
        where.append(Filter(_TRACKS_IN_STATUS, {"f_status": status}))
    return where
