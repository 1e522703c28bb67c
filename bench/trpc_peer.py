"""The system we replace, measured in the same run: the tRPC + Drizzle + node-postgres peer
kept in ../shared/peers-trpc (a server of the original's shape: create, update and get).

It is built in a scratch copy (`npm ci`, `tsc`), given a database of its own on the
benchmark's PostgreSQL (its schema.sql, then reset.sql before every run: 100 clients, 10 rooms,
1,000 projects, 100,000 sessions), and driven by wrk (Debian's `wrk`, installed if missing)
with the peer's own Lua scripts, which send a fresh random body per request. wrk counts
non-2xx answers; a failed procedure is an error status there, so successes are wrk's total
less those.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from db.tenant_catalog import with_database

__all__ = ["PEER_SCENARIOS", "PeerRun", "TrpcPeer", "ensure_wrk", "peer_source"]

# Our scenario -> the peer's wrk script for the same call.
PEER_SCENARIOS = {
    "CreateSession with project": "create.lua",
    "UpdateSession link": "update.lua",
    "GetSession": "get.lua",
}
POOL_SIZE = 10  # the peer's default, as in the measurements the issue quotes


def peer_source() -> Path | None:
    """../shared/peers-trpc beside the project, when it is there."""
    found = Path(__file__).resolve().parents[2] / "shared" / "peers-trpc"
    return found if (found / "package.json").exists() else None


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (Debian package wrk)...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return shutil.which("wrk") or "wrk"


@dataclass
class PeerRun:
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    failed: int


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> PeerRun:
    """req/s, latency percentiles (--latency) and answers from wrk's report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    percentiles = {
        p: _ms(v, u)
        for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    }
    if not rps or not total or set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"wrk failed:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)  # fmt: skip
    failed = int(non_2xx.group(1)) if non_2xx else 0
    failed += sum(int(n) for n in errors.groups()) if errors else 0
    return PeerRun(float(rps.group(1)), percentiles["50"], percentiles["99"],
                   int(total.group(1)) - failed, failed)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TrpcPeer:
    """The built peer, its database, and its server process while one runs."""

    def __init__(self, source: Path, work: Path, base_url: str) -> None:
        self.dir = work / "trpc-peer"
        shutil.copytree(source, self.dir, ignore=shutil.ignore_patterns("node_modules", "dist"))
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=self.dir, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run(["npx", "tsc", "-p", "tsconfig.json"], cwd=self.dir, check=True)
        self.dbname = name = f"bench_trpc_{os.getpid()}"
        with psycopg.connect(with_database(base_url, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.url = with_database(base_url, name)
        self._script("schema.sql")
        self.process: subprocess.Popen[str] | None = None
        self.address = ""
        self.wrap: Callable[[list[str]], list[str]] = list  # the server's command line, as run

    def _script(self, name: str) -> None:
        # Each file is plain SQL; VACUUM and CHECKPOINT cannot run inside a transaction.
        text = "\n".join(
            line.split("--", 1)[0] for line in (self.dir / name).read_text().splitlines()
        )
        with psycopg.connect(self.url, autocommit=True) as conn:
            for statement in text.split(";"):
                if statement.strip():
                    conn.execute(statement.encode())

    def reset(self) -> None:
        """The peer's starting state, before every measured run."""
        self._script("reset.sql")

    def start(self) -> int:
        port = _free_port()
        env = {**os.environ, "DATABASE_URL": _node_url(self.url), "PORT": str(port),
               "POOL_SIZE": str(POOL_SIZE)}  # fmt: skip
        self.process = subprocess.Popen(  # (taskset, if wrapped in it, execs node: same pid)
            self.wrap(["node", "dist/server.js"]), cwd=self.dir, env=env,
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the tRPC peer did not start: {line}")
        # It prints that line as it asks to listen, not once it does: wait for the port.
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.address = f"127.0.0.1:{port}"
        return self.process.pid

    def wrk(self, binary: str, script: str, clients: int, seconds: float) -> PeerRun:
        result = subprocess.run(
            [binary, "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{int(seconds)}s",
             "--latency", "-s", str(self.dir / script), f"http://{self.address}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return parse_wrk(result.stdout + result.stderr)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


def _node_url(conninfo: str) -> str:
    """node-postgres takes a URL: build one from a libpq conninfo (URL or key=value)."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = params.get("user") or "postgres"
    secret = params.get("password")
    if not secret and params.get("passfile"):  # node-postgres reads no passfile: libpq does
        with psycopg.connect(conninfo) as conn:
            secret = conn.info.password
    password = f":{quote(str(secret), safe='')}" if secret else ""
    host = params.get("host") or "127.0.0.1"
    return f"postgres://{user}{password}@{host}:{params.get('port') or 5432}/{params['dbname']}"
