"""A typed client for tests: real gRPC over a socket, the API key sent as a caller would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from grpc_status import rpc_status

from studio.v1 import (
    client_pb2,
    client_pb2_grpc,
    project_pb2,
    project_pb2_grpc,
    room_pb2,
    room_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
    task_type_pb2,
    task_type_pb2_grpc,
    time_entry_pb2_grpc,
    track_pb2,
    track_pb2_grpc,
)


class _Auth(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str | None) -> None:
        self.key = key

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if self.key is None:
            return continuation(details, request)
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.key}")]
        return continuation(details._replace(metadata=metadata), request)


class Api:
    """Stubs of every service, sending `key` with each call (None: no credentials)."""

    def __init__(self, address: str, key: str | None) -> None:
        self.channel = grpc.intercept_channel(grpc.insecure_channel(address), _Auth(key))
        self.clients = client_pb2_grpc.ClientServiceStub(self.channel)
        self.rooms = room_pb2_grpc.RoomServiceStub(self.channel)
        self.projects = project_pb2_grpc.ProjectServiceStub(self.channel)
        self.sessions = session_pb2_grpc.SessionServiceStub(self.channel)
        self.tracks = track_pb2_grpc.TrackServiceStub(self.channel)
        self.task_types = task_type_pb2_grpc.TaskTypeServiceStub(self.channel)
        self.time = time_entry_pb2_grpc.TimeEntryServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    # The few objects most tests need, made the way a caller would.

    def client(self, name: str = "Ada Lovelace", **fields: Any) -> client_pb2.Client:
        request = client_pb2.CreateClientRequest(client=client_pb2.Client(name=name, **fields))
        return self.clients.CreateClient(request, timeout=10).client

    def room(self, name: str = "Studio A", **fields: Any) -> room_pb2.Room:
        request = room_pb2.CreateRoomRequest(room=room_pb2.Room(name=name, **fields))
        return self.rooms.CreateRoom(request, timeout=10).room

    def project(self, client_id: int, name: str = "First album") -> project_pb2.Project:
        project = project_pb2.Project(client_id=client_id, name=name)
        return self.projects.CreateProject(
            project_pb2.CreateProjectRequest(project=project), timeout=10
        ).project

    def track(self, project_id: int, title: str = "Intro", **fields: Any) -> track_pb2.Track:
        track = track_pb2.Track(project_id=project_id, title=title, **fields)
        return self.tracks.CreateTrack(track_pb2.CreateTrackRequest(track=track), timeout=10).track

    def task_type(
        self, name: str = "Mixing", hourly_rate: str = "60.00", **fields: Any
    ) -> task_type_pb2.TaskType:
        task_type = task_type_pb2.TaskType(name=name, hourly_rate=hourly_rate, **fields)
        request = task_type_pb2.CreateTaskTypeRequest(task_type=task_type)
        return self.task_types.CreateTaskType(request, timeout=10).task_type

    def session(
        self,
        client_id: int,
        room_id: int,
        *,
        project_id: int | None = None,
        start: int = 1_800_000_000,
        hours: int = 3,
        title: str = "Tracking day",
        request_id: str = "",
        timeout: float = 10,
    ) -> session_pb2.Session:
        session = session_pb2.Session(
            client_id=client_id,
            room_id=room_id,
            title=title,
            start_time=Timestamp(seconds=start),
            end_time=Timestamp(seconds=start + hours * 3600),
        )
        if project_id is not None:
            session.project_id = project_id
        request = session_pb2.CreateSessionRequest(session=session, request_id=request_id)
        return self.sessions.CreateSession(request, timeout=timeout).session


@dataclass(frozen=True)
class Failure:
    """What a caller can read from a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    fields: dict[str, str]  # field path -> violation reason
    retry_seconds: float | None = None  # the RetryInfo's delay, when the server gave one


def failure(error: grpc.RpcError) -> Failure:
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    info, fields, retry = ErrorInfo(), {}, None
    for detail in status.details:
        if detail.Is(ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(BadRequest.DESCRIPTOR):
            bad_request = BadRequest()
            detail.Unpack(bad_request)
            fields = {v.field: v.reason for v in bad_request.field_violations}
        elif detail.Is(RetryInfo.DESCRIPTOR):
            retry_info = RetryInfo()
            detail.Unpack(retry_info)
            retry = retry_info.retry_delay.ToTimedelta().total_seconds()
    assert info.domain == "studio.v1", "every error carries an ErrorInfo"
    return Failure(error.code(), status.message, info.reason, dict(info.metadata), fields, retry)
