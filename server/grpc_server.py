"""The grpc.aio server: our routers, standard health checking, and server reflection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.adapters import RECEIVE_CEILING_BYTES
from server.adapters.grpc import UnknownMethods, method_handlers
from server.listen_port import PortInUse, check_port_free

if TYPE_CHECKING:
    from server.pipeline import Pipeline
    from server.router import Router

__all__ = ["ServingServer", "TlsFiles", "start_server"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServingServer:
    def __init__(
        self,
        server: grpc.aio.Server,
        health: health.aio.HealthServicer,
        port: int,
        services: list[str],
    ) -> None:
        self.server = server
        self.health = health
        self.port = port
        self.services = services

    async def set_serving(self, serving: bool) -> None:
        """Health of the whole server ("") and of each API service."""
        status = SERVING if serving else NOT_SERVING
        for name in ["", *self.services]:
            await self.health.set(name, status)

    async def leave_rotation(self) -> None:
        """NOT_SERVING for good: load balancers stop sending us calls."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish within `grace` seconds."""
        await self.leave_rotation()
        await self.server.stop(grace)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and optionally the CA whose client
    certificates are required (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


async def start_server(
    host: str,
    port: int,
    pipeline: Pipeline,
    routers: tuple[Router, ...],
    *,
    tls: TlsFiles | None = None,
    share_port: bool = False,
) -> ServingServer:
    """`share_port`: SO_REUSEPORT, for the workers of one `serve --workers N` (the kernel
    spreads new connections over them); otherwise a port in use raises PortInUse. The
    pipeline limits calls in flight and request sizes itself (with ErrorInfo and a log line,
    which grpc's own limits lack); grpc accepts requests up to a ceiling above that limit."""
    if not share_port:
        check_port_free(host, port)  # says why, where grpc only says "failed to bind"
    server = grpc.aio.server(
        options=[
            # 0, not absent: grpc core turns SO_REUSEPORT on by default on Linux.
            ("grpc.so_reuseport", 1 if share_port else 0),
            ("grpc.max_receive_message_length", RECEIVE_CEILING_BYTES),
        ]
    )
    services = []
    for router in routers:
        name = router.service.full_name
        handlers = method_handlers(pipeline, router.all())
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
        services.append(name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    server.add_generic_rpc_handlers((UnknownMethods(pipeline),))  # last: grpc asks in order
    address = f"{host}:{port}"
    try:
        bound = (
            server.add_secure_port(address, tls.credentials())
            if tls
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:  # taken between the check and the bind
        raise PortInUse(port) from exc
    await server.start()
    serving = ServingServer(server, health_servicer, bound, services)
    await serving.set_serving(True)
    return serving
