"""Errors a person can act on, as a caller reads them: the id in the message and in
ErrorInfo metadata, what a valid amount looks like, which field holds a NUL character.
(Refused deletes: tests/test_api_resources.py.)"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc.error_details_pb2 import BadRequest
from grpc_status import rpc_status

from studio.v1 import client_pb2, project_pb2, room_pb2, session_pb2
from tests.api import Api, Failure, failure

MISSING = 424_242


def _fails(call: Callable[[], object]) -> Failure:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return failure(raised.value)


def _descriptions(call: Callable[[], object]) -> dict[str, tuple[str, str]]:
    """field path -> (reason, description) of the BadRequest a call fails with."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(raised.value)
    assert status is not None
    found: dict[str, tuple[str, str]] = {}
    for detail in status.details:
        if detail.Is(BadRequest.DESCRIPTOR):
            bad_request = BadRequest()
            detail.Unpack(bad_request)
            found |= {v.field: (v.reason, v.description) for v in bad_request.field_violations}
    return found


def _session(client_id: int, room_id: int, **fields: object) -> session_pb2.Session:
    return session_pb2.Session(
        client_id=client_id,
        room_id=room_id,
        title="Tracking day",
        start_time=Timestamp(seconds=1_800_000_000),
        end_time=Timestamp(seconds=1_800_003_600),
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("kind", "call"),
    [
        ("client", lambda api: api.clients.GetClient(client_pb2.GetClientRequest(id=MISSING))),
        ("room", lambda api: api.rooms.DeleteRoom(room_pb2.DeleteRoomRequest(id=MISSING))),
        ("project", lambda api: api.projects.GetProject(project_pb2.GetProjectRequest(id=MISSING))),
        ("session", lambda api: api.sessions.GetSession(session_pb2.GetSessionRequest(id=MISSING))),
    ],
)
def test_not_found_names_the_id(api: Api, kind: str, call: Callable[[Api], object]) -> None:
    got = _fails(lambda: call(api))
    assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, f"{kind.upper()}_NOT_FOUND")
    assert got.message == f"{kind} {MISSING} does not exist"
    assert got.metadata[f"{kind}Id"] == str(MISSING)


def test_a_missing_reference_names_its_id(api: Api) -> None:
    client, room = api.client(), api.room()
    cases = [
        ("client", lambda: api.project(client_id=MISSING)),
        ("client", lambda: api.session(MISSING, room.id)),
        ("room", lambda: api.session(client.id, MISSING)),
        ("project", lambda: api.session(client.id, room.id, project_id=MISSING)),
    ]
    for kind, call in cases:
        got = _fails(call)
        assert (got.code, got.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{kind.upper()}_NOT_FOUND",
        )
        assert got.message == f"{kind} {MISSING} does not exist"
        assert got.metadata[f"{kind}Id"] == str(MISSING)


@pytest.mark.parametrize(
    ("field", "call"),
    [
        ("room.hourly_rate",
         lambda api: api.room(hourly_rate="12.345")),
        ("room.half_day_rate",
         lambda api: api.room(half_day_rate="-10")),
        ("room.full_day_rate",
         lambda api: api.room(full_day_rate="1,200.00")),
        ("session.total_amount",
         lambda api: api.sessions.CreateSession(session_pb2.CreateSessionRequest(
             session=_session(1, 1, total_amount="300.000")))),
        ("session.deposit_amount",
         lambda api: api.sessions.CreateSession(session_pb2.CreateSessionRequest(
             session=_session(1, 1, deposit_amount="€50")))),
        ("project.budget",
         lambda api: api.projects.CreateProject(project_pb2.CreateProjectRequest(
             project=project_pb2.Project(client_id=1, name="A", budget="12000.5.0")))),
    ],
)  # fmt: skip
def test_a_money_field_says_what_a_valid_amount_is(
    api: Api, field: str, call: Callable[[Api], object]
) -> None:
    reason, description = _descriptions(lambda: call(api))[field]
    assert reason == "AMOUNT_FORMAT"
    assert description.startswith('must be an amount like "120.50": up to ')
    assert "at most 2 after it, no sign" in description
    assert "[0-9]" not in description  # not the regex


def test_a_nul_character_names_its_field_and_nothing_is_written(api: Api) -> None:
    client = api.client()
    on_create = _descriptions(lambda: api.client("Ada\x00Lovelace", notes="ok"))
    assert on_create == {
        "client.name": (
            "NUL_CHARACTER",
            "must not contain a NUL character (\\0): text cannot hold one",
        )
    }

    session = api.session(client.id, api.room().id)
    on_update = _descriptions(
        lambda: api.sessions.UpdateSession(
            session_pb2.UpdateSessionRequest(
                session=session_pb2.Session(id=session.id, notes="bring \x00 cables")
            ),
            timeout=10,
        )
    )
    assert set(on_update) == {"session.notes"}
    stored = api.sessions.GetSession(session_pb2.GetSessionRequest(id=session.id)).session
    assert stored == session

    in_a_mask = _descriptions(
        lambda: api.rooms.UpdateRoom(
            room_pb2.UpdateRoomRequest(
                room=room_pb2.Room(id=1, name="B"), update_mask={"paths": ["name", "x\x00"]}
            ),
            timeout=10,
        )
    )
    assert set(in_a_mask) == {"update_mask.paths[1]"}
