"""TrackService: the tracks of a project, in track-number order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.references import track_filters, track_has_time_entries, track_order
from db.tables import tracks
from server import standard_methods
from server.errors import FailedPrecondition
from server.resource_mapping import Field, Kind, ResourceMapping
from server.router import Router
from studio.v1 import track_pb2 as pb

if TYPE_CHECKING:
    from server.context import Ctx

__all__ = ["TRACK", "router"]

router = Router(pb, "TrackService")
TRACK = ResourceMapping(
    pb.Track,
    tracks,
    (
        Field("project_id", Kind.ID),
        Field("title", Kind.TEXT),
        Field("track_number", Kind.INT),
        Field("duration_seconds", Kind.INT),
        Field("isrc", Kind.TEXT),
        Field("status", Kind.ENUM),
        Field("bpm", Kind.INT),
        Field("musical_key", Kind.TEXT),
        Field("recorded_in_room_id", Kind.ID),
        Field("notes", Kind.TEXT),
    ),
)


@router.procedure("GetTrack")
async def get_track(ctx: Ctx, request: pb.GetTrackRequest) -> pb.GetTrackResponse:
    return pb.GetTrackResponse(track=await standard_methods.get(ctx, TRACK, "track", request.id))


@router.procedure("ListTracks")
async def list_tracks(ctx: Ctx, request: pb.ListTracksRequest) -> pb.ListTracksResponse:
    status = TRACK.enums["status"][0].get(request.status) if request.status else None
    items, next_token = await standard_methods.list_page(
        ctx,
        TRACK,
        request,
        where=track_filters(project_id=request.project_id, status=status),
        number_key=track_order(),
        refers_to={"project": request.project_id},
    )
    return pb.ListTracksResponse(tracks=items, next_page_token=next_token)


@router.procedure("CreateTrack", single_statement=True)
async def create_track(ctx: Ctx, request: pb.CreateTrackRequest) -> pb.CreateTrackResponse:
    """One INSERT: a missing project or room is its foreign key's refusal (PROJECT_NOT_FOUND,
    ROOM_NOT_FOUND), a number taken its unique key's (TRACK_NUMBER_TAKEN)."""
    track = await standard_methods.create(ctx, TRACK, request.track, request.request_id)
    return pb.CreateTrackResponse(track=track)


@router.procedure("UpdateTrack")
async def update_track(ctx: Ctx, request: pb.UpdateTrackRequest) -> pb.UpdateTrackResponse:
    async def keep_time_with_its_project(
        current: pb.Track, merged: pb.Track, _paths: list[str]
    ) -> None:
        # The track is locked FOR UPDATE (standard_methods.update), and logging time against
        # it checks its foreign key, which waits for that lock: no entry can appear meanwhile.
        if merged.project_id != current.project_id and await track_has_time_entries(
            ctx.db, current.id
        ):
            raise FailedPrecondition(
                "TRACK_HAS_TIME_ENTRIES",
                f"track {current.id} has time entries logged against it, so it cannot move to"
                " another project",
                metadata={"trackId": str(current.id)},
            )

    mask = request.update_mask if request.HasField("update_mask") else None
    track = await standard_methods.update(
        ctx, TRACK, "track", request.track, mask, check=keep_time_with_its_project
    )
    return pb.UpdateTrackResponse(track=track)


@router.procedure("DeleteTrack")
async def delete_track(ctx: Ctx, request: pb.DeleteTrackRequest) -> pb.DeleteTrackResponse:
    """Refused (TRACK_HAS_TIME_ENTRIES) by the time entries' foreign key."""
    await standard_methods.delete(ctx, TRACK, "track", request.id, request.etag)
    return pb.DeleteTrackResponse()
