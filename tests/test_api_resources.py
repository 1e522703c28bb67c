"""Clients, rooms and projects end to end: defaults, updates, and deletes that are refused."""

from __future__ import annotations

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from studio.v1 import client_pb2, project_pb2, room_pb2
from tests.api import Api, failure
from tests.conftest import Tenant


@pytest.mark.pgbouncer
def test_a_room_gets_the_studios_defaults_and_exact_money(api: Api) -> None:
    room = api.room("Live Room", hourly_rate="75.50")
    assert room.type == room_pb2.ROOM_TYPE_RECORDING
    assert room.capacity == 1
    assert room.is_available_for_booking is True  # unset on create: bookable
    assert room.hourly_rate == "75.50"

    closed = api.rooms.UpdateRoom(
        room_pb2.UpdateRoomRequest(
            room=room_pb2.Room(id=room.id), update_mask=FieldMask(paths=["hourly_rate"])
        ),
        timeout=10,
    ).room
    assert closed.hourly_rate == "0.00"  # cleared: back to the column's default
    assert closed.name == "Live Room"


def test_optional_text_can_be_cleared_through_the_mask(api: Api) -> None:
    client = api.client(email="ada@example.com", notes="pays on time")
    cleared = api.clients.UpdateClient(
        client_pb2.UpdateClientRequest(
            client=client_pb2.Client(id=client.id), update_mask=FieldMask(paths=["email", "notes"])
        ),
        timeout=10,
    ).client
    assert (cleared.email, cleared.notes, cleared.name) == ("", "", client.name)
    # and a bool set to false, which only a mask can say
    vip = api.client(is_vip=True)
    plain = api.clients.UpdateClient(
        client_pb2.UpdateClientRequest(
            client=client_pb2.Client(id=vip.id), update_mask=FieldMask(paths=["is_vip"])
        ),
        timeout=10,
    ).client
    assert plain.is_vip is False


@pytest.mark.pgbouncer
def test_lists_page_through_every_row_once(api: Api) -> None:
    made = {api.client(f"Paging {n}").id for n in range(5)}
    seen: list[int] = []
    request = client_pb2.ListClientsRequest(page_size=2)
    while True:
        response = api.clients.ListClients(request, timeout=10)
        seen += [c.id for c in response.clients]
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    assert made <= set(seen)
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)


