"""ProjectService: albums, EPs, singles... each of one client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.references import delete_project_tracks, project_has_sessions, projects_of_client
from db.tables import projects
from server import standard_methods
from server.errors import FailedPrecondition
from server.resource_mapping import Field, Kind, ResourceMapping
from server.router import Router
from studio.v1 import project_pb2 as pb

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
