"""ProjectService: albums, EPs, singles... each of one client."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from db.references import delete_project_tracks, project_has_sessions, projects_of_client
from db.rollups import project_summary
from db.tables import NOT_HOLDING_THE_ROOM, projects
from server import standard_methods
from server.errors import FailedPrecondition
from server.quantities import hours_of, minutes_of, money
from server.resource_mapping import Field, Kind, ResourceMapping
from server.router import Router
from server.routers.sessions import SESSION
from server.routers.tracks import TRACK
from studio.v1 import project_pb2 as pb
from studio.v1 import session_pb2, track_pb2
from studio.v1.time_entry_pb2 import TimeTotals

if TYPE_CHECKING:
    from server.context import Ctx

__all__ = ["PROJECT", "router"]

router = Router(pb, "ProjectService")
PROJECT = ResourceMapping(
    pb.Project,
    projects,
    (
        Field("client_id", Kind.ID),
        Field("name", Kind.TEXT),
        Field("artist_name", Kind.TEXT),
        Field("description", Kind.TEXT),
        Field("genre", Kind.TEXT),
        Field("type", Kind.ENUM),
        Field("status", Kind.ENUM),
        Field("budget", Kind.DECIMAL),
        Field("label", Kind.TEXT),
        Field("catalog_number", Kind.TEXT),
        Field("notes", Kind.TEXT),
    ),
)


@router.procedure("GetProject")
async def get_project(ctx: Ctx, request: pb.GetProjectRequest) -> pb.GetProjectResponse:
    return pb.GetProjectResponse(
        project=await standard_methods.get(ctx, PROJECT, "project", request.id)
    )


@router.procedure("ListProjects")
async def list_projects(ctx: Ctx, request: pb.ListProjectsRequest) -> pb.ListProjectsResponse:
    where, refers_to = [], {}
    if request.HasField("client_id"):
        where, refers_to = [projects_of_client(request.client_id)], {"client": request.client_id}
    items, next_token = await standard_methods.list_page(
        ctx, PROJECT, request, where=where, refers_to=refers_to
    )
    return pb.ListProjectsResponse(projects=items, next_page_token=next_token)


@router.procedure("CreateProject")
async def create_project(ctx: Ctx, request: pb.CreateProjectRequest) -> pb.CreateProjectResponse:
    """A missing client is FAILED_PRECONDITION (CLIENT_NOT_FOUND), from the foreign key."""
    project = await standard_methods.create(ctx, PROJECT, request.project, request.request_id)
    return pb.CreateProjectResponse(project=project)


@router.procedure("UpdateProject")
async def update_project(ctx: Ctx, request: pb.UpdateProjectRequest) -> pb.UpdateProjectResponse:
    async def keep_sessions_with_their_client(
        current: pb.Project, merged: pb.Project, _paths: list[str]
    ) -> None:
        # The project row is locked FOR UPDATE: no session can be linked to it meanwhile.
        if merged.client_id != current.client_id and await project_has_sessions(ctx.db, current.id):
            raise FailedPrecondition(
                "PROJECT_HAS_SESSIONS",
                f"project {current.id} has sessions, so it cannot move to another client;"
                " unlink them first",
                metadata={"projectId": str(current.id)},
            )

    mask = request.update_mask if request.HasField("update_mask") else None
    project = await standard_methods.update(
        ctx, PROJECT, "project", request.project, mask, check=keep_sessions_with_their_client
    )
    return pb.UpdateProjectResponse(project=project)


@router.procedure("DeleteProject")
async def delete_project(ctx: Ctx, request: pb.DeleteProjectRequest) -> pb.DeleteProjectResponse:
    """Its sessions are kept and unlinked, in the statement that deletes it, each as by an
    update (a new update_time and etag: an update with the old etag is ABORTED). With
    tracks, it is refused (PROJECT_HAS_TRACKS) unless `force`, which deletes the tracks in
    the same transaction."""
    if request.force:
        await delete_project_tracks(ctx.db, request.id)
    await standard_methods.delete(ctx, PROJECT, "project", request.id, request.etag)
    return pb.DeleteProjectResponse()


@router.procedure("GetProjectSummary")
async def get_project_summary(
    ctx: Ctx, request: pb.GetProjectSummaryRequest
) -> pb.GetProjectSummaryResponse:
    """One statement reads every rollup (db/rollups.py); the rest is arithmetic on exact
    decimals."""
    row = await project_summary(ctx.db, request.id)
    if row is None:
        raise standard_methods.not_found("project", request.id)
    statuses = list(
        zip(
            row["session_status"] or [],
            row["session_n"] or [],
            row["session_seconds"] or [],
            row["session_total"] or [],
            row["session_paid"] or [],
            row["session_due"] or [],
            strict=True,
        )
    )
    session_numbers = SESSION.enums["status"][1]
    holding = [s for s in statuses if s[0] not in NOT_HOLDING_THE_ROOM]
    booked = minutes_of(sum((Decimal(s[2]) for s in holding), Decimal(0)))
    session_total = sum((Decimal(s[3] or 0) for s in holding), Decimal(0))
    time_billable = Decimal(row["total_billable_amount"])
    total = session_total + time_billable
    budget = row["budget"]
    tracks = sorted(
        zip(row["track_status"] or [], row["track_n"] or [], strict=True),
        key=lambda t: TRACK.enums["status"][1][t[0]],
    )
    summary = pb.ProjectSummary(
        project_id=row["id"],
        sessions=pb.SessionRollup(
            count=sum(s[1] for s in statuses),
            booked_minutes=booked,
            booked_hours=hours_of(booked),
            by_status=[
                pb.SessionStatusCount(
                    status=session_pb2.SessionStatus.ValueType(session_numbers[s[0]]),
                    count=s[1],
                    minutes=minutes_of(Decimal(s[2])),
                )
                for s in sorted(statuses, key=lambda s: session_numbers[s[0]])
            ],
        ),
        tracks=pb.TrackRollup(
            count=sum(n for _, n in tracks),
            by_status=[
                pb.TrackStatusCount(
                    status=track_pb2.TrackStatus.ValueType(TRACK.enums["status"][1][status]),
                    count=n,
                )
                for status, n in tracks
            ],
        ),
        time=TimeTotals(
            entry_count=row["total_entry_count"],
            minutes=row["total_minutes"],
            billable_amount=money(time_billable),
            running_timers=row["total_running_timers"],
        ),
        amounts=pb.ProjectAmounts(
            session_total=money(session_total),
            deposits_paid=money(sum((Decimal(s[4] or 0) for s in statuses), Decimal(0))),
            deposits_due=money(sum((Decimal(s[5] or 0) for s in holding), Decimal(0))),
            time_billable=money(time_billable),
            total=money(total),
            budget_remaining=money(budget - total) if budget is not None else "",
        ),
    )
    return pb.GetProjectSummaryResponse(summary=summary)
