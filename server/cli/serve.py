"""`studio serve`: run the server: gRPC on --port, Connect and gRPC-Web on --http-port,
Prometheus metrics on --metrics-port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop

from server.app import start_app
from server.cli._common import configured_database_url, default_data_dir
from server.cli._workers import supervise
from server.data_dir_lock import DataDirInUse, lock_data_dir
from server.database_setup import ensure_demo_tenant, migrate_all, open_databases
from server.grpc_server import TlsFiles
from server.listen_port import PortInUse, PortReservation, check_port_free, reserve_port
from server.log_setup import json_logging
from server.metrics import Metrics
from server.metrics_port import MULTIPROC_ENV, MetricsEndpoint, WorkersMetrics, serve_metrics

__all__ = ["add_parser"]

log = logging.getLogger("studio.serve")
EXIT_STARTUP_FAILED = 3
DEFAULT_HTTP_PORT = 8080
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EVENT_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the server (gRPC; Connect and gRPC-Web over HTTP)",
        description="Run the server: gRPC on --port, and the same procedures over the Connect "
        "protocol (JSON or binary, HTTP/1.1 or h2c) and gRPC-Web on --http-port. With "
        "STUDIO_DATABASE_URL unset, an embedded PostgreSQL runs from the data directory, and a "
        "demo studio is provisioned once.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port)")
    parser.add_argument(
        "--http-port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help="HTTP port for Connect and gRPC-Web: browsers, curl, HTTP/1.1 clients (0: any free"
        " port)",
    )
    parser.add_argument(
        "--no-http", action="store_true", help="serve gRPC only (no Connect, no gRPC-Web)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (0: any free port; with"
        " --workers, one scrape sums them all). Default: no metrics",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser origin (https://app.example.com) allowed to call the HTTP port, "
        "repeatable; * allows any. Without it, no CORS headers are sent",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="local state (default: $STUDIO_DATA_DIR or ./.studio)",
    )
    parser.add_argument("--no-demo", action="store_true", help="do not provision a demo tenant")
    parser.add_argument(
        "--key-cache-seconds",
        type=float,
        default=5.0,
        help="how long a key lookup is cached: the longest a revoked key keeps working",
    )
    parser.add_argument(
        "--skip-migrations",
        action="store_true",
        help="serve without applying pending migrations first",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds in-flight calls get to finish on SIGTERM"
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=0.0,
        help="on SIGTERM, seconds to keep serving calls while health already says NOT_SERVING,"
        " before new calls are refused and --grace begins: longer than a load balancer's health"
        " check takes to notice (interval x unhealthy threshold), so that it routes no call to"
        " a replica that would refuse it (docs/scaling.md)",
    )
    parser.add_argument(
        "--max-db-connections",
        type=int,
        default=200,
        help="tenant database connections one process may hold, all studios together; past "
        "it, idle connections are closed to make room, and a call that gets none within 5 s is "
        "RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--max-concurrent-calls",
        type=int,
        default=1000,
        help="calls in flight per process; more are refused at once with RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--auth-failures-per-second",
        type=float,
        default=5.0,
        help="failed authentications allowed per client address per second (burst 50); past "
        "it, that address's failures are RESOURCE_EXHAUSTED, while its valid keys still work",
    )
    parser.add_argument("--tls-cert", type=Path, help="serve TLS: certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="serve TLS: private key (PEM)")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates signed by this CA (PEM)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the ports (SO_REUSEPORT); one per core scales with cores;"
        " a worker that dies is replaced (5 times a minute at most, then the server exits 3)",
    )
    parser.add_argument(
        "--event-loop",
        choices=sorted(EVENT_LOOPS),
        default="uvloop",
        help="the asyncio event loop: uvloop costs less CPU per call (docs/performance.md)",
    )
    # A worker of a --workers supervisor: it may share the supervisor's port, and the
    # supervisor holds the data directory for it.
    parser.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


async def _run_workers(
    args: argparse.Namespace, master_url: str, ports: Ports, stop: asyncio.Event
) -> int:
    """N single-process servers on the same ports; this process set up the databases, holds
    the ports and the data directory, and only supervises (restarts, forwards SIGTERM, waits)."""
    # Each worker gets this command line as given (every flag, new ones included), with the
    # overrides after it: argparse keeps the last value of a repeated option.
    command = [
        sys.executable, "-m", "server.cli", *sys.argv[1:], "--workers", "1",
        "--port", str(ports.grpc.port), "--skip-migrations", "--no-demo", "--as-worker",
        *(["--http-port", str(ports.http.port)] if ports.http else []),
    ]  # fmt: skip
    env = {**os.environ, "STUDIO_DATABASE_URL": master_url}
    with contextlib.ExitStack() as held:
        metrics = endpoint = None
        if args.metrics_port is not None:  # the workers write, this process serves the sum
            metrics = WorkersMetrics()
            held.callback(metrics.close)
            env[MULTIPROC_ENV] = metrics.path
            endpoint = serve_metrics(args.host, args.metrics_port, metrics.registry)
            held.callback(endpoint.close)

        def ready() -> None:
            announce_ports(
                args.host, ports.grpc.port, ports.http.port if ports.http else None,
                f"({args.workers} workers)", metrics_port=endpoint.port if endpoint else None,
            )  # fmt: skip

        exited = metrics.worker_exited if metrics else None
        clean = await supervise(command, env, args.workers, stop, ready, on_exit=exited)
    return 0 if clean else EXIT_STARTUP_FAILED


@dataclass(frozen=True)
class Ports:
    """What a --workers supervisor holds for its workers."""

    grpc: PortReservation
    http: PortReservation | None


def announce_ports(
    host: str, port: int, http_port: int | None, suffix: str = "", *,
    metrics_port: int | None = None,
) -> None:  # fmt: skip
    """The ports served, metrics and HTTP first: "serving gRPC on" comes last, once all are
    ready."""
    tail = f" {suffix}" if suffix else ""
    if metrics_port is not None:
        announce(f"serving metrics on {host}:{metrics_port} (Prometheus, /metrics){tail}")
    if http_port is not None:
        announce(f"serving HTTP on {host}:{http_port} (Connect, gRPC-Web){tail}")
    announce(f"serving gRPC on {host}:{port}{tail}")


def announce(line: str) -> None:
    """A line for whoever started us (tests and scripts wait for "serving gRPC on", and read
    the HTTP port from "serving HTTP on"), after the
    log lines written before it, and in one write, so log lines never land inside it."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


