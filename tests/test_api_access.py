"""Who may call what: API keys, roles, tenant isolation, and what the server logs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from db.local_postgres import LocalPostgres
from studio.v1 import client_pb2, project_pb2, room_pb2, session_pb2
from tests.api import Api, failure
from tests.call_log import wait_for_call
from tests.conftest import ApiServer, Tenant
from tests.polling import wait_until
from tests.serving import STUDIO, start_serve


def _code_and_reason(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    got = failure(raised.value)
    return got.code, got.reason


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "MISSING_CREDENTIALS"),
        ("sk_000000000000_not-a-real-secret", "INVALID_API_KEY"),
        ("not-even-shaped-like-a-key", "INVALID_API_KEY"),
    ],
)
def test_calls_without_a_valid_key_are_unauthenticated(
    api_server: ApiServer, key: str | None, reason: str
) -> None:
    api = api_server.api(key)
    try:
        assert _code_and_reason(
            lambda: api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
        ) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    finally:
        api.close()


def _raw_list_clients(address: str, metadata: list[tuple[str, str]]) -> None:
    """ListClients with exactly this metadata (no client library adding its own header)."""
    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary("/studio.v1.ClientService/ListClients")
        raw(b"", metadata=metadata, timeout=10)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(
    api_server: ApiServer, studio: Tenant, scheme: str
) -> None:
    _raw_list_clients(api_server.address, [("authorization", f"{scheme} {studio.key}")])


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("Basic dXNlcjpwYXNzd29yZA==", "the Bearer scheme"),
        ("{key}", "the Bearer scheme"),  # the key alone, without a scheme
        ("Bearer", "no API key after Bearer"),
        ("Bearer {key} {key}", "one word, without spaces"),
        ("Bearer sk_abc def", "one word, without spaces"),
    ],
)
def test_a_malformed_authorization_header_says_what_is_expected(
    api_server: ApiServer, studio: Tenant, header: str, says: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _raw_list_clients(api_server.address, [("authorization", header.format(key=studio.key))])
    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MALFORMED_CREDENTIALS")
    assert says in got.message
    assert "`authorization: Bearer <api key>`" in got.message
    assert studio.key not in got.message


def test_a_key_with_the_right_prefix_and_a_wrong_secret_is_refused(
    api_server: ApiServer, studio: Tenant
) -> None:
    forged = studio.key[:-4] + ("aaaa" if not studio.key.endswith("aaaa") else "bbbb")
    api = api_server.api(forged)
    try:
        assert _code_and_reason(api.client) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_API_KEY",
        )
    finally:
        api.close()


def test_a_read_only_key_reads_but_cannot_write(
    api_server: ApiServer, api: Api, studio: Tenant
) -> None:
    existing = api.client("Readable")
    reader = api_server.api(api_server.new_key(studio, "read_only"))
    try:
        got = reader.clients.GetClient(client_pb2.GetClientRequest(id=existing.id), timeout=10)
        assert got.client.name == "Readable"
        assert _code_and_reason(lambda: reader.client("Nope")) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "READ_ONLY_KEY",
        )
    finally:
        reader.close()


def test_a_revoked_key_stops_working(api_server: ApiServer, studio: Tenant) -> None:
    key = api_server.new_key(studio, "member")
    api = api_server.api(key)
    try:
        api.client("Before revocation")
        prefix = key.split("_")[1]
        revoked = subprocess.run(
            [STUDIO, "keys", "revoke", prefix],
            env={"STUDIO_DATABASE_URL": api_server.master_url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 5  # the server was started with --key-cache-seconds 0.2
        while True:
            try:
                api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
            except grpc.RpcError as error:
                got = failure(error)
                break
            assert time.monotonic() < deadline, "the revoked key kept working"
            time.sleep(0.05)
        assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
    finally:
        api.close()


def test_two_studios_with_the_same_ids_never_see_each_others_rows(api_server: ApiServer) -> None:
    first, second = api_server.new_tenant("alpha"), api_server.new_tenant("beta")
    a, b = api_server.api(first.key), api_server.api(second.key)
    try:
        alice = a.client("Alice of alpha")
        bob = b.client("Bob of beta")
        assert alice.id == bob.id == 1  # each studio's own database, its own ids
        room_a = a.room()
        session_a = a.session(alice.id, room_a.id)

        assert b.clients.GetClient(client_pb2.GetClientRequest(id=1)).client.name == "Bob of beta"
        assert (
            a.clients.GetClient(client_pb2.GetClientRequest(id=1)).client.name == "Alice of alpha"
        )
        assert [c.name for c in b.clients.ListClients(client_pb2.ListClientsRequest()).clients] == [
            "Bob of beta"
        ]
        # beta cannot read, change or delete alpha's session, nor learn that it exists
        for call in (
            lambda: b.sessions.GetSession(session_pb2.GetSessionRequest(id=session_a.id)),
            lambda: b.sessions.DeleteSession(session_pb2.DeleteSessionRequest(id=session_a.id)),
        ):
            assert _code_and_reason(call) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
        assert not b.sessions.ListSessions(session_pb2.ListSessionsRequest()).sessions
        # and alpha's room is not a room beta can book
        assert _code_and_reason(lambda: b.session(bob.id, room_a.id))[1] == "ROOM_NOT_FOUND"
    finally:
        a.close()
        b.close()


def test_bytes_that_are_not_a_message_are_an_invalid_argument(
    api_server: ApiServer, studio: Tenant
) -> None:
    with grpc.insecure_channel(api_server.address) as channel:
        raw = channel.unary_unary("/studio.v1.ClientService/GetClient")
        with pytest.raises(grpc.RpcError) as raised:
            raw(
                b"\xff\xff\xff\xff",
                metadata=[("authorization", f"Bearer {studio.key}")],
                timeout=10,
            )
    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


def test_a_string_that_is_not_utf8_is_an_invalid_argument(
    api_server: ApiServer, studio: Tenant
) -> None:
    # CreateClientRequest{client: Client{name: <bytes FF FE>}}, encoded by hand
    name = b"\x12\x02\xff\xfe"
    body = b"\x0a" + bytes([len(name)]) + name
    with grpc.insecure_channel(api_server.address) as channel:
        raw = channel.unary_unary("/studio.v1.ClientService/CreateClient")
        with pytest.raises(grpc.RpcError) as raised:
            raw(body, metadata=[("authorization", f"Bearer {studio.key}")], timeout=10)
    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


def test_every_call_is_logged_once_with_its_outcome_and_never_the_key(
    api_server: ApiServer, api: Api, studio: Tenant
) -> None:
    request_id = "test-log-line-1"
    with pytest.raises(grpc.RpcError):
        api.clients.GetClient(
            client_pb2.GetClientRequest(id=777_777),
            metadata=[("x-request-id", request_id)],
            timeout=10,
        )
    entry = wait_for_call(api_server.server, lambda e: e["request_id"] == request_id)
    assert entry["method"] == "/studio.v1.ClientService/GetClient"
    assert entry["code"] == "NOT_FOUND"
    assert entry["reason"] == "CLIENT_NOT_FOUND"
    assert entry["tenant"] == studio.slug
    assert isinstance(entry["ms"], float)
    assert studio.key not in "".join(api_server.server.output)


def test_health_follows_the_master_database(tmp_path: Path) -> None:
    cluster = LocalPostgres(tmp_path / "pg" / "data", durable=False)
    cluster.start()
    server = start_serve(tmp_path / "serve", "--no-demo", master_url=cluster.url("studio_master"))
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status() -> int | None:
                request = health_pb2.HealthCheckRequest(service="studio.v1.SessionService")
                try:
                    return int(health.Check(request, timeout=5).status)
                except grpc.RpcError as error:  # a busy machine: ask again
                    if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
                    return None

            def wait_for(expected: int) -> None:
                # Bounded generously: PostgreSQL's restart on a loaded machine takes seconds.
                wait_until(lambda: status() == expected, timeout=60, what=f"health {expected}")

            assert status() == health_pb2.HealthCheckResponse.SERVING
            cluster.stop("immediate")
            wait_for(health_pb2.HealthCheckResponse.NOT_SERVING)
            cluster.start(port=cluster.port)
            wait_for(health_pb2.HealthCheckResponse.SERVING)
    finally:
        server.terminate()
        cluster.stop("immediate")


def test_a_studio_cannot_reach_another_studios_rows_through_any_rpc(
    api_server: ApiServer,
) -> None:
    owner_tenant, other_tenant = api_server.new_tenant("owner"), api_server.new_tenant("other")
    owner, other = api_server.api(owner_tenant.key), api_server.api(other_tenant.key)
    try:
        client = owner.client("Owner's client")
        room = owner.room("Owner's room")
        project = owner.project(client.id)
        session = owner.session(client.id, room.id, project_id=project.id)
        before = _snapshot(owner, client.id, room.id, project.id, session.id)
        not_found = grpc.StatusCode.NOT_FOUND
        calls = {
            "GetClient": lambda: other.clients.GetClient(client_pb2.GetClientRequest(id=client.id)),
            "UpdateClient": lambda: other.clients.UpdateClient(client_pb2.UpdateClientRequest(
                client=client_pb2.Client(id=client.id, name="Stolen"))),
            "DeleteClient": lambda: other.clients.DeleteClient(
                client_pb2.DeleteClientRequest(id=client.id)),
            "GetRoom": lambda: other.rooms.GetRoom(room_pb2.GetRoomRequest(id=room.id)),
            "UpdateRoom": lambda: other.rooms.UpdateRoom(room_pb2.UpdateRoomRequest(
                room=room_pb2.Room(id=room.id, name="Stolen"))),
            "DeleteRoom": lambda: other.rooms.DeleteRoom(room_pb2.DeleteRoomRequest(id=room.id)),
            "GetProject": lambda: other.projects.GetProject(
                project_pb2.GetProjectRequest(id=project.id)),
            "UpdateProject": lambda: other.projects.UpdateProject(project_pb2.UpdateProjectRequest(
                project=project_pb2.Project(id=project.id, name="Stolen"))),
            "DeleteProject": lambda: other.projects.DeleteProject(
                project_pb2.DeleteProjectRequest(id=project.id, force=True)),
            "GetSession": lambda: other.sessions.GetSession(
                session_pb2.GetSessionRequest(id=session.id)),
            "UpdateSession": lambda: other.sessions.UpdateSession(session_pb2.UpdateSessionRequest(
                session=session_pb2.Session(id=session.id, title="Stolen"))),
            "DeleteSession": lambda: other.sessions.DeleteSession(
                session_pb2.DeleteSessionRequest(id=session.id)),
        }  # fmt: skip
        for name, call in calls.items():
            code, _reason = _code_and_reason(call)
            assert code is not_found, name
        # creates that refer to the owner's rows find nothing to refer to
        assert _code_and_reason(lambda: other.project(client.id))[1] == "CLIENT_NOT_FOUND"
        assert _code_and_reason(lambda: other.session(client.id, room.id))[1] == (
            "CLIENT_NOT_FOUND"
        )
        # lists show nothing of the owner's
        assert not other.clients.ListClients(client_pb2.ListClientsRequest()).clients
        assert not other.rooms.ListRooms(room_pb2.ListRoomsRequest()).rooms
        assert not other.projects.ListProjects(project_pb2.ListProjectsRequest()).projects
        assert not other.sessions.ListSessions(session_pb2.ListSessionsRequest()).sessions
        # and the owner's rows are exactly as they were
        assert _snapshot(owner, client.id, room.id, project.id, session.id) == before
    finally:
        owner.close()
        other.close()


def _snapshot(api: Api, client_id: int, room_id: int, project_id: int, session_id: int) -> tuple:  # type: ignore[type-arg]
    return (
        api.clients.GetClient(client_pb2.GetClientRequest(id=client_id)).client,
        api.rooms.GetRoom(room_pb2.GetRoomRequest(id=room_id)).room,
        api.projects.GetProject(project_pb2.GetProjectRequest(id=project_id)).project,
        api.sessions.GetSession(session_pb2.GetSessionRequest(id=session_id)).session,
    )
