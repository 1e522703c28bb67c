"""Every call gets a JSON log line and an error with ErrorInfo, even a call to a method the
server does not have; and every line the server writes to stderr is JSON that jq reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from studio.v1 import client_pb2
from tests.api import Api, failure
from tests.call_log import wait_for_call
from tests.conftest import ApiServer, Databases, Tenant
from tests.serving import READY, STUDIO

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.mark.parametrize(
    "method",
    [
        "/studio.v1.SessionService/Nope",  # a service we have, a method it has not
        "/studio.v1.NoSuchService/GetThing",  # a service we do not have
        "/grpc.health.v1.Health/Nope",  # grpc's own services too
    ],
)
def test_an_unknown_method_is_unimplemented_with_error_info_and_logged(
    api_server: ApiServer, studio: Tenant, method: str
) -> None:
    request_id = f"unknown-method-{method}"
    metadata = [("authorization", f"Bearer {studio.key}"), ("x-request-id", request_id)]
    with (
        grpc.insecure_channel(api_server.address) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        channel.unary_unary(method)(b"", metadata=metadata, timeout=10)
    got = failure(raised.value)  # asserts ErrorInfo's domain
    assert (got.code, got.reason) == (grpc.StatusCode.UNIMPLEMENTED, "UNKNOWN_METHOD")
    assert got.metadata["method"] == method
    assert method in got.message
    entry = wait_for_call(api_server.server, lambda e: e["request_id"] == request_id)
    assert (entry["method"], entry["code"], entry["reason"]) == (
        method, "UNIMPLEMENTED", "UNKNOWN_METHOD"
    )  # fmt: skip


def test_an_unknown_streaming_method_is_answered_without_waiting_for_a_request(
    api_server: ApiServer,
) -> None:
    """buf curl asks for reflection v1 first (we serve v1alpha), on a stream it keeps open."""
    answered = threading.Event()

    def nothing_until_answered() -> Iterator[bytes]:
        answered.wait(10)
        yield from ()

    method = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    started = time.monotonic()
    with grpc.insecure_channel(api_server.address) as channel:
        call = channel.stream_stream(method)(
            nothing_until_answered(), metadata=[("x-request-id", "unknown-stream")], timeout=10
        )
        with pytest.raises(grpc.RpcError) as raised:
            next(call)
        answered.set()
    assert time.monotonic() - started < 5  # not at the deadline
    got = failure(raised.value)
    assert (got.code, got.reason) == (grpc.StatusCode.UNIMPLEMENTED, "UNKNOWN_METHOD")
    wait_for_call(api_server.server, lambda e: e["request_id"] == "unknown-stream")


def test_the_methods_we_have_are_not_caught_by_the_unknown_method_fallback(
    api_server: ApiServer, api: Api
) -> None:
    """The fallback is asked last: health and reflection still answer as themselves."""
    assert api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10) is not None
    with grpc.insecure_channel(api_server.address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"", timeout=10) == b"\x08\x01"  # SERVING


def test_every_line_on_stderr_is_json_with_a_utc_timestamp(
    databases: Databases, tmp_path: Path
) -> None:
    """What an operator pipes into jq: start-up lines, grpc's own C-core lines (made to
    appear here with GRPC_VERBOSITY=info), and one line per call, failed ones included."""
    stderr = tmp_path / "stderr.log"
    env = {
        **os.environ,
        "STUDIO_DATABASE_URL": databases.create("jsonlog_master"),
        "GRPC_VERBOSITY": "info",  # grpc's C core writes plain text to fd 2 by itself
    }
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [STUDIO, "serve", "--port", "0", "--http-port", "0", "--data-dir",
             str(tmp_path / "data")],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        stdout = []
        while not (stdout and stdout[-1].startswith(READY)):
            line = process.stdout.readline()
            assert line, "studio serve exited:\n" + stderr.read_text()
            stdout.append(line)
        port = int(stdout[-1].rsplit(":", 1)[1])
        key = (tmp_path / "data" / "demo-api-key").read_text().strip()
        _calls_that_succeed_and_fail(f"127.0.0.1:{port}", key)
    finally:
        process.terminate()
        assert process.wait(30) == 0
    stdout += process.stdout.readlines()
    process.stdout.close()
    # stdout is for scripts: the announcements, plain text, and nothing else
    assert [" ".join(line.split()[:2]) for line in stdout] == [
        "demo tenant",
        "serving HTTP",
        "serving gRPC",
    ]

    lines = stderr.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, or this fails
    assert all(isinstance(entry, dict) for entry in entries)
    for entry in entries:
        assert RFC3339_UTC.fullmatch(entry["ts"]), entry
        when = datetime.fromisoformat(entry["ts"])
        assert when.utcoffset() is not None
        assert abs((datetime.now(UTC) - when).total_seconds()) < 600
        assert {"level", "logger"} <= entry.keys()
    assert any(e["logger"] == "stderr" for e in entries)  # grpc C core's own lines, relayed
    assert any(e["logger"] == "studio.serve" and "shutting down" in e["msg"] for e in entries)
    calls = {e["request_id"]: e for e in entries if e["logger"] == "studio.call" and "method" in e}
    assert {rid: (e["code"], e.get("reason")) for rid, e in calls.items()
            if rid.startswith("json-")} == {
        "json-ok": ("OK", None),
        "json-not-found": ("NOT_FOUND", "CLIENT_NOT_FOUND"),
        "json-no-key": ("UNAUTHENTICATED", "MISSING_CREDENTIALS"),
        "json-invalid": ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        "json-unknown": ("UNIMPLEMENTED", "UNKNOWN_METHOD"),
    }  # fmt: skip
    ok = calls["json-ok"]
    assert ok["method"] == "/studio.v1.ClientService/CreateClient"
    assert ok["tenant"] == "demo"
    assert isinstance(ok["ms"], float)
    assert ok["key"]
    assert ok["key"] in key  # the key's prefix, never the key
    assert key not in stderr.read_text()


def _calls_that_succeed_and_fail(address: str, key: str) -> None:
    def rid(name: str) -> list[tuple[str, str]]:
        return [("x-request-id", f"json-{name}")]

    api, anonymous = Api(address, key), Api(address, None)
    try:
        api.clients.CreateClient(
            client_pb2.CreateClientRequest(client=client_pb2.Client(name="Logged")),
            metadata=rid("ok"), timeout=10,
        )  # fmt: skip
        failing = [
            lambda: api.clients.GetClient(
                client_pb2.GetClientRequest(id=424242), metadata=rid("not-found"), timeout=10
            ),
            lambda: anonymous.clients.ListClients(
                client_pb2.ListClientsRequest(), metadata=rid("no-key"), timeout=10
            ),
            lambda: api.clients.CreateClient(
                client_pb2.CreateClientRequest(), metadata=rid("invalid"), timeout=10
            ),
            lambda: api.channel.unary_unary("/studio.v1.ClientService/Nope")(
                b"", metadata=rid("unknown"), timeout=10
            ),
        ]
        for call in failing:
            with pytest.raises(grpc.RpcError):
                call()
    finally:
        api.close()
        anonymous.close()
