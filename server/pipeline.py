"""The middleware every call goes through, outermost first:

    log_call -> map_errors -> apply_deadline -> authenticate -> parse_and_validate
             -> in_transaction -> the procedure

Each middleware is a small function `(call, next) -> response`. Only `map_errors` talks to
gRPC about failures; everything inside raises `ApiError`s (or lets database errors through).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError, Message

from server.auth_throttle import FailedAuthThrottle, peer_host
from server.context import Ctx
from server.error_mapping import error_from_exception, is_retryable, to_status
from server.errors import (
    ApiError,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from server.validation import validate

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from db.tenant_engines import TenantEngines
    from server.auth import Authenticator, Principal
    from server.router import Procedure

__all__ = ["Call", "Pipeline", "method_handlers"]

log = logging.getLogger("studio.call")
MAX_REQUEST_ID = 128
TRANSACTION_ATTEMPTS = 3


@dataclass
class Call:
    procedure: Procedure
    raw: bytes
    context: grpc.aio.ServicerContext[bytes, bytes]
    metadata: Metadata  # the call's invocation metadata, read once
    request_id: str
    principal: Principal | None = None
    request: Message | None = None
    db: AsyncConnection | None = None
    error: ApiError | None = None


Metadata = tuple[tuple[str, str | bytes], ...]
Next = Callable[[Call], Awaitable[Message]]
Middleware = Callable[[Call, Next], Awaitable[Message]]


# Our request ids: a random prefix per process and a counter (unique without a system call
# for random bytes per call, as uuid4 needs).
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def _request_id(metadata: Metadata) -> str:
    given = next((v for k, v in metadata if k == "x-request-id"), None)
    if isinstance(given, str) and 0 < len(given) <= MAX_REQUEST_ID and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


async def log_call(call: Call, next_: Next) -> Message:
    """One structured line per call: method, code, duration, tenant, request id (no key)."""
    started = time.perf_counter()
    code = "OK"
    try:
        return await next_(call)
    except asyncio.CancelledError:  # by gRPC: the caller went away or its deadline passed
        remaining = call.context.time_remaining()
        code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
        raise
    except BaseException:
        code = call.error.code.name if call.error else "UNKNOWN"
        raise
    finally:
        record = {
            "method": call.procedure.path,
            "code": code,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            "tenant": call.principal.tenant.slug if call.principal else None,
            "key": call.principal.key_prefix if call.principal else None,
            "request_id": call.request_id,
        }
        if call.error is not None:
            record["reason"] = call.error.reason
        log.info(json.dumps(record))


async def map_errors(call: Call, next_: Next) -> Message:
    """Turn every failure into a google.rpc.Status; unexpected ones into a generic INTERNAL."""
    try:
        return await next_(call)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = error_from_exception(exc, deleting=call.procedure.deletes)
        if isinstance(error, Internal) and not isinstance(exc, ApiError):
            log.error("unexpected error in %s (request %s)", call.procedure.path,
                      call.request_id, exc_info=exc)  # fmt: skip
        call.error = error
    await call.context.abort_with_status(to_status(call.error, call.request_id))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _bound(middleware: Middleware, next_: Next) -> Next:
    async def call_with_rest(call: Call) -> Message:
        return await middleware(call, next_)

    return call_with_rest


class Pipeline:
    def __init__(
        self,
        authenticator: Authenticator,
        engines: TenantEngines,
        throttle: FailedAuthThrottle | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.engines = engines
        self.throttle = throttle or FailedAuthThrottle()
        middleware: tuple[Middleware, ...] = (
            log_call,
            map_errors,
            self.apply_deadline,
            self.authenticate,
            self.parse_and_validate,
            self.in_transaction,
        )
        # The chain is composed once: each middleware bound to the rest of the chain.
        chain: Next = self.invoke
        for step in reversed(middleware):
            chain = _bound(step, chain)
        self.chain = chain

    async def run(
        self, procedure: Procedure, raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        metadata = tuple(context.invocation_metadata() or ())
        call = Call(procedure, raw, context, metadata, _request_id(metadata))
        response = await self.chain(call)
        context.set_trailing_metadata((("x-request-id", call.request_id),))
        return response.SerializeToString()

    async def apply_deadline(self, call: Call, next_: Next) -> Message:
        """A call whose deadline has already passed does no work. When it passes during the
        call, gRPC cancels the call, and psycopg cancels the statement running in PostgreSQL
        for it (psycopg does so for any cancelled execute; a transaction rolls back).
        There is no timer of ours as well: a second cancellation arriving while psycopg
        sends its cancel request would interrupt it and leave the statement running.
        Transactions also carry the deadline as statement_timeout (in_transaction), and every
        connection caps statements at 30 s (db/engines.py)."""
        remaining = call.context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("DEADLINE_EXCEEDED", "the call's deadline had passed")
        return await next_(call)

    async def authenticate(self, call: Call, next_: Next) -> Message:
        """The key decides who calls. An address that failed too often still gets in with a
        valid key (behind a load balancer every caller shares one address); its failures are
        answered RESOURCE_EXHAUSTED and cost it nothing more."""
        peer = peer_host(call.context.peer())
        throttled = self.throttle.throttled(peer)
        try:
            call.principal = await self.authenticator.authenticate(
                call.metadata, throttled=throttled
            )
        except Unauthenticated:
            if throttled:
                raise self.throttle.refusal(peer) from None
            self.throttle.failed(peer)
            raise
        if not call.procedure.query and not call.principal.can_write:
            raise PermissionDenied(
                "READ_ONLY_KEY", f"a read-only key cannot call {call.procedure.name}"
            )
        return await next_(call)

    async def parse_and_validate(self, call: Call, next_: Next) -> Message:
        try:
            call.request = call.procedure.request_type.FromString(call.raw)
        except DecodeError:
            raise InvalidArgument(
                "MALFORMED_REQUEST",
                f"the request is not a valid {call.procedure.request_type.DESCRIPTOR.full_name}",
            ) from None
        validate(call.request)
        return await next_(call)

    async def in_transaction(self, call: Call, next_: Next) -> Message:
        """One transaction per call, retried when PostgreSQL reports a serialization failure
        or a deadlock (the procedure runs again from the start). Tenant connections are in
        autocommit: a single-statement procedure runs as is (no BEGIN and COMMIT round trips
        for what one statement does); the others start with BEGIN, which carries the call's
        deadline as statement_timeout in the same round trip, and end with COMMIT (or
        ROLLBACK when anything fails). The connection comes from the tenant's pool, within
        the process's budget of connections (db/tenant_engines.py): none free in time is a
        pool timeout, RESOURCE_EXHAUSTED."""
        assert call.principal is not None
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                async with self.engines.connect(call.principal.tenant) as call.db:
                    if call.procedure.single_statement:
                        return await next_(call)
                    async with call.db.begin():
                        await call.db.exec_driver_sql(_begin(call.context.time_remaining()))
                        return await next_(call)
            except Exception as exc:
                if attempt == TRANSACTION_ATTEMPTS or not is_retryable(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def invoke(self, call: Call) -> Message:
        """The procedure itself, with the context the middleware built."""
        assert call.principal is not None
        assert call.db is not None
        assert call.request is not None
        return await call.procedure.handler(
            Ctx(call.principal, call.db, call.request_id), call.request
        )


def _begin(remaining: float | None) -> str:
    """BEGIN, with the deadline as statement_timeout when there is one: PostgreSQL enforces it
    too (a statement waiting for a lock stops there). Sent to the driver as is, in one simple
    query: the timeout differs for nearly every call, and SQLAlchemy's compiled cache would
    fill with one-off entries pushing out the statements that recur."""
    if remaining is None:
        return "BEGIN"
    return f"BEGIN; SET LOCAL statement_timeout = {max(1, int(remaining * 1000))}"


def method_handlers(
    pipeline: Pipeline, procedures: list[Procedure]
) -> dict[str, grpc.RpcMethodHandler[bytes, bytes]]:
    """gRPC handlers that hand raw bytes to the pipeline: parsing is ours, so that bytes
    that are not a valid message get INVALID_ARGUMENT rather than grpcio's UNKNOWN."""

    def behavior(procedure: Procedure) -> Callable[..., Awaitable[bytes]]:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return await pipeline.run(procedure, raw, context)

        return handle

    return {p.name: grpc.unary_unary_rpc_method_handler(behavior(p)) for p in procedures}
