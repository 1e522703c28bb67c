"""Who may listen on a port: one server, or the workers of one `serve --workers N` supervisor.

SO_REUSEPORT lets every socket that sets it share a port, so a second server started by
mistake would quietly take half the connections. Only workers set it (grpc core sets it by
default unless told 0), and their supervisor holds a bound socket of its own for as long as it
runs: a plain server, or a second supervisor, finds the port taken.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["PortInUse", "PortReservation", "check_port_free", "listening_socket", "reserve_port"]


class PortInUse(Exception):
    def __init__(self, port: int, reason: str = "") -> None:
        super().__init__(f"port {port} is in use{reason}")
        self.port = port


def _bound_socket(host: str, port: int, *, shared: bool) -> socket.socket:
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR as grpc sets it: a port in TIME_WAIT is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(port) from exc
        raise
    return sock


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse if anything is bound to host:port (a server, or a supervisor)."""
    if port:
        _bound_socket(host, port, shared=False).close()


class PortReservation:
    """A supervisor's hold on its port: bound (never listening, so it gets no connections)
    with SO_REUSEPORT, so that its workers may join and nobody else can."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.port = int(sock.getsockname()[1])

    def close(self) -> None:
        self._sock.close()


def reserve_port(host: str, port: int) -> PortReservation:
    """Check that host:port is free, then hold it for workers (port 0: any free port)."""
    check_port_free(host, port)
    # Between the check and this bind another sharing socket could slip in; both are
    # microseconds apart, where before anything could share the port at any time.
    return PortReservation(_bound_socket(host, port, shared=True))


def listening_socket(host: str, port: int, *, shared: bool, backlog: int) -> socket.socket:
    """A socket listening on host:port (port 0: any free port) for a server that takes a
    socket rather than binding one itself; `shared` as for reserve_port's workers. A port in
    use raises PortInUse."""
    sock = _bound_socket(host, port, shared=shared)
    sock.listen(backlog)
    return sock