EXIT_USAGE = 2  # as argparse exits on a bad command line
EXIT_UNEXPECTED = 1  # as Python exits on an uncaught exception


def _usage_problem(args: argparse.Namespace) -> str | None:
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        # Half a TLS configuration must not quietly serve in the clear.
        return "--tls-cert and --tls-key go together, and --tls-client-ca needs them"
    if not args.no_http and args.http_port and args.http_port == args.port:
        return "--http-port must differ from --port"
    if args.metrics_port and args.metrics_port in {args.port, not args.no_http and args.http_port}:
        return "--metrics-port must differ from --port and --http-port"
    return None


def run(args: argparse.Namespace) -> int:
    if problem := _usage_problem(args):
        print(f"studio serve: {problem}", file=sys.stderr)
        return EXIT_USAGE
    data_dir: Path = args.data_dir.resolve() if args.data_dir else default_data_dir()
    with contextlib.ExitStack() as held:
        reservation = None
        wanted = [args.port, *([] if args.no_http else [args.http_port])]
        metrics_port = [] if args.metrics_port is None else [args.metrics_port]
        if not args.as_worker:  # the supervisor holds the data directory and the ports
            # Refused before anything starts, in one plain line (nothing is logged yet): a
            # second server on this data directory or port.
            try:
                held.callback(lock_data_dir(data_dir).release)
                if args.workers > 1:
                    held_ports = [reserve_port(args.host, p) for p in wanted]
                    for held_port in held_ports:
                        held.callback(held_port.close)
                    http = held_ports[1] if len(held_ports) > 1 else None
                    reservation = Ports(held_ports[0], http)
                else:
                    for wanted_port in wanted:
                        check_port_free(args.host, wanted_port)
                for wanted_port in metrics_port:  # bound by this process (never shared)
                    check_port_free(args.host, wanted_port)
            except (DataDirInUse, PortInUse) as exc:
                return refuse(exc)
        # JSON lines on stderr, written in batches by a thread: a write that blocks (a slow
        # disk, a full pipe) must not stall the event loop (server/log_setup.py).
        with json_logging():
            try:
                with asyncio.Runner(loop_factory=EVENT_LOOPS[args.event_loop]) as runner:
                    return runner.run(_serve(args, data_dir, reservation))
            except PortInUse as exc:  # taken between our check and the bind
                log.error("studio serve: %s", exc)
                return EXIT_STARTUP_FAILED
            except Exception:  # the traceback goes in the log line, as every other one
                log.critical("studio serve stopped on an unexpected error", exc_info=True)
                return EXIT_UNEXPECTED
            finally:
                # Stopped: what is left (the last log lines, the locks) takes a moment, and a
                # second SIGTERM then (a supervisor repeating itself) must not turn a clean
                # exit into death by signal. The event loop has just restored the defaults.
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_IGN)