def _delete_failure(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    got = failure(raised.value)
    return got.code, got.reason


def _refusal(call: object) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    got = failure(raised.value)
    ids = {k: v for k, v in got.metadata.items() if k != "requestId"}
    return got.code, got.reason, got.message, ids


def test_deleting_what_is_still_used_is_refused_naming_it_and_what_to_do(
    api: Api, studio: Tenant
) -> None:
    client, room = api.client(), api.room()
    project = api.project(client.id)
    api.session(client.id, room.id)
    with psycopg.connect(studio.url, autocommit=True) as conn:  # tracks have no API yet
        conn.execute("INSERT INTO tracks (project_id, title) VALUES (%s, 'Intro')", (project.id,))
    precondition = grpc.StatusCode.FAILED_PRECONDITION
    client_ids, room_ids = {"clientId": str(client.id)}, {"roomId": str(room.id)}

    assert _refusal(
        lambda: api.clients.DeleteClient(client_pb2.DeleteClientRequest(id=client.id))
    ) == (
        precondition,
        "CLIENT_HAS_PROJECTS",
        f"client {client.id} still has projects; delete them first",
        client_ids,
    )
    assert _refusal(lambda: api.rooms.DeleteRoom(room_pb2.DeleteRoomRequest(id=room.id))) == (
        precondition,
        "ROOM_HAS_SESSIONS",
        f"room {room.id} still has sessions booked in it; delete them first",
        room_ids,
    )
    assert _refusal(
        lambda: api.projects.DeleteProject(project_pb2.DeleteProjectRequest(id=project.id))
    ) == (
        precondition,
        "PROJECT_HAS_TRACKS",
        f"project {project.id} has tracks; delete them first, or delete the project with force",
        {"projectId": str(project.id)},
    )

    api.projects.DeleteProject(project_pb2.DeleteProjectRequest(id=project.id, force=True))
    with psycopg.connect(studio.url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM tracks WHERE project_id = %s", (project.id,)
        ).fetchone() == (0,)
    # the project is gone; the session still holds the client
    assert _refusal(
        lambda: api.clients.DeleteClient(client_pb2.DeleteClientRequest(id=client.id))
    ) == (precondition, "CLIENT_HAS_SESSIONS",
          f"client {client.id} still has sessions; delete them first", client_ids)  # fmt: skip


def test_deleting_a_room_unlinks_the_tracks_recorded_in_it_as_an_update_would(
    api: Api, studio: Tenant
) -> None:
    room, project = api.room(), api.project(api.client().id)
    with psycopg.connect(studio.url, autocommit=True) as conn:  # tracks have no API yet
        before = conn.execute(
            "INSERT INTO tracks (project_id, title, recorded_in_room_id) VALUES (%s, 'Intro', %s)"
            " RETURNING id, version, updated_at",
            (project.id, room.id),
        ).fetchone()
    assert before is not None

    api.rooms.DeleteRoom(room_pb2.DeleteRoomRequest(id=room.id), timeout=10)

    with psycopg.connect(studio.url) as conn:
        after = conn.execute(
            "SELECT recorded_in_room_id, version, updated_at FROM tracks WHERE id = %s",
            (before[0],),
        ).fetchone()
    assert after is not None
    assert after[0] is None
    assert after[1] == before[1] + 1
    assert after[2] > before[2]


@pytest.mark.pgbouncer
@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda api: api.clients.DeleteClient(client_pb2.DeleteClientRequest(id=424_242)),
         "CLIENT_NOT_FOUND"),
        (lambda api: api.rooms.GetRoom(room_pb2.GetRoomRequest(id=424_242)), "ROOM_NOT_FOUND"),
        (lambda api: api.projects.DeleteProject(project_pb2.DeleteProjectRequest(id=424_242)),
         "PROJECT_NOT_FOUND"),
    ],
)  # fmt: skip
def test_what_does_not_exist_is_not_found(api: Api, call: object, reason: str) -> None:
    assert _delete_failure(lambda: call(api)) == (grpc.StatusCode.NOT_FOUND, reason)  # type: ignore[operator]


def test_a_project_needs_an_existing_client(api: Api) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        api.project(client_id=999_999)
    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CLIENT_NOT_FOUND")


@pytest.mark.pgbouncer
def test_a_project_with_sessions_cannot_move_to_another_client(api: Api) -> None:
    client, room = api.client(), api.room()
    project = api.project(client.id)
    api.session(client.id, room.id, project_id=project.id)
    other = api.client("Someone else")
    with pytest.raises(grpc.RpcError) as raised:
        api.projects.UpdateProject(
            project_pb2.UpdateProjectRequest(
                project=project_pb2.Project(id=project.id, client_id=other.id)
            ),
            timeout=10,
        )
    got = failure(raised.value)
    assert got.reason == "PROJECT_HAS_SESSIONS"
    assert got.message.startswith(f"project {project.id} has sessions")
    assert got.metadata["projectId"] == str(project.id)


@pytest.mark.parametrize(
    ("room", "fields"),
    [
        (room_pb2.Room(), {"room.name": "REQUIRED"}),
        (room_pb2.Room(name="A", hourly_rate="12.345", color="red", capacity=-1),
         {"room.hourly_rate": "AMOUNT_FORMAT", "room.color": "STRING_PATTERN",
          "room.capacity": "INT32_GT_LTE"}),
    ],
)  # fmt: skip
def test_invalid_rooms_name_each_field(
    api: Api, room: room_pb2.Room, fields: dict[str, str]
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        api.rooms.CreateRoom(room_pb2.CreateRoomRequest(room=room), timeout=10)
    got = failure(raised.value)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert got.fields == fields
