"""What a project link is for: GetProjectSummary and ListClientProjects, against a studio
whose numbers the test knows exactly."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from studio.v1 import (
    client_pb2,
    project_pb2,
    session_pb2,
    task_type_pb2,
    time_entry_pb2,
    track_pb2,
)
from tests.api import Api, failure
from tests.conftest import ApiServer

T0 = 1_830_000_000
HOUR, DAY = 3600, 86_400
Status = session_pb2.SessionStatus


def _session(api: Api, client: int, room: int, project: int, *, start: int, hours: float,
             **fields: object) -> session_pb2.Session:  # fmt: skip
    session = session_pb2.Session(
        client_id=client, room_id=room, project_id=project, title="Take",
        start_time=Timestamp(seconds=start), end_time=Timestamp(seconds=start + int(hours * HOUR)),
        **fields,  # type: ignore[arg-type]
    )  # fmt: skip
    return api.sessions.CreateSession(session_pb2.CreateSessionRequest(session=session)).session


def _log(api: Api, task_type: int, start: int, minutes: int, **context: int) -> None:
    entry = time_entry_pb2.TimeEntry(
        task_type_id=task_type, start_time=Timestamp(seconds=start),
        end_time=Timestamp(seconds=start + minutes * 60), **context,  # type: ignore[arg-type]
    )  # fmt: skip
    api.time.CreateTimeEntry(time_entry_pb2.CreateTimeEntryRequest(time_entry=entry), timeout=10)


@pytest.fixture(
    scope="module", params=["direct", pytest.param("pgbouncer", marks=pytest.mark.pgbouncer)]
)
def album(
    api_server: ApiServer, request: pytest.FixtureRequest
) -> Iterator[tuple[Api, dict[str, int]]]:
    """A studio of its own: an album with sessions in every state, tracks and time; another
    project of the same client; a project of another client. Served directly, then through
    PgBouncer."""
    pooled = request.getfixturevalue("pgbouncer").url if request.param == "pgbouncer" else None
    api = api_server.api(api_server.new_tenant("rollups", pooled_url=pooled).key)
    client, other_client = api.client(), api.client("Someone else")
    room = api.room()
    budgeted = project_pb2.Project(client_id=client.id, name="First album", budget="5000.00")
    project = api.projects.CreateProject(project_pb2.CreateProjectRequest(project=budgeted)).project
    ep = api.project(client.id, "Summer EP")
    api.project(other_client.id, "Not theirs")
    ids = {"client": client.id, "project": project.id, "ep": ep.id}

    booked = [
        _session(api, client.id, room.id, project.id, start=T0, hours=4, total_amount="300.00",
                 deposit_amount="100.00", deposit_paid=True),
        _session(api, client.id, room.id, project.id, start=T0 + DAY, hours=2.5,
                 total_amount="200.00", deposit_amount="50.00"),
        _session(api, client.id, room.id, project.id, start=T0 + 2 * DAY, hours=3,
                 total_amount="250.00", deposit_amount="80.00", deposit_paid=True),
    ]  # fmt: skip
    api.sessions.UpdateSession(session_pb2.UpdateSessionRequest(
        session=session_pb2.Session(id=booked[0].id, status=Status.SESSION_STATUS_COMPLETED),
        update_mask=FieldMask(paths=["status"]),
    ))  # fmt: skip
    api.sessions.UpdateSession(session_pb2.UpdateSessionRequest(  # cancelled: paid, not booked
        session=session_pb2.Session(id=booked[2].id, status=Status.SESSION_STATUS_CANCELLED),
        update_mask=FieldMask(paths=["status"]),
    ))  # fmt: skip
    _session(api, client.id, room.id, ep.id, start=T0 + 3 * DAY, hours=1)
    api.session(client.id, room.id, start=T0 + 4 * DAY)  # standalone: no project's

    intro = api.track(project.id, "Intro", track_number=1)
    api.track(project.id, "Outro", track_number=2, status=track_pb2.TRACK_STATUS_MIXING)
    api.track(project.id, "Bonus", status=track_pb2.TRACK_STATUS_MIXING)

    mixing, coffee = api.task_type("Mixing", "60.00"), api.task_type("Coffee", "30.00")
    api.task_types.UpdateTaskType(task_type_pb2.UpdateTaskTypeRequest(
        task_type=task_type_pb2.TaskType(
            id=coffee.id, category=task_type_pb2.TASK_CATEGORY_NON_BILLABLE
        ),
        update_mask=FieldMask(paths=["category"]),
    ))  # fmt: skip
    _log(api, mixing.id, T0, 90, session_id=booked[0].id)  # 90.00
    _log(api, mixing.id, T0 + DAY, 30, session_id=booked[1].id)  # 30.00
    _log(api, coffee.id, T0 + DAY, 20, session_id=booked[1].id)  # not billable
    _log(api, mixing.id, T0 + 5 * DAY, 45, project_id=project.id)  # 45.00
    _log(api, mixing.id, T0 + 6 * DAY, 15, track_id=intro.id)  # 15.00
    _log(api, mixing.id, T0 + 6 * DAY, 600, project_id=ep.id)  # the EP's
    api.time.StartTimer(time_entry_pb2.StartTimerRequest(task_type_id=mixing.id, track_id=intro.id))
    try:
        yield api, ids
    finally:
        api.close()


def test_a_project_summary_adds_up_sessions_tracks_time_and_money(
    album: tuple[Api, dict[str, int]],
) -> None:
    api, ids = album
    summary = api.projects.GetProjectSummary(
        project_pb2.GetProjectSummaryRequest(id=ids["project"]), timeout=10
    ).summary

    assert summary.project_id == ids["project"]
    assert (summary.sessions.count, summary.sessions.booked_minutes) == (3, 390)  # 4 h + 2.5 h
    assert summary.sessions.booked_hours == "6.50"
    assert [(s.status, s.count, s.minutes) for s in summary.sessions.by_status] == [
        (Status.SESSION_STATUS_SCHEDULED, 1, 150),
        (Status.SESSION_STATUS_COMPLETED, 1, 240),
        (Status.SESSION_STATUS_CANCELLED, 1, 180),
    ]
    assert summary.tracks.count == 3
    assert [(t.status, t.count) for t in summary.tracks.by_status] == [
        (track_pb2.TRACK_STATUS_RECORDING, 1),
        (track_pb2.TRACK_STATUS_MIXING, 2),
    ]
    time = summary.time  # on the project, its sessions and its tracks; not the EP's
    assert (time.entry_count, time.minutes, time.running_timers) == (6, 200, 1)
    assert time.billable_amount == "180.00"
    amounts = summary.amounts
    assert (amounts.session_total, amounts.deposits_paid, amounts.deposits_due) == (
        "500.00",  # the cancelled session's total is not owed
        "180.00",  # its paid deposit still counts
        "50.00",
    )
    assert (amounts.time_billable, amounts.total, amounts.budget_remaining) == (
        "180.00",
        "680.00",
        "4320.00",
    )

    listed = api.time.ListTimeEntries(time_entry_pb2.ListTimeEntriesRequest(
        project_id=ids["project"], include_sessions_and_tracks=True
    ))  # fmt: skip
    assert listed.totals == summary.time  # the same set, counted the same way

    empty = api.projects.GetProjectSummary(project_pb2.GetProjectSummaryRequest(id=ids["ep"]))
    assert empty.summary.tracks.count == 0
    assert empty.summary.amounts.budget_remaining == ""  # no budget
    with pytest.raises(grpc.RpcError) as raised:
        api.projects.GetProjectSummary(project_pb2.GetProjectSummaryRequest(id=987_654))
    got = failure(raised.value)
    assert (got.code, got.reason, got.metadata["projectId"]) == (
        grpc.StatusCode.NOT_FOUND,
        "PROJECT_NOT_FOUND",
        "987654",
    )


def test_a_clients_projects_come_with_their_hours_a_page_at_a_time(
    album: tuple[Api, dict[str, int]],
) -> None:
    api, ids = album
    request = client_pb2.ListClientProjectsRequest(client_id=ids["client"], page_size=1)
    pages = []
    while True:
        response = api.clients.ListClientProjects(request, timeout=10)
        pages.append(list(response.projects))
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    assert [len(p) for p in pages] == [1, 1]
    album_hours, ep_hours = pages[0][0], pages[1][0]
    assert (album_hours.project.id, album_hours.project.name) == (ids["project"], "First album")
    assert (album_hours.session_count, album_hours.booked_minutes, album_hours.booked_hours) == (
        3, 390, "6.50",
    )  # fmt: skip
    assert (album_hours.tracked_minutes, album_hours.tracked_hours) == (200, "3.33")
    assert album_hours.billable_amount == "180.00"
    assert (ep_hours.project.id, ep_hours.booked_minutes, ep_hours.tracked_hours) == (
        ids["ep"], 60, "10.00",
    )  # fmt: skip

    with pytest.raises(grpc.RpcError) as raised:
        api.clients.ListClientProjects(client_pb2.ListClientProjectsRequest(client_id=987_654))
    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CLIENT_NOT_FOUND")
