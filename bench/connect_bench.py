"""Connect beside gRPC: the same procedures, the same scenarios, in the same run.

    python3 dev.py bench connect [--sessions 100000] [--concurrency 16] [--seconds 5]
                                 [--out bench/connect_results.md]

One `studio serve` (one process) answers each scenario three ways: gRPC (h2load, h2c),
Connect binary (`application/proto`, h2c) and Connect JSON (`application/json`, HTTP/1.1,
as curl or a browser sends it), all through the same pipeline. Beside it, the floors with
nothing of ours, on the same statements: grpc.aio + psycopg (bench/floor_server.py) and
connectrpc + granian + psycopg (bench/connect_floor.py). Server CPU per call comes from
/proc (every thread of the process: granian's Rust threads and grpc's included); studio's
calls are counted from its own log (h2load counts any 2xx), the floors' as h2load saw them.
The PostgreSQL, data and provisioning are bench/api_bench.py's. A benchmark: it measures,
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from google.protobuf import json_format
from psycopg import sql

from bench.api_bench import (
    WARM_UP_SECONDS,
    Scenario,
    count_ok,
    cpu_seconds,
    ensure_h2load,
    grpc_frame,
    provision,
    scenarios,
)
from db.local_postgres import LocalPostgres
from db.tenant_catalog import with_database

SCENARIOS = ("GetSession", "ListSessions by project (50)", "CreateSession")
RESULTS = Path("bench/connect_results.md")


@dataclass(frozen=True)
class Wire:
    name: str
    headers: tuple[str, ...]
    http1: bool

    def body(self, scenario: Scenario) -> bytes:
        if self.name == "gRPC":
            return grpc_frame(scenario.request)
        if "JSON" in self.name:
            return json_format.MessageToJson(scenario.request, indent=None).encode()
        return scenario.request.SerializeToString()


GRPC = Wire("gRPC", ("content-type: application/grpc", "te: trailers"), http1=False)
CONNECT_PROTO = Wire("Connect proto, h2c", ("content-type: application/proto",), http1=False)
CONNECT_JSON = Wire("Connect JSON, HTTP/1.1", ("content-type: application/json",), http1=True)


@dataclass
class Row:
    scenario: str
    wire: str
    server: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    ok: int
    failed: int | None  # None: not counted (h2load's own count)


def run_load(h2: str, url: str, wire: Wire, body: Path, key: str, clients: int,
             seconds: float, log: Path) -> tuple[float, float, float, int]:  # fmt: skip
    """h2load: (req/s, p50 ms, p99 ms, 2xx answers)."""
    log.unlink(missing_ok=True)
    command = [h2, "-c", str(clients), "-m", "1", "-D", str(int(seconds)),
               "--warm-up-time", str(WARM_UP_SECONDS), "-d", str(body), "--log-file", str(log),
               "-H", f"authorization: Bearer {key}"]  # fmt: skip
    for header in wire.headers:
        command += ["-H", header]
    result = subprocess.run([*command, *(["--h1"] if wire.http1 else []), url],
                            capture_output=True, text=True, check=False)  # fmt: skip
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", result.stdout)
    codes = re.search(r"status codes: (\d+) 2xx", result.stdout)
    lines = log.read_text().splitlines() if log.exists() else []
    if not rate or not codes or not lines:
        raise RuntimeError(f"h2load failed:\n{result.stdout}\n{result.stderr}")
    latencies = sorted(int(line.split("\t")[2]) / 1000 for line in lines if line.strip())
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return float(rate.group(1)), statistics.median(latencies), p99, int(codes.group(1))


def ports(server: subprocess.Popen[str], name: str) -> dict[str, str]:
    """{"gRPC": host:port, "HTTP": host:port} from the server's "serving ... on" lines."""
    assert server.stdout is not None
    found: dict[str, str] = {}
    while True:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"{name} did not start")
        if line.startswith("serving "):
            found[line.split()[1]] = line.split()[3]
            if line.startswith("serving gRPC on") or name != STUDIO:
                return found


def measure(h2: str, address: str, scenario: Scenario, wire: Wire, *, key: str, pid: int,
            clients: int, seconds: float, work: Path, log: Path | None, server: str) -> Row:  # fmt: skip
    body = work / "body"
    body.write_bytes(wire.body(scenario))
    url = f"http://{address}/studio.v1.SessionService/{scenario.method}"
    since = log.stat().st_size if log else 0
    before = cpu_seconds([pid])
    rps, p50, p99, answered = run_load(h2, url, wire, body, key, clients, seconds, work / "h2.log")
    cpu = cpu_seconds([pid]) - before
    if log is not None:
        time.sleep(0.3)  # the last log lines reach the file
        ok, failed = count_ok(log, scenario.method, since)
        counted: int | None = failed
    else:  # the warm-up's calls cost CPU too: count them at the same rate
        ok, counted = round(rps * (seconds + WARM_UP_SECONDS)), None
        ok = max(ok, answered)
    row = Row(scenario.name, wire.name, server, clients, rps, p50, p99,
              cpu / max(ok, 1) * 1000, ok, counted)  # fmt: skip
    print(f"{server:<28} {wire.name:<24} {scenario.name:<30} c={clients:<3} {rps:8.0f}/s"
          f" p99 {p99:6.1f} ms cpu {row.cpu_ms:.3f} ms/call ok {ok}"
          f" failed {'-' if counted is None else counted}", flush=True)  # fmt: skip
    return row


async def prepare(base: str, sessions: int) -> tuple[str, str, str]:
    """A master database of this run's own and its studio: (master URL, studio URL, key)."""
    master_url = with_database(base, f"connect_bench_{os.getpid()}")
    dbname = str(psycopg.conninfo.conninfo_to_dict(master_url)["dbname"])
    async with await psycopg.AsyncConnection.connect(
        with_database(base, "postgres"), autocommit=True
    ) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    big_url, key, _ = await provision(master_url, sessions, 0)
    return master_url, big_url, key


