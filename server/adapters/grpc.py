"""The gRPC adapter: grpc.aio handlers that hand raw bytes and a CallContext to the pipeline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

import grpc
from grpc_status import rpc_status

from server.pipeline import UNKNOWN_PROCEDURE, Pipeline

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from google.rpc.status_pb2 import Status

    from server.call_context import Metadata
    from server.router import Procedure

__all__ = ["GrpcCall", "UnknownMethods", "method_handlers"]

M = TypeVar("M", bound="Message")
Context = grpc.aio.ServicerContext[bytes, bytes]


class GrpcCall:
    """A CallContext over grpc.aio's ServicerContext."""

    __slots__ = ("_context",)

    def __init__(self, context: Context) -> None:
        self._context = context

    def metadata(self) -> Metadata:
        return tuple(self._context.invocation_metadata() or ())

    def peer(self) -> str:
        return self._context.peer()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def decode(self, request_type: type[M], raw: bytes) -> M:
        return request_type.FromString(raw)

    def encode(self, response: Message) -> bytes:
        return response.SerializeToString()

    def set_trailers(self, metadata: Metadata) -> None:
        self._context.set_trailing_metadata(metadata)

    async def abort(self, status: Status) -> NoReturn:
        await self._context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")  # pragma: no cover


def method_handlers(
    pipeline: Pipeline, procedures: list[Procedure]
) -> dict[str, grpc.RpcMethodHandler[bytes, bytes]]:
    """gRPC handlers that hand raw bytes to the pipeline: parsing is ours, so that bytes
    that are not a valid message get INVALID_ARGUMENT rather than grpcio's UNKNOWN."""

    def behavior(procedure: Procedure) -> Callable[..., Awaitable[bytes]]:
        method = procedure.path

        async def handle(raw: bytes, context: Context) -> bytes:
            return await pipeline.run(method, procedure, raw, GrpcCall(context))

        return handle

    return {p.name: grpc.unary_unary_rpc_method_handler(behavior(p)) for p in procedures}


class UnknownMethods(grpc.GenericRpcHandler):
    """Answers every method no other handler has, through the pipeline: UNIMPLEMENTED with
    ErrorInfo, and a log line, where grpc alone would answer a bare UNIMPLEMENTED. Added
    after every other handler: grpc asks them in order."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        method = str(handler_call_details.method)
        pipeline = self.pipeline

        # A streaming handler: the answer comes without reading the request, whatever kind
        # of call the caller thought it made (a unary handler would wait for a message that
        # a streaming caller may never send).
        async def refuse(requests: object, context: Context) -> None:
            await pipeline.run(method, UNKNOWN_PROCEDURE, b"", GrpcCall(context))

        return grpc.stream_stream_rpc_method_handler(refuse)
