"""Reads that check references between tenant rows, taking the locks that keep them true
until the transaction ends. Statements are built once, with bind parameters (see db/crud.py)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, bindparam, delete, exists, select

from db.crud import Guard
from db.tables import clients, projects, sessions, tracks

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "client_exists",
    "delete_project_tracks",
    "lock_project_client",
    "project_has_sessions",
    "project_of_client",
    "session_filters",
]


_PROJECT_CLIENT_FOR_SHARE = (
    select(projects.c.client_id)
    .where(projects.c.id == bindparam("g_project_id"))
    .with_for_update(read=True)
)
_CLIENT_EXISTS = select(exists().where(clients.c.id == bindparam("client_id")))
_PROJECT_HAS_SESSIONS = select(exists().where(sessions.c.project_id == bindparam("project_id")))
_DELETE_PROJECT_TRACKS = delete(tracks).where(tracks.c.project_id == bindparam("project_id"))
_OWNER_FOR_SHARE = _PROJECT_CLIENT_FOR_SHARE.cte("project_owner")
_PROJECT_OF_CLIENT = exists().where(_OWNER_FOR_SHARE.c.client_id == bindparam("g_client_id"))


def project_of_client(project_id: int, client_id: int) -> Guard:
    """For a session's INSERT or UPDATE: the project exists and belongs to the client,
    checked in that statement itself, with the project locked FOR SHARE until the
    transaction ends (what lock_project_client does in a statement of its own)."""
    return Guard(_PROJECT_OF_CLIENT, {"g_project_id": project_id, "g_client_id": client_id})


async def lock_project_client(conn: AsyncConnection, project_id: int) -> int | None:
    """The project's client, or None if there is no such project.

    FOR SHARE: until we commit, nobody can delete the project or give it to another client,
    so a session linked to it cannot end up under the wrong client.
    """
    client_id: int | None = await conn.scalar(
        _PROJECT_CLIENT_FOR_SHARE, {"g_project_id": project_id}
    )
    return client_id


async def client_exists(conn: AsyncConnection, client_id: int) -> bool:
    return bool(await conn.scalar(_CLIENT_EXISTS, {"client_id": client_id}))


async def project_has_sessions(conn: AsyncConnection, project_id: int) -> bool:
    return bool(await conn.scalar(_PROJECT_HAS_SESSIONS, {"project_id": project_id}))


async def delete_project_tracks(conn: AsyncConnection, project_id: int) -> int:
    result = await conn.execute(_DELETE_PROJECT_TRACKS, {"project_id": project_id})
    return int(result.rowcount)


def session_filters(
    *,
    project_id: int | None,
    client_id: int | None,
    room_id: int | None,
    start_from: datetime | None,
    start_before: datetime | None,
    without_project: bool,
) -> list[ColumnElement[bool]]:
    """ListSessions' filters (combined with AND), each served by an index."""
    where: list[ColumnElement[bool]] = []
    if project_id is not None:
        where.append(sessions.c.project_id == project_id)
    if without_project:
        where.append(sessions.c.project_id.is_(None))
    if client_id is not None:
        where.append(sessions.c.client_id == client_id)
    if room_id is not None:
        where.append(sessions.c.room_id == room_id)
    if start_from is not None:
        where.append(sessions.c.start_time >= start_from)
    if start_before is not None:
        where.append(sessions.c.start_time < start_before)
    return where
