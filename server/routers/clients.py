"""ClientService: the people and companies who book the studio."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.tables import clients
from server import standard_methods
from server.resource_mapping import Field, Kind, ResourceMapping
from server.router import Router
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