def refuse(reason: object) -> int:
    """One line, no traceback: what a user starting a second server needs to read."""
    print(f"studio serve: {reason}", file=sys.stderr)
    return EXIT_STARTUP_FAILED


def _stop_on_signals(worker: bool) -> asyncio.Event:
    """Set on SIGTERM, SIGINT or SIGHUP (a closed terminal): each stops the server cleanly,
    embedded PostgreSQL included. A worker leaves SIGINT and SIGHUP, which reach the whole
    process group, to its supervisor."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM,) if worker else STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(args: argparse.Namespace, data_dir: Path, reservation: Ports | None) -> int:
    # Handlers first: a signal during start-up still stops the embedded PostgreSQL, and a
    # SIGTERM right after "serving" is announced stops us cleanly.
    stop = _stop_on_signals(args.as_worker)
    return await _serve_one(args, data_dir, stop, reservation)


async def _serve_one(
    args: argparse.Namespace,
    data_dir: Path,
    stop: asyncio.Event,
    workers_ports: Ports | None = None,
) -> int:
    databases = await open_databases(configured_database_url(), data_dir)
    endpoint: MetricsEndpoint | None = None
    try:
        if not args.skip_migrations and not await migrate_all(databases.master_url):
            log.error("the master database could not be migrated; not serving")
            return EXIT_STARTUP_FAILED
        if not args.no_demo:
            demo = await ensure_demo_tenant(databases.master_url, data_dir)
            state = "created" if demo.created else "exists"
            announce(
                f"demo tenant {demo.slug!r} ({state}); its admin API key is in {demo.key_file}"
            )
        if stop.is_set():
            return 0
        if workers_ports is not None:
            return await _run_workers(args, databases.master_url, workers_ports, stop)
        metrics = Metrics() if args.metrics_port is not None else None
        if metrics is not None and not args.as_worker:  # a worker's supervisor serves its own
            endpoint = serve_metrics(args.host, args.metrics_port, metrics.registry)
        app = await start_app(
            databases.master_url,
            host=args.host,
            port=args.port,
            key_cache_seconds=args.key_cache_seconds,
            max_db_connections=args.max_db_connections,
            max_concurrent_calls=args.max_concurrent_calls,
            auth_failures_per_second=args.auth_failures_per_second,
            tls=TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
            if args.tls_cert
            else None,
            share_port=args.as_worker,
            http_port=None if args.no_http else args.http_port,
            cors_origins=tuple(args.cors_origin or ()),
            metrics=metrics,
        )
        # What start-up allocated lives as long as the process: keep the collector off it, so
        # that full collections stay short instead of pausing calls for 100+ ms.
        gc.freeze()
        announce_ports(
            args.host, app.port, app.http_port, metrics_port=endpoint.port if endpoint else None
        )
        await stop.wait()
        log.info("shutting down: finishing in-flight calls (grace %.0fs)", args.grace)
        await app.stop(args.grace, args.drain_seconds)
        return 0
    finally:
        if endpoint is not None:
            endpoint.close()
        databases.close()
