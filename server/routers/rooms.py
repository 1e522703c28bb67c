"""RoomService: the bookable rooms."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.tables import rooms
from server import standard_methods
from server.resource_mapping import Field, Kind, ResourceMapping
from server.router import Router
from studio.v1 import room_pb2 as pb

if TYPE_CHECKING:
    from server.context import Ctx

__all__ = ["ROOM", "router"]

router = Router(pb, "RoomService")
ROOM = ResourceMapping(
    pb.Room,
    rooms,
    (
        Field("name", Kind.TEXT),
        Field("description", Kind.TEXT),
        Field("type", Kind.ENUM),
        Field("hourly_rate", Kind.DECIMAL),
        Field("half_day_rate", Kind.DECIMAL),
        Field("full_day_rate", Kind.DECIMAL),
        Field("capacity", Kind.INT),
        Field("has_isolation_booth", Kind.BOOL),
        Field("has_live_room", Kind.BOOL),
        Field("has_control_room", Kind.BOOL),
        Field("is_available_for_booking", Kind.BOOL),
        Field("color", Kind.TEXT),
    ),
)


@router.procedure("GetRoom")
async def get_room(ctx: Ctx, request: pb.GetRoomRequest) -> pb.GetRoomResponse:
    return pb.GetRoomResponse(room=await standard_methods.get(ctx, ROOM, "room", request.id))


@router.procedure("ListRooms")
async def list_rooms(ctx: Ctx, request: pb.ListRoomsRequest) -> pb.ListRoomsResponse:
    items, next_token = await standard_methods.list_page(ctx, ROOM, request)
    return pb.ListRoomsResponse(rooms=items, next_page_token=next_token)


@router.procedure("CreateRoom")
async def create_room(ctx: Ctx, request: pb.CreateRoomRequest) -> pb.CreateRoomResponse:
    return pb.CreateRoomResponse(
        room=await standard_methods.create(ctx, ROOM, request.room, request.request_id)
    )


@router.procedure("UpdateRoom")
async def update_room(ctx: Ctx, request: pb.UpdateRoomRequest) -> pb.UpdateRoomResponse:
    mask = request.update_mask if request.HasField("update_mask") else None
    return pb.UpdateRoomResponse(
        room=await standard_methods.update(ctx, ROOM, "room", request.room, mask)
    )


@router.procedure("DeleteRoom")
async def delete_room(ctx: Ctx, request: pb.DeleteRoomRequest) -> pb.DeleteRoomResponse:
    """Refused (ROOM_HAS_SESSIONS) while sessions are booked in it. Tracks recorded in it
    forget the room, each as by an update (a new updated_at and version)."""
    await standard_methods.delete(ctx, ROOM, "room", request.id, request.etag)
    return pb.DeleteRoomResponse()
