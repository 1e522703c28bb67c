"""Assembling the running service: master engine, authentication, tenant pools, the one
pipeline, its two servers (gRPC; Connect and gRPC-Web over HTTP), and the background work that
keeps them healthy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import text

from db.engines import create_engine_for
from db.tenant_pools import TenantPools
from server.adapters.connect import ConnectApp, Cors
from server.auth import Authenticator
from server.auth_throttle import FailedAuthThrottle
from server.grpc_server import ServingServer, TlsFiles, start_server
from server.http_server import HttpServer, start_http_server
from server.pipeline import Pipeline
from server.routers import ROUTERS

if TYPE_CHECKING:
    from server.metrics import Metrics

__all__ = ["App", "start_app"]

log = logging.getLogger("studio.app")
HEALTH_PROBE_SECONDS = 1.0
IDLE_SWEEP_SECONDS = 30.0
TASK_STOP_SECONDS = 5.0


@dataclass
class App:
    serving: ServingServer
    pipeline: Pipeline
    pools: TenantPools
    authenticator: Authenticator
    http: HttpServer | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.serving.port

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    async def stop(self, grace: float, drain_seconds: float = 0.0) -> None:
        """Stop serving and close every pool; completes even if a background task died (its
        death was logged when it happened) or will not end when cancelled.

        Health says NOT_SERVING at once. For `drain_seconds` calls are still served as usual,
        so that a load balancer's health check sees the status and stops sending calls here
        before any is refused. Then new calls are refused by the pipeline (UNAVAILABLE,
        SHUTTING_DOWN); calls in flight get `grace` seconds, after which they are cancelled
        as the servers stop."""
        await self.serving.leave_rotation()
        if drain_seconds > 0:
            log.info("leaving rotation: health NOT_SERVING, still serving for %.1fs", drain_seconds)
            await asyncio.sleep(drain_seconds)
        deadline = asyncio.get_running_loop().time() + grace
        await self.pipeline.drain(grace)
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            _, stuck = await asyncio.wait(self.tasks, timeout=TASK_STOP_SECONDS)
            for task in stuck:
                log.error("background task %s did not stop when cancelled", task.get_name())
        try:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            servers = [self.serving.stop(left), *([self.http.stop(left)] if self.http else [])]
            for outcome in await asyncio.gather(*servers, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        finally:
            try:
                await self.pools.close_all()
            finally:
                await self.authenticator.master.dispose()

    def run_in_background(self, work: Coroutine[None, None, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(_log_death)
        self.tasks.append(task)


def _log_death(task: asyncio.Task[None]) -> None:
    """A background task ends only when stop() cancels it: anything else is a bug to see."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task %s died", task.get_name(), exc_info=error)


async def _watch_master(app: App) -> None:
    """Health is NOT_SERVING while the master database (keys, tenants) is unreachable."""
    serving: bool | None = True
    while True:
        await asyncio.sleep(HEALTH_PROBE_SECONDS)
        try:
            async with asyncio.timeout(HEALTH_PROBE_SECONDS * 2):
                async with app.authenticator.master.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            healthy = True
        except Exception:  # noqa: BLE001 (any failure means "not serving")
            healthy = False
        if healthy != serving:
            log.warning("master database %s", "reachable" if healthy else "UNREACHABLE")
            await app.serving.set_serving(healthy)
            serving = healthy


async def _close_idle_pools(app: App) -> None:
    while True:
        await asyncio.sleep(IDLE_SWEEP_SECONDS)
        closed = await app.pools.close_idle()
        if closed:
            log.info("closed the pools of %d idle tenants", closed)


async def start_app(
    master_url: str,
    *,
    host: str,
    port: int,
    tenant_pool_size: int = 5,
    key_cache_seconds: float = 5.0,
    max_db_connections: int = 200,
    max_concurrent_calls: int | None = 1000,
    auth_failures_per_second: float = 5.0,
    tls: TlsFiles | None = None,
    share_port: bool = False,
    http_port: int | None = None,
    cors_origins: tuple[str, ...] = (),
    metrics: Metrics | None = None,
) -> App:
    """`http_port`: also serve Connect and gRPC-Web there (None: not at all; 0: any free
    port); `cors_origins`: the browser origins allowed to call it (`*`: any); `metrics`:
    count every call and sample the pools into them (served by the caller)."""
    master = create_engine_for(master_url, pool_size=5, pool_timeout=5.0)
    authenticator = Authenticator(master, cache_seconds=key_cache_seconds)
    pools = TenantPools(master_url, pool_size=tenant_pool_size, max_connections=max_db_connections)
    pipeline = Pipeline(
        authenticator,
        pools,
        FailedAuthThrottle(per_second=auth_failures_per_second),
        max_concurrent_calls=max_concurrent_calls,
        metrics=metrics,
    )
    serving = await start_server(host, port, pipeline, ROUTERS, tls=tls, share_port=share_port)
    http = None
    if http_port is not None:
        procedures = [p for router in ROUTERS for p in router.all()]
        connect = ConnectApp(pipeline, procedures)
        try:
            http = await start_http_server(
                host, http_port, Cors(connect, cors_origins) if cors_origins else connect,
                tls=tls, share_port=share_port, max_concurrent_calls=max_concurrent_calls,
            )  # fmt: skip
        except BaseException:
            await serving.stop(0)
            raise
    app = App(serving, pipeline, pools, authenticator, http)
    app.run_in_background(_watch_master(app), "watch the master database")
    app.run_in_background(_close_idle_pools(app), "close idle tenant pools")
    if metrics is not None:
        app.run_in_background(metrics.sample_forever(pipeline), "sample metrics")
    return app
