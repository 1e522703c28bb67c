"""Connect (JSON and binary, HTTP/1.1 and h2c, GET for queries) and gRPC-Web on --http-port:
the same procedures through the same pipeline as gRPC, against a real `studio serve` and
PostgreSQL, over real sockets."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.protobuf.field_mask_pb2 import FieldMask

from studio.v1 import client_pb2, session_pb2
from tests.api import Api, failure
from tests.call_log import wait_for_call
from tests.conftest import ApiServer, Databases, Tenant
from tests.connect_api import ConnectApi, connect_failure, get_json, json_error_info, post_json
from tests.polling import wait_until
from tests.row_lock import RowLock, lock_waiters
from tests.serving import children_of, serve_refused, start_serve

SESSIONS = "/studio.v1.SessionService/"


def _fails(call: object) -> ConnectError:
    with pytest.raises(ConnectError) as raised:
        call()  # type: ignore[operator]
    return raised.value


def test_curl_style_json_books_into_a_project_unlinks_and_reads_back(
    api_server: ApiServer, studio: Tenant
) -> None:
    url, key = api_server.http_url, studio.key
    client = post_json(
        url, "/studio.v1.ClientService/CreateClient", {"client": {"name": "Ada Lovelace"}}, key=key
    ).body["client"]
    room = post_json(
        url,
        "/studio.v1.RoomService/CreateRoom",
        {"room": {"name": "Studio A", "hourlyRate": "75.00"}},
        key=key,
    ).body["room"]
    project = post_json(
        url,
        "/studio.v1.ProjectService/CreateProject",
        {"project": {"clientId": client["id"], "name": "First album"}},
        key=key,
    ).body["project"]
    booked = post_json(
        url,
        SESSIONS + "CreateSession",
        {
            "session": {
                "clientId": client["id"],
                "roomId": room["id"],
                "projectId": project["id"],
                "title": "Drums",
                "startTime": "2026-12-01T10:00:00Z",
                "endTime": "2026-12-01T14:00:00Z",
            }
        },
        key=key,
    )
    assert booked.status == 200
    assert booked.headers["content-type"] == "application/json"
    session = booked.body["session"]
    assert session["projectId"] == project["id"]
    # the request id the call log has, as a Connect trailer
    request_id = booked.headers["trailer-x-request-id"]
    entry = wait_for_call(api_server.server, lambda e: e["request_id"] == request_id)
    assert (entry["method"], entry["code"], entry["tenant"]) == (
        SESSIONS + "CreateSession",
        "OK",
        studio.slug,
    )

    unlinked = post_json(
        url,
        SESSIONS + "UpdateSession",
        {"session": {"id": session["id"]}, "updateMask": "projectId"},
        key=key,
    )
    assert unlinked.status == 200
    assert "projectId" not in unlinked.body["session"]
    # and gRPC sees the very same row
    grpc_api = api_server.api(key)
    try:
        got = grpc_api.sessions.GetSession(session_pb2.GetSessionRequest(id=int(session["id"])))
        assert got.session.title == "Drums"
        assert not got.session.HasField("project_id")
    finally:
        grpc_api.close()


@pytest.mark.parametrize(
    ("protocol", "json", "http2"),
    [
        (ProtocolType.CONNECT, False, True),  # binary over h2c
        (ProtocolType.CONNECT, True, False),  # JSON over HTTP/1.1
        (ProtocolType.GRPC_WEB, False, False),
        (ProtocolType.GRPC_WEB, False, True),
    ],
    ids=["connect-proto-h2c", "connect-json-http1", "grpc-web-http1", "grpc-web-h2c"],
)
def test_every_transport_links_and_unlinks_and_errors_carry_error_info(
    api_server: ApiServer, studio: Tenant, protocol: ProtocolType, json: bool, http2: bool
) -> None:
    api = api_server.connect(studio.key, protocol=protocol, json=json, http2=http2)
    client = api.client()
    project = api.project(client.id)
    session = api.session(client.id, api.room().id)
    assert not session.HasField("project_id")
    linked = api.sessions.update_session(
        session_pb2.UpdateSessionRequest(
            session=session_pb2.Session(id=session.id, project_id=project.id),
            update_mask=FieldMask(paths=["project_id"]),
        ),
        headers=api.headers,
    ).session
    assert linked.project_id == project.id
    unlinked = api.sessions.update_session(
        session_pb2.UpdateSessionRequest(
            session=session_pb2.Session(id=session.id), update_mask=FieldMask(paths=["project_id"])
        ),
        headers=api.headers,
    ).session
    assert not unlinked.HasField("project_id")

    missing = connect_failure(
        _fails(
            lambda: api.sessions.get_session(
                session_pb2.GetSessionRequest(id=987_654), headers=api.headers
            )
        )
    )
    assert (missing.code, missing.reason) == ("not_found", "SESSION_NOT_FOUND")
    assert missing.metadata["sessionId"] == "987654"
    assert missing.metadata["requestId"]
    assert missing.message == "session 987654 does not exist"

    invalid = connect_failure(
        _fails(
            lambda: api.sessions.create_session(
                session_pb2.CreateSessionRequest(session=session_pb2.Session(client_id=client.id)),
                headers=api.headers,
            )
        )
    )
    assert (invalid.code, invalid.reason) == ("invalid_argument", "INVALID_ARGUMENT")
    assert invalid.fields == {
        "session.room_id": "REQUIRED",
        "session.title": "REQUIRED",
        "session.start_time": "REQUIRED",
        "session.end_time": "REQUIRED",
    }

    refused = connect_failure(
        _fails(
            lambda: api.sessions.create_session(
                session_pb2.CreateSessionRequest(
                    session=session_pb2.Session(
                        client_id=client.id,
                        room_id=999_999,
                        title="x",
                        start_time=session.start_time,
                        end_time=session.end_time,
                    )
                ),
                headers=api.headers,
            )
        )
    )
    assert (refused.code, refused.reason) == ("failed_precondition", "ROOM_NOT_FOUND")


def test_connect_json_errors_have_code_message_and_details_with_a_readable_debug(
    api_server: ApiServer, studio: Tenant
) -> None:
    answer = post_json(
        api_server.http_url, SESSIONS + "GetSession", {"id": "42000"}, key=studio.key
    )
    assert answer.status == 404
    assert answer.body["code"] == "not_found"
    assert answer.body["message"] == "session 42000 does not exist"
    info = json_error_info(answer)
    assert (info.reason, info.domain, info.metadata["sessionId"]) == (
        "SESSION_NOT_FOUND",
        "studio.v1",
        "42000",
    )
    [debug] = [d["debug"] for d in answer.body["details"] if d["type"] == "google.protobuf.Struct"]
    assert debug["reason"] == "SESSION_NOT_FOUND"
    assert debug["metadata"]["requestId"] == info.metadata["requestId"]

    invalid = post_json(
        api_server.http_url, SESSIONS + "CreateSession", {"session": {}}, key=studio.key
    )
    assert (invalid.status, invalid.body["code"]) == (400, "invalid_argument")
    types = [d["type"] for d in invalid.body["details"]]
    assert types == ["google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.protobuf.Struct"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"id": ', "MALFORMED_REQUEST"),  # not JSON
        ('{"id": "one"}', "MALFORMED_REQUEST"),  # not an int64
        ('["id"]', "MALFORMED_REQUEST"),  # not an object
    ],
)
def test_json_that_is_not_the_request_is_malformed_request_with_error_info(
    api_server: ApiServer, studio: Tenant, body: str, reason: str
) -> None:
    result = subprocess.run(
        [
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "-H",
            f"authorization: Bearer {studio.key}",
            "--data-binary",
            body,
            api_server.http_url + SESSIONS + "GetSession",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    text, status = result.stdout.rsplit("\n", 1)
    assert status == "400"
    assert '"code": "invalid_argument"' in text
    assert f'"reason": "{reason}"' in text
    assert "studio.v1.GetSessionRequest" in text


def test_queries_answer_connect_get_and_mutations_do_not(
    api_server: ApiServer, studio: Tenant
) -> None:
    api = api_server.connect(studio.key)
    session = api.session(api.client().id, api.room().id)
    got = get_json(
        api_server.http_url, SESSIONS + "GetSession", {"id": str(session.id)}, key=studio.key
    )
    assert got.status == 200
    assert got.body["session"]["id"] == str(session.id)
    listed = api.sessions.list_sessions(
        session_pb2.ListSessionsRequest(), headers=api.headers, use_get=True
    )
    assert session.id in [s.id for s in listed.sessions]
    # GET is for NO_SIDE_EFFECTS methods only
    refused = get_json(
        api_server.http_url, SESSIONS + "DeleteSession", {"id": str(session.id)}, key=studio.key
    )
    assert refused.status == 405
    assert (
        api.sessions.get_session(
            session_pb2.GetSessionRequest(id=session.id), headers=api.headers
        ).session.id
        == session.id
    )
    # and a GET is authenticated like any call
    anonymous = get_json(api_server.http_url, SESSIONS + "GetSession", {"id": str(session.id)})
    assert (anonymous.status, json_error_info(anonymous).reason) == (401, "MISSING_CREDENTIALS")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "MISSING_CREDENTIALS"),
        ("sk_000000000000_not-a-real-secret", "INVALID_API_KEY"),
    ],
)
def test_calls_without_a_valid_key_are_unauthenticated_over_connect(
    api_server: ApiServer, key: str | None, reason: str
) -> None:
    api = api_server.connect(key)
    got = connect_failure(
        _fails(
            lambda: api.clients.list_clients(client_pb2.ListClientsRequest(), headers=api.headers)
        )
    )
    assert (got.code, got.reason) == ("unauthenticated", reason)


def test_a_read_only_key_reads_but_cannot_write_over_connect(
    api_server: ApiServer, studio: Tenant
) -> None:
    reader = api_server.connect(api_server.new_key(studio, "read_only"), json=True)
    listed = reader.clients.list_clients(client_pb2.ListClientsRequest(), headers=reader.headers)
    assert listed is not None
    got = connect_failure(_fails(lambda: reader.client("Not allowed")))
    assert (got.code, got.reason) == ("permission_denied", "READ_ONLY_KEY")
    answer = post_json(
        api_server.http_url,
        "/studio.v1.ClientService/CreateClient",
        {"client": {"name": "Nope"}},
        key=reader.headers["authorization"][7:],
    )
    assert (answer.status, json_error_info(answer).reason) == (403, "READ_ONLY_KEY")


def test_two_studios_never_see_each_others_rows_over_connect(api_server: ApiServer) -> None:
    first, second = api_server.new_tenant("conn-alpha"), api_server.new_tenant("conn-beta")
    a, b = api_server.connect(first.key), api_server.connect(second.key, json=True)
    alice, bob = a.client("Alice of alpha"), b.client("Bob of beta")
    assert alice.id == bob.id == 1  # each studio's own database
    session_a = a.session(alice.id, a.room().id)
    for call in (
        lambda: b.sessions.get_session(
            session_pb2.GetSessionRequest(id=session_a.id), headers=b.headers
        ),
        lambda: b.sessions.delete_session(
            session_pb2.DeleteSessionRequest(id=session_a.id), headers=b.headers
        ),
    ):
        got = connect_failure(_fails(call))
        assert (got.code, got.reason) == ("not_found", "SESSION_NOT_FOUND")
    names = b.clients.list_clients(client_pb2.ListClientsRequest(), headers=b.headers).clients
    assert [c.name for c in names] == ["Bob of beta"]
    # the same key over gRPC sees the same studio
    grpc_b: Api = api_server.api(second.key)
    try:
        assert grpc_b.clients.GetClient(client_pb2.GetClientRequest(id=1)).client.name == (
            "Bob of beta"
        )
    finally:
        grpc_b.close()


def test_an_unknown_method_goes_through_the_pipeline_over_connect(
    api_server: ApiServer, studio: Tenant
) -> None:
    request_id = "connect-unknown-method-1"
    answer = post_json(
        api_server.http_url,
        "/studio.v1.SessionService/BookEverything",
        {},
        key=studio.key,
        headers={"x-request-id": request_id},
    )
    assert (answer.status, answer.body["code"]) == (501, "unimplemented")
    info = json_error_info(answer)
    assert (info.reason, info.metadata["method"]) == (
        "UNKNOWN_METHOD",
        "/studio.v1.SessionService/BookEverything",
    )
    entry = wait_for_call(api_server.server, lambda e: e["request_id"] == request_id)
    assert (entry["code"], entry["reason"]) == ("UNIMPLEMENTED", "UNKNOWN_METHOD")


def test_a_request_over_the_limit_is_message_too_large_over_connect(
    api_server: ApiServer, studio: Tenant
) -> None:
    name = "x" * (4 * 1024 * 1024 + 10)
    answer = post_json(
        api_server.http_url,
        "/studio.v1.ClientService/CreateClient",
        {"client": {"name": name}},
        key=studio.key,
    )
    assert (answer.status, answer.body["code"]) == (429, "resource_exhausted")
    info = json_error_info(answer)
    assert info.reason == "MESSAGE_TOO_LARGE"
    assert info.metadata["limitBytes"] == str(4 * 1024 * 1024)


def test_a_connect_deadline_cancels_its_database_work(
    api_server: ApiServer, studio: Tenant
) -> None:
    api = api_server.connect(studio.key)
    session = api.session(api.client().id, api.room().id)
    with RowLock(studio.url, session.id):
        started = time.monotonic()
        error = _fails(
            lambda: api.sessions.update_session(
                session_pb2.UpdateSessionRequest(
                    session=session_pb2.Session(id=session.id, title="Late")
                ),
                headers=api.headers,
                timeout_ms=1000,
            )
        )
        assert error.code.value == "deadline_exceeded"
        assert time.monotonic() - started < 3
        wait_until(
            lambda: lock_waiters(studio.url) == 0, timeout=5, what="the cancelled statement is gone"
        )
    title = api.sessions.get_session(
        session_pb2.GetSessionRequest(id=session.id), headers=api.headers
    ).session.title
    assert title == session.title


def test_a_key_guessed_over_connect_counts_against_the_address_over_grpc_too(
    databases: Databases, tmp_path: Path
) -> None:
    """Failed authentications are counted per address whatever the transport: alternating
    transports buys a guesser nothing."""
    server = start_serve(
        tmp_path,
        "--no-demo",
        "--auth-failures-per-second",
        "0.001",
        master_url=databases.create("conn_throttle"),
    )
    try:
        guesser = ConnectApi(server.http_url, "sk_000000000000_not-a-real-secret")
        reasons = set()
        for _ in range(51):  # the burst is 50
            error = _fails(
                lambda: guesser.clients.list_clients(
                    client_pb2.ListClientsRequest(), headers=guesser.headers
                )
            )
            reasons.add(connect_failure(error).reason)
        assert reasons == {"INVALID_API_KEY", "TOO_MANY_FAILED_AUTHENTICATIONS"}
        over_grpc = Api(server.address, "sk_000000000000_not-a-real-secret")
        try:
            with pytest.raises(grpc.RpcError) as raised:
                over_grpc.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
            assert failure(raised.value).reason == "TOO_MANY_FAILED_AUTHENTICATIONS"
        finally:
            over_grpc.close()
    finally:
        server.terminate()


def test_no_http_serves_grpc_only(databases: Databases, tmp_path: Path) -> None:
    server = start_serve(tmp_path, "--no-demo", "--no-http", master_url=databases.create("no_http"))
    try:
        assert server.http_port == 0
        assert not any(line.startswith("serving HTTP") for line in server.output)
    finally:
        assert server.terminate() == 0


def test_a_taken_http_port_is_refused_in_one_line(databases: Databases, tmp_path: Path) -> None:
    master_url = databases.create("http_taken")
    first = start_serve(tmp_path / "first", "--no-demo", master_url=master_url)
    try:
        code, output = serve_refused(
            tmp_path / "second",
            "--no-demo",
            "--port",
            "0",
            "--http-port",
            str(first.http_port),
            master_url=master_url,
        )
        assert code == 3
        assert output.strip() == f"studio serve: port {first.http_port} is in use"
    finally:
        first.terminate()


def test_workers_share_the_http_port_and_each_serves_it(
    databases: Databases, tmp_path: Path
) -> None:
    server = start_serve(tmp_path, "--workers", "2", master_url=databases.create("conn_workers"))
    try:
        workers = children_of(server.process.pid)
        assert len(workers) == 2
        assert _listening_pids(server.http_port) == workers  # not the supervisor: it holds it
        key = (tmp_path / "demo-api-key").read_text().strip()
        for _ in range(20):  # new connections each time: the kernel spreads them
            answer = post_json(server.http_url, "/studio.v1.ClientService/ListClients", {}, key=key)
            assert answer.status == 200
        assert any(line.startswith("serving HTTP on ") for line in server.output)
    finally:
        assert server.terminate() == 0


def _listening_pids(port: int) -> set[int]:
    """The processes with a socket listening on 127.0.0.1:`port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            inodes.add(f"socket:[{inode}]")
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {str(fd.readlink()) for fd in (proc / "fd").iterdir()}
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if links & inodes:
            pids.add(int(proc.name))
    return pids


def test_cors_is_off_by_default(api_server: ApiServer, studio: Tenant) -> None:
    answer = post_json(
        api_server.http_url,
        "/studio.v1.ClientService/ListClients",
        {},
        key=studio.key,
        headers={"origin": "http://page.example"},
    )
    assert answer.status == 200
    assert not [h for h in answer.headers if h.startswith("access-control-")]


def test_sigterm_lets_connect_calls_in_flight_finish_and_refuses_new_ones(
    api_server: ApiServer, tmp_path: Path
) -> None:
    tenant = api_server.new_tenant("conn-shutdown")
    server = start_serve(
        tmp_path,
        "--no-demo",
        "--skip-migrations",
        "--grace",
        "10",
        master_url=api_server.master_url,
    )
    try:
        api = ConnectApi(server.http_url, tenant.key, json=True)
        session = api.session(api.client().id, api.room().id)
        results: list[session_pb2.UpdateSessionResponse] = []
        with RowLock(tenant.url, session.id) as row_lock:
            in_flight = threading.Thread(
                target=lambda: results.append(
                    api.sessions.update_session(
                        session_pb2.UpdateSessionRequest(
                            session=session_pb2.Session(id=session.id, title="Late")
                        ),
                        headers=api.headers,
                        timeout_ms=30_000,
                    )
                )
            )
            in_flight.start()
            wait_until(
                lambda: lock_waiters(tenant.url) > 0,
                timeout=10,
                what="the update waits for the row",
            )
            server.process.send_signal(signal.SIGTERM)
            refused: list[tuple[str, str]] = []

            def a_new_caller_is_refused() -> bool:  # the signal takes a moment to arrive
                late = ConnectApi(server.http_url, tenant.key)
                try:
                    late.clients.list_clients(client_pb2.ListClientsRequest(), headers=late.headers)
                except ConnectError as error:
                    got = connect_failure(error)
                    refused.append((got.code, got.reason))
                    return True
                return False

            wait_until(a_new_caller_is_refused, timeout=10, what="new calls refused after SIGTERM")
            assert refused == [("unavailable", "SHUTTING_DOWN")]
            row_lock.release()
            in_flight.join(30)
        assert server.terminate(timeout=15) == 0
        [response] = results
        assert response.session.title == "Late"
    finally:
        server.terminate()