SERVERS = (  # name, module, its argument, the wires it serves
    ("floor: grpc.aio + psycopg", "bench.floor_server", "db", (GRPC,)),
    ("floor: connectrpc + granian + psycopg", "bench.connect_floor", "db",
     (CONNECT_PROTO, CONNECT_JSON)),
    ("transport only: grpc.aio", "bench.connect_floor", "canned-grpc", (GRPC,)),
    ("transport only: connectrpc + granian", "bench.connect_floor", "canned",
     (CONNECT_PROTO, CONNECT_JSON)),
)  # fmt: skip
STUDIO = "studio serve"


def start(
    command: list[str], name: str, **options: object
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **options)  # type: ignore[call-overload]
    try:
        return server, ports(server, name)
    except BaseException:
        server.kill()
        raise


def bench(args: argparse.Namespace) -> list[Row]:
    """Every server runs for the whole run, and each round measures every scenario on every
    server and wire in turn: the machine's load drifts, and this spreads it over them all."""
    h2 = ensure_h2load()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="connect-bench-") as tmp:
        work = Path(tmp)
        cluster = None
        base = os.environ.get("STUDIO_DATABASE_URL")
        if base is None:
            cluster = LocalPostgres(work / "pg" / "data", max_connections=200)
            cluster.start()
            base = cluster.url()
        servers: list[subprocess.Popen[str]] = []
        try:
            master_url, big_url, key = asyncio.run(prepare(base, args.sessions))
            chosen = [s for s in scenarios(update_id=10_000, list_project=1) if s.name in SCENARIOS]
            log = work / "server.log"
            studio = str(Path(sys.executable).parent / "studio")
            server, address = start(
                [studio, "serve", "--port", "0", "--http-port", "0", "--no-demo",
                 "--skip-migrations"], STUDIO,
                env={**os.environ, "STUDIO_DATABASE_URL": master_url}, stderr=log.open("w"),
            )  # fmt: skip
            servers.append(server)
            targets = [(STUDIO, server.pid, address["gRPC" if w is GRPC else "HTTP"], w, key, log)
                       for w in (GRPC, CONNECT_PROTO, CONNECT_JSON)]  # fmt: skip
            for name, module, argument, wires in SERVERS:
                floor, found = start(
                    [sys.executable, "-m", module, big_url if argument == "db" else argument],
                    name, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                servers.append(floor)
                at = next(iter(found.values()))
                targets += [(name, floor.pid, at, w, "none", None) for w in wires]
            for _ in range(args.rounds):
                for scenario in chosen:
                    for name, pid, at, wire, key_, server_log in targets:
                        rows.append(measure(h2, at, scenario, wire, key=key_, pid=pid,
                                            clients=args.concurrency, seconds=args.seconds,
                                            work=work, log=server_log, server=name))  # fmt: skip
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
            if cluster is not None:
                cluster.destroy()  # its files too: a benchmark cluster is made for one run
    return rows


def merged(rows: list[Row]) -> list[Row]:
    """One row per scenario, server and wire: the median of its rounds (calls added up)."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.scenario, r.server, r.wire), []).append(r)
    out = []
    for (scenario, server, wire), runs in groups.items():
        failed = [r.failed for r in runs]
        out.append(Row(
            scenario, wire, server, runs[0].clients,
            statistics.median(r.rps for r in runs), statistics.median(r.p50_ms for r in runs),
            statistics.median(r.p99_ms for r in runs), statistics.median(r.cpu_ms for r in runs),
            sum(r.ok for r in runs), None if None in failed else sum(f or 0 for f in failed),
        ))  # fmt: skip
    return out


def render(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores (shared with other work), {platform.machine()}, Python"
        f" {platform.python_version()}, uvloop; PostgreSQL 18 (embedded binaries), the servers,"
        f" h2load and PostgreSQL on the same machine. {args.sessions} sessions in the studio;"
        f" {args.concurrency} connections, one call at a time each, {args.seconds:g} s per run;"
        f" each row the median of {args.rounds} rounds, every server measured in turn.",
        "",
        "| scenario | server | wire | req/s | p50 ms | p99 ms | CPU ms / call | OK / failed |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    table = merged(rows)
    for r in table:
        counted = "not counted" if r.failed is None else str(r.failed)
        lines.append(
            f"| {r.scenario} | {r.server} | {r.wire} | {r.rps:.0f} | {r.p50_ms:.2f} |"
            f" {r.p99_ms:.2f} | {r.cpu_ms:.3f} | {r.ok} / {counted} |"
        )
    by = {(r.scenario, r.server, r.wire): r for r in table}
    pairs = [(STUDIO, STUDIO), (SERVERS[0][0], SERVERS[1][0]), (SERVERS[2][0], SERVERS[3][0])]
    notes = []
    for scenario in SCENARIOS:
        for grpc_server, connect_server in pairs:
            grpc_row = by.get((scenario, grpc_server, GRPC.name))
            for wire in (CONNECT_PROTO, CONNECT_JSON):
                row = by.get((scenario, connect_server, wire.name))
                if grpc_row and row:
                    notes.append(
                        f"{scenario}, {connect_server}: {wire.name} / gRPC, CPU per call"
                        f" {row.cpu_ms / grpc_row.cpu_ms:.2f} ({row.cpu_ms:.3f} against"
                        f" {grpc_row.cpu_ms:.3f} ms), req/s {row.rps / grpc_row.rps:.2f}"
                    )
    return "\n".join([*lines, "", *(f"- {n}" for n in notes)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2, help="each row is the median of these")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = bench(args)
    table = render(rows, args)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
