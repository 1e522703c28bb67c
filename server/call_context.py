"""What the pipeline needs from the transport a call came by, and nothing else.

The pipeline (server/pipeline.py) is one; each transport is a small adapter that implements
this interface, as tRPC's adapters carry one router over HTTP, websockets or Next.js:
server/adapters/grpc.py over grpc.aio's ServicerContext, server/adapters/connect.py over a
Connect (JSON or binary) or gRPC-Web request. Authentication, roles, validation, tenant
routing, transactions, error mapping and the call log never know which one it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, Protocol, TypeVar

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from google.rpc.status_pb2 import Status

__all__ = ["CallContext", "Metadata"]

# Request metadata as gRPC has it: (lower-case name, value) pairs, in order.
Metadata = tuple[tuple[str, str | bytes], ...]
M = TypeVar("M", bound="Message")


class CallContext(Protocol):
    def metadata(self) -> Metadata:
        """The request's metadata (gRPC) or headers (HTTP), names in lower case."""
        ...

    def peer(self) -> str:
        """The caller's address as gRPC writes it ("ipv4:127.0.0.1:5555", "ipv6:[::1]:5555"),
        whatever the transport: failed authentications are counted per address, so a caller
        gets no more guesses by switching transports."""
        ...

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline; None without one."""
        ...

    def decode(self, request_type: type[M], raw: bytes) -> M:
        """The request from its bytes as sent (binary protobuf or, over Connect, JSON);
        DecodeError, or an ApiError saying what is wrong, when they are not one."""
        ...

    def encode(self, response: Message) -> bytes:
        """The response as the caller asked for it (binary protobuf or JSON)."""
        ...

    def set_trailers(self, metadata: Metadata) -> None:
        """Metadata sent after a successful response (gRPC trailers, Connect `trailer-*`)."""
        ...

    async def abort(self, status: Status) -> NoReturn:
        """End the call with this google.rpc.Status: its code, message and details
        (ErrorInfo, BadRequest) in the transport's own form. Does not return."""
        ...
