"""SessionService: booked sessions, standalone or within a project of the same client."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING

from db.references import (
    client_exists,
    lock_project_client,
    project_of_client,
    project_of_client_in_place,
    session_filters,
)
from db.tables import sessions
from server import standard_methods
from server.errors import FailedPrecondition
from server.resource_mapping import Field, Kind, ResourceMapping
from server.router import Router
from studio.v1 import session_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Collection

    from db.crud import Guard
    from server.context import Ctx

__all__ = ["SESSION", "router"]

router = Router(pb, "SessionService")
SESSION = ResourceMapping(
    pb.Session,
    sessions,
    (
        Field("client_id", Kind.ID),
        Field("room_id", Kind.ID),
        Field("project_id", Kind.ID),
        Field("title", Kind.TEXT),
        Field("description", Kind.TEXT),
        Field("start_time", Kind.TIMESTAMP),
        Field("end_time", Kind.TIMESTAMP),
        Field("status", Kind.ENUM),
        Field("total_amount", Kind.DECIMAL),
        Field("deposit_amount", Kind.DECIMAL),
        Field("deposit_paid", Kind.BOOL),
        Field("payment_status", Kind.ENUM),
        Field("notes", Kind.TEXT),
    ),
    # No times: the rules across them (end after start, within 31 days) say nothing when one
    # is unset, and an update writing one end is checked against the stored other end by the
    # database (sessions_time_range_check, sessions_duration_check). No time could stand in:
    # with the 31-day rule, any start refuses some valid end. Unset, they are only REQUIRED,
    # which an update that does not write them drops.
    example=pb.Session(client_id=1, room_id=1, title="-"),
)


async def _check_project(ctx: Ctx, session: pb.Session) -> None:
    """A linked project must exist and belong to the session's client (locked until commit).

    The client and the room are checked by their foreign keys (CLIENT_NOT_FOUND,
    ROOM_NOT_FOUND); a missing client is reported as such, not as a mismatch.
    """
    if not session.HasField("project_id"):
        return
    owner = await lock_project_client(ctx.db, session.project_id)
    metadata = {"projectId": str(session.project_id), "clientId": str(session.client_id)}
    if owner is None:
        raise FailedPrecondition(
            "PROJECT_NOT_FOUND", f"project {session.project_id} does not exist", metadata=metadata
        )
    if owner != session.client_id:
        if not await client_exists(ctx.db, session.client_id):
            raise FailedPrecondition(
                "CLIENT_NOT_FOUND", f"client {session.client_id} does not exist", metadata=metadata
            )
        raise FailedPrecondition(
            "PROJECT_CLIENT_MISMATCH",
            f"project {session.project_id} belongs to another client than {session.client_id}",
            metadata={**metadata, "projectClientId": str(owner)},
        )


def _project_guard(session: pb.Session, written: Collection[str]) -> Guard | None:
    """When a write links a project or moves a linked session to another client: the project
    must exist and belong to the session's client."""
    if session.HasField("project_id") and ("project_id" in written or "client_id" in written):
        return project_of_client(session.project_id, session.client_id)
    return None


def _project_guard_in_place(patch: pb.Session, written: Collection[str]) -> Guard | None:
    """The same, for an UPDATE that reads the fields it leaves alone from the stored row."""
    links = "project_id" in written and patch.HasField("project_id")
    moves = "client_id" in written
    if not links and (not moves or "project_id" in written):  # nothing to check, or unlinks
        return None
    return project_of_client_in_place(
        patch.project_id if links else None, patch.client_id if moves else None
    )


# Checked in the session's INSERT or UPDATE itself; when refused, _check_project says why.
PROJECT_OF_CLIENT = standard_methods.Guarded(
    _project_guard, _check_project, in_place=_project_guard_in_place
)


@router.procedure("GetSession")
async def get_session(ctx: Ctx, request: pb.GetSessionRequest) -> pb.GetSessionResponse:
    return pb.GetSessionResponse(
        session=await standard_methods.get(ctx, SESSION, "session", request.id)
    )


@router.procedure("ListSessions")
async def list_sessions(ctx: Ctx, request: pb.ListSessionsRequest) -> pb.ListSessionsResponse:
    where = session_filters(
        project_id=request.project_id if request.HasField("project_id") else None,
        client_id=request.client_id if request.HasField("client_id") else None,
        room_id=request.room_id if request.HasField("room_id") else None,
        start_from=request.start_time_from.ToDatetime(tzinfo=UTC)
        if request.HasField("start_time_from")
        else None,
        start_before=request.start_time_before.ToDatetime(tzinfo=UTC)
        if request.HasField("start_time_before")
        else None,
        without_project=request.without_project,
    )
    refers_to = {
        kind: value
        for kind, value, given in (
            ("project", request.project_id, request.HasField("project_id")),
            ("client", request.client_id, request.HasField("client_id")),
            ("room", request.room_id, request.HasField("room_id")),
        )
        if given
    }
    items, next_token = await standard_methods.list_page(
        ctx, SESSION, request, where=where, time_column="start_time", refers_to=refers_to
    )
    return pb.ListSessionsResponse(sessions=items, next_page_token=next_token)


@router.procedure("CreateSession", single_statement=True)
async def create_session(ctx: Ctx, request: pb.CreateSessionRequest) -> pb.CreateSessionResponse:
    """One statement books the session, with the project locked and checked in it (the hot
    path is one round trip)."""
    session = await standard_methods.create(
        ctx, SESSION, request.session, request.request_id, guarded=PROJECT_OF_CLIENT
    )
    return pb.CreateSessionResponse(session=session)


@router.procedure("UpdateSession", single_statement=True)
async def update_session(ctx: Ctx, request: pb.UpdateSessionRequest) -> pb.UpdateSessionResponse:
    """Link, move or unlink (`update_mask: ["project_id"]` with no value) a session, in one
    statement: the etag and the project check are part of the UPDATE."""
    mask = request.update_mask if request.HasField("update_mask") else None
    session = await standard_methods.update_at_once(
        ctx, SESSION, "session", request.session, mask, guarded=PROJECT_OF_CLIENT
    )
    return pb.UpdateSessionResponse(session=session)


@router.procedure("DeleteSession")
async def delete_session(ctx: Ctx, request: pb.DeleteSessionRequest) -> pb.DeleteSessionResponse:
    await standard_methods.delete(ctx, SESSION, "session", request.id, request.etag)
    return pb.DeleteSessionResponse()
