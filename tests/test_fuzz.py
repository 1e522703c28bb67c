"""Property-based requests for every RPC (hypothesis): whatever a caller sends, the answer is a
documented status, never INTERNAL or UNKNOWN, and a refused request changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from server.routers import ROUTERS
from studio.v1 import time_entry_pb2
from tests.api import Api
from tests.conftest import ApiServer, Tenant

REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,  # a fuzzed etag that is not the current one
}
# What a request, however strange, may get. Not INTERNAL or UNKNOWN (a bug of ours), nor
# UNAVAILABLE or DEADLINE_EXCEEDED (the server crashed or hung on it).
DOCUMENTED = {grpc.StatusCode.OK, *REFUSALS}
NASTY_TEXT = st.sampled_from([
    "", "Robert'); DROP TABLE sessions;--", "1 OR 1=1", "\x00", "a\x00b", "é" * 300,
    "𝄞 music", "\\", "%s %(x)s {0}", " " * 10, "x" * 100_000,
])  # fmt: skip
INT64 = st.one_of(st.integers(-3, 50), st.integers(-(2**63), 2**63 - 1))
INT32 = st.one_of(st.integers(-3, 2000), st.integers(-(2**31), 2**31 - 1))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return INT64
    if kind == FieldDescriptor.TYPE_INT32:
        return INT32
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-2, 12)  # includes values the enum does not define
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(NASTY_TEXT, st.text(max_size=40),
                         st.from_regex(r"^[0-9]{1,10}(\.[0-9]{1,3})?$"))  # fmt: skip
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=40)
    raise AssertionError(f"no strategy for {field.full_name}")


def _message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            name = field.message_type.full_name
            if name == "google.protobuf.Timestamp":
                value: st.SearchStrategy[Any] = st.fixed_dictionaries({
                    "seconds": st.integers(-62135596800 - 10, 253402300799 + 10),
                    "nanos": st.integers(-1, 1_000_000_000),
                })  # fmt: skip
            elif name == "google.protobuf.FieldMask":
                resource = descriptor.fields[0].message_type or descriptor
                path = st.one_of(
                    st.sampled_from([*(f.name for f in resource.fields), "*"]),
                    st.text(max_size=10),
                )
                value = st.fixed_dictionaries({"paths": st.lists(path, max_size=4)})
            elif depth < 1:
                value = _message(field.message_type, depth + 1)
            else:
                continue
        else:
            value = _scalar(field)
        fields[field.name] = value
    return st.fixed_dictionaries({}, optional=fields)


def _build(message_type: type[Message], values: dict[str, Any]) -> Message | None:
    message = message_type()
    try:
        for name, value in values.items():
            if isinstance(value, dict):
                nested = _build(type(getattr(message, name)), value)
                if nested is None:
                    return None
                getattr(message, name).CopyFrom(nested)
            elif isinstance(value, list):
                getattr(message, name).extend(value)
            else:
                setattr(message, name, value)
    except (ValueError, TypeError):
        return None  # not representable in this message (e.g. an int out of the field's range)
    return message


def _fingerprint(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [
            conn.execute(f"SELECT count(*), coalesce(sum(version), 0) FROM {table}").fetchone()
            for table in (
                "clients",
                "rooms",
                "projects",
                "sessions",
                "tracks",
                "task_types",
                "time_entries",
            )
        ]  # type: ignore[misc]


PROCEDURES = [p for router in ROUTERS for p in router.all()]


@pytest.fixture(scope="module")
def fuzz_target(api_server: ApiServer) -> Iterator[tuple[Api, Tenant]]:
    tenant = api_server.new_tenant("fuzz")
    api = api_server.api(tenant.key)
    try:
        client = api.client("Fuzz client")  # a few rows of each, so that ids 1..3 exist
        room = api.room("Fuzz room")
        project = api.project(client.id)
        session = api.session(client.id, room.id, project_id=project.id)
        track = api.track(project.id, "Fuzz track", track_number=1)
        task_type = api.task_type("Fuzz work")
        for context in ({"session_id": session.id}, {"track_id": track.id}):
            api.time.StartTimer(
                time_entry_pb2.StartTimerRequest(task_type_id=task_type.id, **context), timeout=10
            )
        yield api, tenant
    finally:
        api.close()


@pytest.mark.parametrize("procedure", PROCEDURES, ids=lambda p: p.name)
def test_every_rpc_answers_fuzzed_requests_with_a_documented_status(
    api_server: ApiServer, fuzz_target: tuple[Api, Tenant], procedure: Any
) -> None:
    api, tenant = fuzz_target
    call = api.channel.unary_unary(
        procedure.path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=procedure.response_type.FromString,
    )

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(values=_message(procedure.request_type.DESCRIPTOR))
    def check(values: dict[str, Any]) -> None:
        request = _build(procedure.request_type, values)
        assume(request is not None)  # hypothesis reports it when too many are discarded
        assert request is not None
        before = _fingerprint(tenant.url)
        code = grpc.StatusCode.OK
        try:
            call(request, timeout=30)
        except grpc.RpcError as error:
            code = error.code()
        assert code in DOCUMENTED, (code, request)
        if code in REFUSALS:
            assert _fingerprint(tenant.url) == before, request  # refused: nothing changed

    check()
    assert api_server.server.process.poll() is None  # still serving
