"""The Connect and gRPC-Web adapter: one ASGI application, on connectrpc, for every router.

connectrpc speaks the protocols: Connect unary over POST (binary `application/proto` or
`application/json`) and over GET for queries (`NO_SIDE_EFFECTS` in the proto), gRPC-Web, the
`connect-timeout-ms` and `grpc-timeout` deadlines, gzip, and the Connect JSON error. Its codecs
here leave the bytes alone: the pipeline decodes the request (so that a malformed one is our
MALFORMED_REQUEST, with ErrorInfo and a log line) and this adapter encodes the response, as
the gRPC adapter does. Errors carry the same google.rpc.Status details as over gRPC
(ErrorInfo, BadRequest, and the readable Struct, which the JSON error shows as "debug").

A path the server has no method for goes through the pipeline too (UNIMPLEMENTED,
UNKNOWN_METHOD), as over gRPC. What connectrpc refuses before a call exists (an HTTP method
other than GET or POST, an unknown content type, a malformed timeout header) it answers itself.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import json_format
from protobuf.wkt import Any as AnyDetail
from protobuf.wkt import Struct as StructDetail

from server.adapters import RECEIVE_CEILING_BYTES
from server.errors import InvalidArgument
from server.pipeline import UNKNOWN_PROCEDURE, Pipeline

if TYPE_CHECKING:
    from connectrpc._server_shared import EndpointUnary  # what Endpoint.unary() returns
    from connectrpc.request import RequestContext
    from google.protobuf.any_pb2 import Any as PackedAny
    from google.protobuf.message import Message
    from google.rpc.status_pb2 import Status

    from server.call_context import Metadata
    from server.router import Procedure

__all__ = ["ConnectApp", "ConnectCall", "Cors", "JsonBody"]

M = TypeVar("M", bound="Message")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# gRPC's numbers (google.rpc.Code) as Connect names them.
CODES: dict[int, Code] = {
    1: Code.CANCELED, 2: Code.UNKNOWN, 3: Code.INVALID_ARGUMENT, 4: Code.DEADLINE_EXCEEDED,
    5: Code.NOT_FOUND, 6: Code.ALREADY_EXISTS, 7: Code.PERMISSION_DENIED,
    8: Code.RESOURCE_EXHAUSTED, 9: Code.FAILED_PRECONDITION, 10: Code.ABORTED,
    11: Code.OUT_OF_RANGE, 12: Code.UNIMPLEMENTED, 13: Code.INTERNAL, 14: Code.UNAVAILABLE,
    15: Code.DATA_LOSS, 16: Code.UNAUTHENTICATED,
}  # fmt: skip
STRUCT_TYPE_URL = "type.googleapis.com/google.protobuf.Struct"


class JsonBody(bytes):
    """A request in Connect's JSON; a binary one is plain bytes."""

    __slots__ = ()


class _RawCodec:
    """A connectrpc codec that hands the bytes over as they came: the pipeline decodes."""

    def __init__(self, name: str, body: Callable[[bytes], bytes]) -> None:
        self._name = name
        self._body = body

    def name(self) -> str:
        return self._name

    def encode(self, message: bytes) -> bytes:
        return message  # encoded already, by ConnectCall.encode

    def decode(self, data: bytes | bytearray, message_class: type[bytes]) -> bytes:
        return self._body(bytes(data))


CODECS = [_RawCodec("proto", bytes), _RawCodec("json", JsonBody)]


class ConnectCall:
    """A CallContext over a connectrpc request (Connect or gRPC-Web)."""

    __slots__ = ("_ctx", "_json")

    def __init__(self, ctx: RequestContext[bytes, bytes], *, json: bool) -> None:
        self._ctx = ctx
        self._json = json

    def metadata(self) -> Metadata:
        return tuple(self._ctx.request_headers.allitems())

    def peer(self) -> str:
        address = self._ctx.client_address or "unknown:0"
        host, _, port = address.rpartition(":")
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{address}"

    def time_remaining(self) -> float | None:
        remaining_ms = self._ctx.timeout_ms
        return None if remaining_ms is None else remaining_ms / 1000

    def decode(self, request_type: type[M], raw: bytes) -> M:
        if not self._json:
            return request_type.FromString(raw)
        request = request_type()
        try:
            json_format.Parse(raw, request, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError) as exc:
            raise InvalidArgument(
                "MALFORMED_REQUEST",
                f"the request is not a valid {request_type.DESCRIPTOR.full_name} in JSON: {exc}",
            ) from None
        return request

    def encode(self, response: Message) -> bytes:
        if not self._json:
            return response.SerializeToString()
        as_dict = json_format.MessageToDict(response)
        return json.dumps(as_dict, separators=(",", ":"), ensure_ascii=False).encode()

    def set_trailers(self, metadata: Metadata) -> None:
        trailers = self._ctx.response_trailers
        for key, value in metadata:
            trailers[key] = value if isinstance(value, str) else value.decode()

    async def abort(self, status: Status) -> NoReturn:
        raise ConnectError(
            CODES.get(status.code, Code.UNKNOWN),
            status.message,
            [_detail(d) for d in status.details],
        )


