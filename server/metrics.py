"""Prometheus metrics of a `studio serve` process (`--metrics-port`), the calls named as the
gRPC ecosystem names them (go-grpc-prometheus, py-grpc-prometheus), so that its dashboards and
alerts work as they are:

    grpc_server_started_total{grpc_type,grpc_service,grpc_method}
    grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
    grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}  (histogram)

and what the process holds:

    grpc_server_calls_in_flight  (calls admitted and not yet answered; the ecosystem has no
        such gauge and derives it per method as started - handled)

    studio_tenant_pools_open, studio_db_connections_in_use, studio_db_connections_open
    studio_db_connection_waits_total{limit}, studio_db_connection_wait_seconds_total{limit}
        limit="studio": every connection of the studio's pool was busy;
        limit="process": the process held --max-db-connections
    studio_api_key_cache_hits_total, studio_api_key_cache_misses_total
    studio_log_lines_dropped_total

Calls over the HTTP port (Connect, gRPC-Web) take the same pipeline and land in the same
series, with the same labels (grpc_type "unary", the procedure's service and method, the gRPC
code they end with): the pipeline does not know the transport, and a dashboard counts every
call. A method the server does not have is counted as service and method "unknown", so that
made-up names cannot add series without bound.

Cheap per call: `count_call` resolves a method's children on its first call and keeps them,
then does two counter increments and a histogram observation (four value updates), each an
uncontended lock of prometheus_client's (with --workers, a write into the worker's mmapped
file). The state of the process, calls in flight included, is not counted per call: the
event loop copies plain numbers the pipeline, the pools and the key cache keep into the
metrics every SAMPLE_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from server.batched_log import BatchedStreamHandler
from server.pipeline import UNKNOWN_PROCEDURE

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from server.pipeline import Call, Next, Pipeline

__all__ = ["HANDLING_BUCKETS", "SAMPLE_SECONDS", "Metrics"]

GRPC_TYPE = "unary"  # every procedure of ours is unary
UNKNOWN = "unknown"
METHOD_LABELS = ("grpc_type", "grpc_service", "grpc_method")
# From 1 ms: most calls take a few (the ecosystem's default starts at 5 ms).
HANDLING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SAMPLE_SECONDS = 1.0
LIVE: Literal["livesum"] = "livesum"  # a gauge of --workers: the sum over the workers alive


class _Method:
    """One method's children, made on its first call: a call does no label lookup, and a code
    is one dict lookup."""

    __slots__ = ("_codes", "_handled", "_labels", "seconds", "started")

    def __init__(self, metrics: Metrics, service: str, name: str) -> None:
        labels = (GRPC_TYPE, service, name)
        self.started = metrics.started.labels(*labels)
        self.seconds = metrics.handling_seconds.labels(*labels)
        self._handled = metrics.handled
        self._labels = labels
        self._codes: dict[str, Counter] = {}

    def handled(self, code: str) -> Counter:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._handled.labels(*self._labels, code)
        return child


class Metrics:
    def __init__(self) -> None:
        # No `_created` series (the ecosystem's have none, and they double a scrape's size).
        # For the process: a server's metrics are the only ones it has.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        self.started = Counter(
            "grpc_server_started", "RPCs started on the server.", METHOD_LABELS, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            (*METHOD_LABELS, "grpc_code"),
            registry=r,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Response latency (seconds) of RPCs handled by the server.",
            METHOD_LABELS,
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self.in_flight = self._gauge(
            "grpc_server_calls_in_flight", "RPCs admitted and not yet answered."
        )
        self.pools_open = self._gauge(
            "studio_tenant_pools_open", "Studios with a connection pool open."
        )
        self.connections_in_use = self._gauge(
            "studio_db_connections_in_use", "Tenant database connections checked out by calls."
        )
        self.connections_open = self._gauge(
            "studio_db_connections_open", "Tenant database connections open (the budget used)."
        )
        self.waits = Counter(
            "studio_db_connection_waits", "Calls that waited for a tenant database connection"
            " (limit: studio, its pool all busy; process, --max-db-connections held).",
            ("limit",), registry=r,
        )  # fmt: skip
        self.wait_seconds = Counter(
            "studio_db_connection_wait_seconds", "Seconds calls waited for a connection.",
            ("limit",), registry=r,
        )  # fmt: skip
        self.key_cache_hits = Counter(
            "studio_api_key_cache_hits", "API key lookups answered from the cache.", registry=r
        )
        self.key_cache_misses = Counter(
            "studio_api_key_cache_misses", "API key lookups sent to the master.", registry=r
        )
        self.log_lines_dropped = Counter(
            "studio_log_lines_dropped",
            "Log lines lost: the log stream blocked or failed (server/batched_log.py).",
            registry=r,
        )
        self._methods: dict[str, _Method] = {}

    def _gauge(self, name: str, documentation: str) -> Gauge:
        """A gauge sampled from the process's state; with --workers, summed over those alive."""
        return Gauge(name, documentation, registry=self.registry, multiprocess_mode=LIVE)

    def _method(self, call: Call) -> _Method:
        procedure = call.procedure
        key = UNKNOWN if procedure is UNKNOWN_PROCEDURE else call.method
        found = self._methods.get(key)
        if found is None:
            service, name = (UNKNOWN, UNKNOWN) if key == UNKNOWN else (procedure.service,
                                                                       procedure.name)  # fmt: skip
            found = self._methods[key] = _Method(self, service, name)
        return found

    async def count_call(self, call: Call, next_: Next) -> Message:
        """The middleware, just outside log_call: started, then handled with the code and the
        duration log_call gave the call (the log line and the metrics agree)."""
        method = self._method(call)
        method.started.inc()
        try:
            return await next_(call)
        finally:
            method.seconds.observe(call.seconds)
            method.handled(call.code).inc()

    async def sample_forever(self, pipeline: Pipeline) -> None:
        """Copy the process's plain numbers into the metrics, now and every SAMPLE_SECONDS."""
        pools, authenticator, budget = pipeline.pools, pipeline.authenticator, pipeline.pools.budget
        fed: list[tuple[Counter, Callable[[], float]]] = [
            (self.waits.labels("studio"), lambda: pools.pool_waits.count),
            (self.waits.labels("process"), lambda: budget.waits.count),
            (self.wait_seconds.labels("studio"), lambda: pools.pool_waits.seconds),
            (self.wait_seconds.labels("process"), lambda: budget.waits.seconds),
            (self.key_cache_hits, lambda: authenticator.cache_hits),
            (self.key_cache_misses, lambda: authenticator.cache_misses),
            (self.log_lines_dropped, dropped_log_lines),
        ]
        seen = [0.0] * len(fed)
        while True:
            self.in_flight.set(pipeline.in_flight)
            self.pools_open.set(len(pools))
            self.connections_in_use.set(pools.in_use())
            self.connections_open.set(budget.open)
            for n, (counter, total) in enumerate(fed):
                now = total()
                if now > seen[n]:
                    counter.inc(now - seen[n])
                    seen[n] = now
            await asyncio.sleep(SAMPLE_SECONDS)


def dropped_log_lines() -> int:
    """Lines this process's log handlers dropped so far."""
    handlers = logging.getLogger().handlers
    return sum(h.dropped for h in handlers if isinstance(h, BatchedStreamHandler))
