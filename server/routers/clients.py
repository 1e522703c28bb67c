"""ClientService: the people and companies who book the studio."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.rollups import client_projects
from db.tables import clients
from server import standard_methods
from server.paging import decode_token, encode_token, page_size
from server.quantities import hours_of, minutes_of, money
from server.resource_mapping import Field, Kind, ResourceMapping
from server.router import Router
from server.routers.projects import PROJECT
from studio.v1 import client_pb2 as pb

if TYPE_CHECKING:
    from server.context import Ctx

__all__ = ["CLIENT", "router"]

router = Router(pb, "ClientService")
CLIENT = ResourceMapping(
    pb.Client,
    clients,
    (
        Field("name", Kind.TEXT),
        Field("artist_name", Kind.TEXT),
        Field("email", Kind.TEXT),
        Field("phone", Kind.TEXT),
        Field("type", Kind.ENUM),
        Field("address", Kind.TEXT),
        Field("city", Kind.TEXT),
        Field("country", Kind.TEXT),
        Field("notes", Kind.TEXT),
        Field("is_vip", Kind.BOOL),
    ),
)


@router.procedure("GetClient")
async def get_client(ctx: Ctx, request: pb.GetClientRequest) -> pb.GetClientResponse:
    return pb.GetClientResponse(
        client=await standard_methods.get(ctx, CLIENT, "client", request.id)
    )


@router.procedure("ListClients")
async def list_clients(ctx: Ctx, request: pb.ListClientsRequest) -> pb.ListClientsResponse:
    items, next_token = await standard_methods.list_page(ctx, CLIENT, request)
    return pb.ListClientsResponse(clients=items, next_page_token=next_token)


@router.procedure("CreateClient")
async def create_client(ctx: Ctx, request: pb.CreateClientRequest) -> pb.CreateClientResponse:
    client = await standard_methods.create(ctx, CLIENT, request.client, request.request_id)
    return pb.CreateClientResponse(client=client)


@router.procedure("UpdateClient")
async def update_client(ctx: Ctx, request: pb.UpdateClientRequest) -> pb.UpdateClientResponse:
    mask = request.update_mask if request.HasField("update_mask") else None
    client = await standard_methods.update(ctx, CLIENT, "client", request.client, mask)
    return pb.UpdateClientResponse(client=client)


@router.procedure("DeleteClient")
async def delete_client(ctx: Ctx, request: pb.DeleteClientRequest) -> pb.DeleteClientResponse:
    """Refused (CLIENT_HAS_PROJECTS / CLIENT_HAS_SESSIONS) while anything refers to it."""
    await standard_methods.delete(ctx, CLIENT, "client", request.id, request.etag)
    return pb.DeleteClientResponse()


@router.procedure("ListClientProjects")
async def list_client_projects(
    ctx: Ctx, request: pb.ListClientProjectsRequest
) -> pb.ListClientProjectsResponse:
    """A page of the client's projects, each with its hours, in one statement; an empty page
    checks that the client exists."""
    token = decode_token(request)
    size = page_size(request.page_size)
    rows = await client_projects(
        ctx.db,
        request.client_id,
        after_id=token.last_id if token is not None else None,
        limit=size + 1,
    )
    if not rows:
        await standard_methods.require_references(ctx, {"client": request.client_id})
    items = []
    for row in rows[:size]:
        booked = minutes_of(row["booked_seconds"])
        items.append(
            pb.ClientProject(
                project=PROJECT.to_message(row),
                session_count=row["session_count"],
                booked_minutes=booked,
                booked_hours=hours_of(booked),
                tracked_minutes=row["tracked_minutes"],
                tracked_hours=hours_of(row["tracked_minutes"]),
                billable_amount=money(row["tracked_amount"]),
            )
        )
    next_token = encode_token(request, rows[size - 1]["id"]) if len(rows) > size else ""
    return pb.ListClientProjectsResponse(projects=items, next_page_token=next_token)