def _detail(packed: PackedAny) -> ErrorDetail:
    """A google.protobuf.Any as connectrpc carries it. The Struct is unpacked, so that the JSON
    error shows it as "debug": reason, domain, metadata and field violations, readable by
    curl; the typed details stay as the bytes connect-es decodes."""
    if packed.type_url == STRUCT_TYPE_URL:
        return ErrorDetail(StructDetail.from_binary(packed.value))
    return ErrorDetail(AnyDetail(type_url=packed.type_url, value=packed.value))


def _method(service: str, name: str, *, query: bool) -> MethodInfo[bytes, bytes]:
    level = IdempotencyLevel.NO_SIDE_EFFECTS if query else IdempotencyLevel.UNKNOWN
    return MethodInfo(
        name=name, service_name=service, input=bytes, output=bytes,
        idempotency_level=level, stream_type=StreamType.UNARY,
    )  # fmt: skip


def _endpoint(pipeline: Pipeline, procedure: Procedure) -> EndpointUnary[bytes, bytes]:
    path = procedure.path

    async def handle(raw: bytes, ctx: RequestContext[bytes, bytes]) -> bytes:
        call = ConnectCall(ctx, json=type(raw) is JsonBody)
        return await pipeline.run(path, procedure, raw, call)

    method = _method(procedure.service, procedure.name, query=procedure.query)
    return Endpoint.unary(method=method, function=handle)


def _unknown_endpoint(pipeline: Pipeline, path: str) -> EndpointUnary[bytes, bytes]:
    """A method the server does not have: the pipeline answers (GET or POST alike)."""

    async def refuse(raw: bytes, ctx: RequestContext[bytes, bytes]) -> bytes:
        call = ConnectCall(ctx, json=type(raw) is JsonBody)
        return await pipeline.run(path, UNKNOWN_PROCEDURE, b"", call)

    return Endpoint.unary(method=_method("", "", query=True), function=refuse)


class _Endpoints(Mapping[str, "EndpointUnary[bytes, bytes]"]):
    """Our procedures by path; connectrpc looks a path up with get(), and a path that is not
    ours gets an endpoint that refuses it through the pipeline."""

    def __init__(self, pipeline: Pipeline, procedures: list[Procedure]) -> None:
        self._pipeline = pipeline
        self._known = {p.path: _endpoint(pipeline, p) for p in procedures}

    def __getitem__(self, path: str) -> EndpointUnary[bytes, bytes]:
        return self._known[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)

    def get(self, path: str, default: object = None) -> EndpointUnary[bytes, bytes]:
        found = self._known.get(path)
        return found if found is not None else _unknown_endpoint(self._pipeline, path)


class ConnectApp(ConnectASGIApplication[Pipeline]):
    """Every procedure of `procedures` at its gRPC path (/studio.v1.SessionService/...)."""

    def __init__(self, pipeline: Pipeline, procedures: list[Procedure]) -> None:
        endpoints = _Endpoints(pipeline, procedures)
        super().__init__(
            service=pipeline,
            endpoints=lambda _pipeline: endpoints,
            codecs=CODECS,
            read_max_bytes=RECEIVE_CEILING_BYTES,
        )

    @property
    def path(self) -> str:
        return "/"


# What a browser may send and read across origins: connect-web's and grpc-web's headers, the
# API key, and our request id (a trailer: Connect sends it as trailer-x-request-id).
ALLOWED_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms,"
    " grpc-timeout, x-grpc-web, x-user-agent, x-request-id"
)
EXPOSED_HEADERS = (
    "grpc-status, grpc-message, grpc-status-details-bin, x-request-id, trailer-x-request-id"
)
PREFLIGHT_MAX_AGE = "7200"


class Cors:
    """CORS for the origins given (`*`: any). Preflights are answered here; other requests
    from an allowed origin get the headers a browser needs to read the answer. A request from
    any other origin passes as it is, without them, so the browser keeps the answer from the
    page. No credentials: the API key travels in the authorization header, not in cookies."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 origins: Collection[str]) -> None:  # fmt: skip
        self.app = app
        self.any_origin = "*" in origins
        self.origins = frozenset(o.encode() for o in origins)

    def _allowed(self, scope: Scope) -> bytes | None:
        for key, value in scope.get("headers", ()):
            if key == b"origin":
                return value if self.any_origin or value in self.origins else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = self._allowed(scope) if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        common = [(b"access-control-allow-origin", origin), (b"vary", b"origin")]
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": [
                *common,
                (b"access-control-allow-methods", b"GET, POST"),
                (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
            ]})  # fmt: skip
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        async def send_with_cors(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()), *common,
                    (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                ]  # fmt: skip
            await send(message)

        await self.app(scope, receive, send_with_cors)
