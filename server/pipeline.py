"""The middleware every call goes through, outermost first:

    [count_call] -> log_call -> map_errors -> admit -> limit_size -> apply_deadline
                 -> authenticate -> parse_and_validate -> in_transaction -> the procedure

Each middleware is a small function `(call, next) -> response`. Only `map_errors` talks to
the transport about failures; everything inside raises `ApiError`s (or lets database errors
through). `count_call` is there with `--metrics-port` only (server/metrics.py). A method the
server does not have takes the same path up to the limits, and is then answered
UNIMPLEMENTED: it is logged and carries ErrorInfo too.

The pipeline knows no transport: each one (gRPC, Connect and gRPC-Web) is an adapter in
server/adapters/ that hands `run` the call's bytes and a CallContext (server/call_context.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError, Message

from server.auth_throttle import FailedAuthThrottle, peer_host
from server.context import Ctx
from server.error_mapping import (
    error_from_exception,
    is_retryable,
    location_may_have_changed,
    to_rpc_status,
)
from server.errors import (
    ApiError,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from server.router import Procedure
from server.validation import validate

if TYPE_CHECKING:
    from db.sql import Connection
    from db.tenant_pools import TenantPools
    from server.auth import Authenticator, Principal
    from server.call_context import CallContext, Metadata
    from server.metrics import Metrics

__all__ = [
    "MAX_REQUEST_BYTES",
    "UNKNOWN_PROCEDURE",
    "Call",
    "Next",
    "Pipeline",
]

log = logging.getLogger("studio.call")
MAX_REQUEST_ID = 128
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # a serialized request; more is MESSAGE_TOO_LARGE
TRANSACTION_ATTEMPTS = 3


@dataclass
class Call:
    method: str  # the path called: "/studio.v1.SessionService/GetSession"
    procedure: Procedure  # UNKNOWN_PROCEDURE when the server has no such method
    raw: bytes
    context: CallContext  # the transport's side of the call
    metadata: Metadata  # the call's invocation metadata, read once
    request_id: str
    principal: Principal | None = None
    request: Message | None = None
    db: Connection | None = None
    error: ApiError | None = None
    code: str = "OK"  # how it ended and how long it took, once log_call has returned
    seconds: float = 0.0


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
    """One line per call: method, code, duration, tenant, key prefix (never the key), request
    id, and the reason of a failure. A dict: the JSON formatter writes its fields as the
    line's (server/log_format.py). The code and the duration stay on the call, for the
    metrics."""
    started = time.perf_counter()
    try:
        return await next_(call)
    except asyncio.CancelledError:  # by the transport: the caller left or its deadline passed
        remaining = call.context.time_remaining()
        call.code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
        raise
    except BaseException:
        call.code = call.error.code.name if call.error else "UNKNOWN"
        raise
    finally:
        call.seconds = time.perf_counter() - started
        record = {
            "method": call.method,
            "code": call.code,
            "ms": round(call.seconds * 1000, 2),
            "tenant": call.principal.tenant.slug if call.principal else None,
            "key": call.principal.key_prefix if call.principal else None,
            "request_id": call.request_id,
        }
        if call.error is not None:
            record["reason"] = call.error.reason
        log.info(record)


async def map_errors(call: Call, next_: Next) -> Message:
    """Turn every failure into a google.rpc.Status; unexpected ones into a generic INTERNAL.
    The transport sends it in its own form."""
    try:
        return await next_(call)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = error_from_exception(exc, deleting=call.procedure.deletes)
        if isinstance(error, Internal) and not isinstance(exc, ApiError):
            log.error({"msg": "unexpected error", "method": call.method,
                       "request_id": call.request_id}, exc_info=exc)  # fmt: skip
        call.error = error
    await call.context.abort(to_rpc_status(call.error, call.request_id))
    raise AssertionError("abort returned")  # pragma: no cover


async def limit_size(call: Call, next_: Next) -> Message:
    """Our limit on a request's size, with ErrorInfo; the transports themselves accept up to a
    ceiling above it (server/adapters/), so that a request a little too large reaches us."""
    if len(call.raw) > MAX_REQUEST_BYTES:
        raise ResourceExhausted(
            "MESSAGE_TOO_LARGE",
            f"the request is {len(call.raw)} bytes; at most {MAX_REQUEST_BYTES} are accepted",
            metadata={"limitBytes": str(MAX_REQUEST_BYTES), "sizeBytes": str(len(call.raw))},
        )
    return await next_(call)


async def refuse_unknown_method(call: Call) -> Message:
    raise Unimplemented(
        "UNKNOWN_METHOD",
        f"this server has no method {call.method} (server reflection lists those it has)",
        metadata={"method": call.method},
    )


async def _no_handler(ctx: Ctx, request: Message) -> Message:
    raise AssertionError("an unknown method has no procedure")  # pragma: no cover


# What a call to a method the server does not have runs as (its request is never read).
UNKNOWN_PROCEDURE = Procedure(
    service="", name="", request_type=Empty, response_type=Empty, handler=_no_handler,
    query=True, single_statement=True,
)  # fmt: skip


def _bound(middleware: Middleware, next_: Next) -> Next:
    async def call_with_rest(call: Call) -> Message:
        return await middleware(call, next_)

    return call_with_rest


def _compose(middleware: tuple[Middleware, ...], last: Next) -> Next:
    """The chain, composed once: each middleware bound to the rest of the chain."""
    chain = last
    for step in reversed(middleware):
        chain = _bound(step, chain)
    return chain


class Pipeline:
    def __init__(
        self,
        authenticator: Authenticator,
        pools: TenantPools,
        throttle: FailedAuthThrottle | None = None,
        *,
        max_concurrent_calls: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.pools = pools
        self.throttle = throttle or FailedAuthThrottle()
        self.max_concurrent_calls = max_concurrent_calls
        self.in_flight = 0
        self.draining = False
        self._drained = asyncio.Event()
        counted: tuple[Middleware, ...] = (metrics.count_call,) if metrics else ()
        admission = (*counted, log_call, map_errors, self.admit, limit_size)
        self.chain = _compose(
            (
                *admission,
                self.apply_deadline,
                self.authenticate,
                self.parse_and_validate,
                self.in_transaction,
            ),
            self.invoke,
        )
        self.unknown_method_chain = _compose(admission, refuse_unknown_method)

    async def run(
        self,
        method: str,
        procedure: Procedure,
        raw: bytes,
        context: CallContext,
    ) -> bytes:
        metadata = context.metadata()
        call = Call(method, procedure, raw, context, metadata, _request_id(metadata))
        chain = self.unknown_method_chain if procedure is UNKNOWN_PROCEDURE else self.chain
        response = await chain(call)
        context.set_trailers((("x-request-id", call.request_id),))
        return context.encode(response)

    async def admit(self, call: Call, next_: Next) -> Message:
        """Counts the calls in flight. Refused at once rather than queued without bound: past
        `max_concurrent_calls`, and every new call once the server drains for a shutdown (so
        each gets our UNAVAILABLE, with ErrorInfo and a log line, not whatever a transport
        answers a call that races its shutdown). A plain counter: the loop runs one call at
        a time."""
        if self.draining:
            raise Unavailable(
                "SHUTTING_DOWN", "this server is shutting down; retry, another one will answer"
            )
        if self.max_concurrent_calls is not None and self.in_flight >= self.max_concurrent_calls:
            raise ResourceExhausted(
                "TOO_MANY_CALLS",
                f"this server is at its limit of {self.max_concurrent_calls} calls in flight;"
                " retry with backoff",
                metadata={"maxConcurrentCalls": str(self.max_concurrent_calls)},
            )
        self.in_flight += 1
        try:
            return await next_(call)
        finally:
            self.in_flight -= 1
            if self.draining and not self.in_flight:
                self._drained.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new calls from now on; wait up to `grace` seconds for those in flight.
        True if none is left."""
        self.draining = True
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        return not self.in_flight

    async def apply_deadline(self, call: Call, next_: Next) -> Message:
        """A call whose deadline has already passed does no work. When it passes during the
        call, the transport cancels the call, and psycopg cancels the statement running in
        PostgreSQL for it (psycopg does so for any cancelled execute; a transaction rolls back).
        There is no timer of ours as well: a second cancellation arriving while psycopg
        sends its cancel request would interrupt it and leave the statement running.
        Transactions also carry the deadline as statement_timeout (in_transaction), and every
        connection caps statements at 30 s (db/tenant_pools.py)."""
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
            call.request = call.context.decode(call.procedure.request_type, call.raw)
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
        the process's budget of connections (db/tenant_pools.py): none free in time is a
        pool timeout, RESOURCE_EXHAUSTED."""
        assert call.principal is not None
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                async with self.pools.connect(call.principal.tenant) as call.db:
                    if call.procedure.single_statement:
                        return await next_(call)
                    await call.db.execute(_begin(call.context.time_remaining()))
                    response = await next_(call)
                    await call.db.commit()
                    return response
                # (a failure leaves the transaction open: the pool rolls it back on return)
            except Exception as exc:
                if location_may_have_changed(exc):  # a move, say: find the studio again
                    self.authenticator.location_failed(call.principal.tenant)
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
