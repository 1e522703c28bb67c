"""The HTTP server of the Connect adapter: granian, embedded in the process's event loop.

granian (a Rust HTTP server) parses HTTP/1.1 and h2c (HTTP/2 without TLS, by prior knowledge)
on one port and runs the ASGI application (server/adapters/connect.py) on our loop, so that
its calls go through the same pipeline as gRPC's: the same pools, limits, throttle and
drain. It has no HTTP trailers, so gRPC itself stays with grpc.aio on its own port.

We bind the socket and hand it over, as we check the gRPC port: a port in use is refused
(PortInUse), port 0 picks a free one, and only the workers of one `serve --workers N` share a
port (SO_REUSEPORT), which granian would otherwise set on every socket it binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from granian._granian import SocketHolder
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.embed import Server

from server.listen_port import listening_socket

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from server.grpc_server import TlsFiles

__all__ = ["HttpServer", "start_http_server"]

log = logging.getLogger("studio.http")
BACKLOG = 1024
STOP_MARGIN_SECONDS = 2.0
# granian logs through the `_granian` logger, which propagates to ours (JSON lines on
# stderr): its errors only. Its own configuration would replace every handler of the process
# (a dictConfig) and write on stdout, where `studio serve` announces its ports; an incremental
# one only sets the level.
GRANIAN_LOGGING: dict[str, Any] = {"incremental": True, "handlers": {}, "loggers": {}}


class _Embedded(Server):
    """granian's embedded server, on a socket of ours."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        sock: socket.socket,
        **options: Any,  # noqa: ANN401 (granian's own keyword arguments)
    ) -> None:
        super().__init__(app, **options)
        self._socket = sock

    def _init_shared_socket(self) -> None:
        self._ssp = None
        # (fd, a unix socket?, backlog), as granian pickles one for its worker processes;
        # granian closes it when it stops.
        self._shd = SocketHolder(self._socket.detach(), False, BACKLOG)  # type: ignore[call-arg,assignment]


class HttpServer:
    def __init__(self, server: _Embedded, task: asyncio.Task[None], port: int) -> None:
        self.server = server
        self.task = task
        self.port = port

    async def stop(self, grace: float) -> None:
        """Stop accepting; calls in flight get `grace` seconds (the pipeline drained them
        already when the app stops), then whatever is left is cancelled."""
        self.server.stop()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(grace + STOP_MARGIN_SECONDS):
                await asyncio.shield(self.task)
        except TimeoutError:
            log.warning("the HTTP server did not stop within %.0fs; cancelling it", grace)
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def start_http_server(
    host: str,
    port: int,
    app: Callable[..., Awaitable[None]],
    *,
    tls: TlsFiles | None = None,
    share_port: bool = False,
    max_concurrent_calls: int | None = None,
) -> HttpServer:
    """Serve `app` on host:port (0: any free port) until stop(). PortInUse if it is taken
    (`share_port`: SO_REUSEPORT, for the workers of one supervisor). `max_concurrent_calls`:
    granian holds back requests past twice it, so that the pipeline's own limit refuses them
    first (RESOURCE_EXHAUSTED with ErrorInfo) instead of granian queueing them."""
    sock = listening_socket(host, port, shared=share_port, backlog=BACKLOG)
    bound = int(sock.getsockname()[1])
    tls_options: dict[str, Any] = {}
    if tls is not None:
        tls_options = {"ssl_cert": tls.cert, "ssl_key": tls.key}
        if tls.client_ca is not None:
            tls_options.update(ssl_ca=tls.client_ca, ssl_client_verify=True)
    try:
        server = _Embedded(
            app,
            sock,
            interface=Interfaces.ASGINL,  # no lifespan: the app needs no start-up of its own
            http=HTTPModes.auto,  # HTTP/1.1, and HTTP/2 when the client starts with it
            backlog=BACKLOG,
            backpressure=2 * (max_concurrent_calls or BACKLOG),
            log_enabled=True,
            log_level=LogLevels.error,
            log_dictconfig=GRANIAN_LOGGING,
            websockets=False,
            **tls_options,
        )
    except BaseException:
        sock.close()
        raise
    task = asyncio.create_task(server.serve(), name="HTTP server (Connect, gRPC-Web)")
    # The socket listens already: connections wait in its backlog until granian accepts them.
    return HttpServer(server, task, bound)
