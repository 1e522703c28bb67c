"""Running `studio serve` as a real process, the way a user or an orchestrator does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

STUDIO = str(Path(sys.executable).parent / "studio")
READY = "serving gRPC on "  # the last line: every port is served
HTTP_READY = "serving HTTP on "  # before it, unless --no-http
METRICS_READY = "serving metrics on "  # before them, with --metrics-port


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int = 0
    http_port: int = 0  # Connect and gRPC-Web; 0 with --no-http
    metrics_port: int = 0  # Prometheus; 0 without --metrics-port
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        assert self.http_port, "this server serves no HTTP (--no-http)"
        return f"http://127.0.0.1:{self.http_port}"

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code (the output is complete once this returns)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        if self.reader is not None:
            self.reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


def _env(master_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STUDIO_DATABASE_URL"}
    if master_url:
        env["STUDIO_DATABASE_URL"] = master_url
    return env


def start_serve(
    data_dir: Path, *extra: str, master_url: str | None = None, timeout: float = 120
) -> ServerProcess:
    """Start `studio serve --port 0 --http-port 0` and wait until it prints the ports it
    listens on (`extra` may override either)."""
    process = subprocess.Popen(
        [STUDIO, "serve", "--port", "0", "--http-port", "0", "--data-dir", str(data_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(master_url),
    )
    server = ServerProcess(process)
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.output.append(line)
            if line.startswith(HTTP_READY):
                server.http_port = _port(line)
            if line.startswith(METRICS_READY):
                server.metrics_port = _port(line)
            if line.startswith(READY):
                server.port = _port(line)
                ready.set()

    server.reader = threading.Thread(target=read, daemon=True)
    server.reader.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            server.terminate()
            raise RuntimeError("studio serve did not start:\n" + "".join(server.output))
    return server


def _port(line: str) -> int:
    """The port of "serving gRPC on 127.0.0.1:50051 (2 workers)"."""
    return int(line.split()[3].rsplit(":", 1)[1])


def serve_refused(
    data_dir: Path, *extra: str, master_url: str | None = None, timeout: float = 120
) -> tuple[int, str]:
    """Run a `studio serve` expected not to start: its exit code and its output. One that
    starts after all is stopped, and its output says so ("serving gRPC on"). Its HTTP port is
    any free one unless `extra` names one."""
    process = subprocess.Popen(
        [STUDIO, "serve", "--http-port", "0", "--data-dir", str(data_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(master_url),
    )
    output = []
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        if line.startswith(READY):
            process.send_signal(signal.SIGTERM)
    process.stdout.close()
    return process.wait(timeout), "".join(output)


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (zombies not counted: they hold nothing)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
        if state[1] == str(pid) and state[0] != "Z":
            found.add(int(entry.name))
    return found


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    """True once `pid` has ended (a zombie waiting for its parent counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


def remove_relocated_cluster(data_dir: Path) -> None:
    """As root, a cluster whose folder its OS user cannot reach (pytest's tmp_path is 0700)
    lives elsewhere behind a link: remove it with the test's folder."""
    cluster = data_dir / "pgdata"
    if cluster.is_symlink() and not (cluster / "postmaster.pid").exists():
        shutil.rmtree(cluster.resolve().parent, ignore_errors=True)


def health(address: str) -> int:
    """The server's overall health status, over a new connection."""
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)
