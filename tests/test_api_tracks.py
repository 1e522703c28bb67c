"""TrackService end to end: a real server process, real PostgreSQL, a real socket."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from studio.v1 import time_entry_pb2, track_pb2
from tests.api import Api, Failure, failure

T0 = 1_830_000_000


def _fails(call: object) -> Failure:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return failure(raised.value)


def _list(api: Api, **filters: object) -> list[list[str]]:
    """Titles, page by page (page_size 2)."""
    request = track_pb2.ListTracksRequest(page_size=2, **filters)  # type: ignore[arg-type]
    pages = []
    while True:
        response = api.tracks.ListTracks(request, timeout=10)
        pages.append([t.title for t in response.tracks])
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token


def _update(api: Api, track: track_pb2.Track, *paths: str) -> track_pb2.Track:
    request = track_pb2.UpdateTrackRequest(track=track, update_mask=FieldMask(paths=paths))
    return api.tracks.UpdateTrack(request, timeout=10).track


@pytest.mark.pgbouncer
def test_a_projects_tracks_are_listed_by_number_then_unnumbered_a_page_at_a_time(
    api: Api,
) -> None:
    project = api.project(api.client().id)
    for title, number in (("Three", 3), ("Bonus", None), ("One", 1), ("Extra", None), ("Two", 2)):
        api.track(project.id, title, **({} if number is None else {"track_number": number}))
    api.track(api.project(api.client().id).id, "Someone else's")

    assert _list(api, project_id=project.id) == [["One", "Two"], ["Three", "Bonus"], ["Extra"]]
    listed = api.tracks.ListTracks(
        track_pb2.ListTracksRequest(project_id=project.id), timeout=10
    ).tracks
    assert {t.status for t in listed} == {track_pb2.TRACK_STATUS_RECORDING}  # the default
    two = api.tracks.GetTrack(track_pb2.GetTrackRequest(id=listed[1].id), timeout=10).track
    assert (two.title, two.track_number, two.project_id) == ("Two", 2, project.id)
    _update(api, track_pb2.Track(id=two.id, status=track_pb2.TRACK_STATUS_MIXING), "status")
    assert _list(api, project_id=project.id, status=track_pb2.TRACK_STATUS_MIXING) == [["Two"]]


@pytest.mark.pgbouncer
def test_a_track_number_is_once_per_project_and_references_must_exist(api: Api) -> None:
    project = api.project(api.client().id)
    first = api.track(project.id, "Intro", track_number=1, bpm=120, isrc="USRC17607839")
    assert (first.track_number, first.bpm, first.isrc) == (1, 120, "USRC17607839")
    assert not first.HasField("duration_seconds")

    got = _fails(lambda: api.track(project.id, "Also one", track_number=1))
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TRACK_NUMBER_TAKEN")
    assert got.metadata == {
        "projectId": str(project.id),
        "trackNumber": "1",
        "requestId": got.metadata["requestId"],
    }
    second = api.track(project.id, "Second")
    got = _fails(
        lambda: _update(api, track_pb2.Track(id=second.id, track_number=1), "track_number")
    )
    assert got.reason == "TRACK_NUMBER_TAKEN"
    api.track(api.project(api.client().id).id, "Another album's one", track_number=1)

    for call, reason in (
        (lambda: api.track(987_654, "Nowhere"), "PROJECT_NOT_FOUND"),
        (lambda: api.track(project.id, "Roomless", recorded_in_room_id=987_654), "ROOM_NOT_FOUND"),
        (lambda: api.tracks.ListTracks(track_pb2.ListTracksRequest(project_id=987_654)),
         "PROJECT_NOT_FOUND"),
    ):  # fmt: skip
        got = _fails(call)
        assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    got = _fails(lambda: api.tracks.GetTrack(track_pb2.GetTrackRequest(id=987_654)))
    assert (got.code, got.reason, got.metadata["trackId"]) == (
        grpc.StatusCode.NOT_FOUND,
        "TRACK_NOT_FOUND",
        "987654",
    )
    got = _fails(lambda: _update(api, track_pb2.Track(id=first.id), "tempo"))
    assert got.fields == {"update_mask": "FIELD_MASK_IN"}


def test_a_track_with_time_logged_stays_in_its_project_and_is_not_deleted(api: Api) -> None:
    client = api.client()
    album, other = api.project(client.id), api.project(client.id, "Other album")
    logged, free = api.track(album.id, "Logged"), api.track(album.id, "Free")
    mixing = api.task_type()
    api.time.CreateTimeEntry(
        time_entry_pb2.CreateTimeEntryRequest(
            time_entry=time_entry_pb2.TimeEntry(
                task_type_id=mixing.id, track_id=logged.id,
                start_time=Timestamp(seconds=T0), end_time=Timestamp(seconds=T0 + 3600),
            )
        ),
        timeout=10,
    )  # fmt: skip

    moved = _update(api, track_pb2.Track(id=free.id, project_id=other.id), "project_id")
    assert moved.project_id == other.id
    got = _fails(
        lambda: _update(api, track_pb2.Track(id=logged.id, project_id=other.id), "project_id")
    )
    assert (got.code, got.reason, got.metadata["trackId"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TRACK_HAS_TIME_ENTRIES",
        str(logged.id),
    )
    got = _fails(lambda: api.tracks.DeleteTrack(track_pb2.DeleteTrackRequest(id=logged.id)))
    assert (got.reason, got.metadata["trackId"]) == ("TRACK_HAS_TIME_ENTRIES", str(logged.id))
    renamed = _update(api, track_pb2.Track(id=logged.id, title="Logged (final)"), "title")
    assert renamed.project_id == album.id

    api.tracks.DeleteTrack(track_pb2.DeleteTrackRequest(id=moved.id, etag=moved.etag), timeout=10)
    got = _fails(lambda: api.tracks.GetTrack(track_pb2.GetTrackRequest(id=moved.id)))
    assert got.reason == "TRACK_NOT_FOUND"
