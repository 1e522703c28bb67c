"""Connect and gRPC-Web callers for tests, over real HTTP sockets: the generated Python Connect
clients (protoc-gen-connectrpc, on pyqwest), and plain HTTP/1.1 JSON as curl or a browser
sends it (urllib)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from connectrpc.codec import Codec
from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo
from pyqwest import HTTPVersion, SyncClient, SyncHTTPTransport

from studio.v1 import client_pb2, project_pb2, room_pb2, session_pb2
from studio.v1.client_connect import ClientServiceClientSync
from studio.v1.project_connect import ProjectServiceClientSync
from studio.v1.room_connect import RoomServiceClientSync
from studio.v1.session_connect import SessionServiceClientSync


class ConnectApi:
    """The four services over Connect (or gRPC-Web), sending `key` with every call.
    `json`: the JSON codec instead of binary; `http2`: h2c by prior knowledge."""

    def __init__(
        self,
        base_url: str,
        key: str | None,
        *,
        protocol: ProtocolType = ProtocolType.CONNECT,
        json: bool = False,
        http2: bool = False,
    ) -> None:
        transport = SyncHTTPTransport(http_version=HTTPVersion.HTTP2 if http2 else None)
        self.http = SyncClient(transport)
        self.headers = {"authorization": f"Bearer {key}"} if key is not None else {}
        codec: Codec = google_protobuf_json_codec() if json else google_protobuf_binary_codec()
        options: dict[str, Any] = {"protocol": protocol, "codec": codec, "http_client": self.http}
        self.clients = ClientServiceClientSync(base_url, **options)
        self.rooms = RoomServiceClientSync(base_url, **options)
        self.projects = ProjectServiceClientSync(base_url, **options)
        self.sessions = SessionServiceClientSync(base_url, **options)

    def client(self, name: str = "Ada Lovelace") -> client_pb2.Client:
        request = client_pb2.CreateClientRequest(client=client_pb2.Client(name=name))
        return self.clients.create_client(request, headers=self.headers).client

    def room(self, name: str = "Studio A") -> room_pb2.Room:
        request = room_pb2.CreateRoomRequest(room=room_pb2.Room(name=name))
        return self.rooms.create_room(request, headers=self.headers).room

    def project(self, client_id: int, name: str = "First album") -> project_pb2.Project:
        request = project_pb2.CreateProjectRequest(
            project=project_pb2.Project(client_id=client_id, name=name)
        )
        return self.projects.create_project(request, headers=self.headers).project

    def session(
        self,
        client_id: int,
        room_id: int,
        *,
        project_id: int | None = None,
        start: int = 1_800_000_000,
        timeout_ms: int | None = None,
    ) -> session_pb2.Session:
        session = session_pb2.Session(
            client_id=client_id,
            room_id=room_id,
            title="Tracking day",
            start_time=Timestamp(seconds=start),
            end_time=Timestamp(seconds=start + 3 * 3600),
        )
        if project_id is not None:
            session.project_id = project_id
        request = session_pb2.CreateSessionRequest(session=session)
        return self.sessions.create_session(
            request, headers=self.headers, timeout_ms=timeout_ms
        ).session


@dataclass(frozen=True)
class ConnectFailure:
    """What a Connect caller reads from a failed call."""

    code: str  # Connect's name: "not_found"
    message: str
    reason: str
    metadata: dict[str, str]
    fields: dict[str, str]  # field path -> violation reason


def connect_failure(error: ConnectError) -> ConnectFailure:
    info, fields = ErrorInfo(), {}
    for detail in error.details:
        if detail.type_name == "google.rpc.ErrorInfo":
            info = ErrorInfo.FromString(detail.message_bytes)
        elif detail.type_name == "google.rpc.BadRequest":
            bad_request = BadRequest.FromString(detail.message_bytes)
            fields = {v.field: v.reason for v in bad_request.field_violations}
    assert info.domain == "studio.v1", "every error carries an ErrorInfo"
    return ConnectFailure(error.code.value, error.message, info.reason, dict(info.metadata), fields)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any]


def post_json(
    base_url: str,
    path: str,
    body: object,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> HttpAnswer:
    """A Connect unary call as curl or fetch() make it: HTTP/1.1, a JSON body."""
    request = urllib.request.Request(  # noqa: S310 (our own server, on loopback)
        base_url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json", **_auth(key), **(headers or {})},
    )
    return _send(request)


def get_json(base_url: str, path: str, message: object, *, key: str | None = None) -> HttpAnswer:
    """A Connect GET (queries only): the request in the query string."""
    encoded = base64.urlsafe_b64encode(json.dumps(message).encode()).decode().rstrip("=")
    url = f"{base_url}{path}?connect=v1&encoding=json&base64=1&message={encoded}"
    return _send(urllib.request.Request(url, headers=_auth(key)))  # noqa: S310


def _auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key is not None else {}


def _send(request: urllib.request.Request) -> HttpAnswer:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, error.headers, error.read()
    body = json.loads(raw) if raw else {}
    return HttpAnswer(status, {k.lower(): v for k, v in headers.items()}, body)


def json_error_info(answer: HttpAnswer) -> ErrorInfo:
    """The ErrorInfo of a Connect JSON error, decoded from its details as connect-es does."""
    [detail] = [d for d in answer.body["details"] if d["type"] == "google.rpc.ErrorInfo"]
    return ErrorInfo.FromString(
        base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
    )
