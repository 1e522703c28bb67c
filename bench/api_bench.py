"""API benchmark: the service against PostgreSQL's own speed for the same SQL.

    python3 dev.py bench api [--sessions 1000000] [--tenants 1000] [--concurrency 1,16,64]
                             [--seconds 5] [--workers 1,2] [--out bench/results.md]
                             [--only GetSession,...] [--profile DIR] [--metrics]
                             [--no-baselines]

It starts its own PostgreSQL (fsync and synchronous commit on; or uses STUDIO_DATABASE_URL's
server), provisions a big studio (1,000 clients, 10 rooms, 10,000 projects, 1,000,000
sessions) and `--tenants` small ones, starts `studio serve` as a separate process, and drives
it over real gRPC with h2load (Debian's nghttp2-client, installed if missing). h2load counts
any HTTP 200 as a success, so each run is checked against the server's own log of gRPC codes.
In the same run, pgbench executes the SQL each scenario needs, at the same concurrency, and
the ratio of the two rates is reported. Beside them, with one worker: the floor (bare grpc.aio +
psycopg, bench/floor_server.py) and the system we replace (the tRPC + Drizzle + pg peer of
../shared/peers-trpc, bench/trpc_peer.py, driven by wrk), and each run ends with studio / tRPC
and studio / floor per scenario, in req/s and CPU per call. A benchmark, not a test: it
measures, asserts nothing.

`--profile DIR` records each run with py-spy (collapsed stacks, DIR/<scenario>-c<n>-w<n>.txt)
and writes where the server's CPU went (DIR/summary.md); profiled runs are slower, so their
table goes to DIR too, not to bench/results.md.

`--metrics` runs every studio serve twice in a row, without and with `--metrics-port`
(Prometheus, server/metrics.py; rows marked "(metrics on)"), and ends with the CPU per call
each costs; `--no-baselines` leaves out the floor, the tRPC peer and the tenant mix (as for
`--metrics --no-baselines --out bench/metrics_results.md`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg import sql

from bench.profile_summary import summarise
from bench.trpc_peer import PEER_SCENARIOS, TrpcPeer, ensure_wrk, peer_source
from db.api_keys import create_key
from db.engines import create_engine_for
from db.local_postgres import LocalPostgres, bundled_bin_dir
from db.migrations.fleet import run_one
from db.tenant_catalog import with_database
from db.tenants import provision_tenant, register_tenant, slugify
from studio.v1 import session_pb2

SERVICE = "/studio.v1.SessionService/"
WARM_UP_SECONDS = 1  # h2load's warm-up before it starts counting
PROFILE_RATE = 250  # py-spy samples per second
START = 1_900_000_000  # 2030-03-17, sessions of the benchmark start here


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    request: Message
    pgbench_sql: str  # what the service runs for one call, as pgbench runs it
    # A write of one row per client (the request of client k), as the tRPC peer's updates
    # spread over rows: h2load sends one body, so such a scenario runs one h2load per client.
    spread: Callable[[int], Message] | None = None


SPREAD_STRIDE = 1000  # sessions k * 1000 belong to client 1, who owns project 1 (SEED)
MAX_CLIENTS = 64


def _spread_id(k: int, offset: int = 0) -> int:
    return SPREAD_STRIDE * (k + 1) + offset


def _session(project: bool) -> session_pb2.Session:
    # h2load sends one body again and again, and a room is booked once at a time (tenant
    # migration 0009): a create is measured as a cancelled booking, which does not hold the
    # room (the floor and pgbench insert the same). A live booking also checks and fills the
    # room's exclusion index; bench/summary_bench.py measures that path.
    session = session_pb2.Session(
        client_id=1, room_id=1, title="Benchmark take",
        start_time=Timestamp(seconds=START), end_time=Timestamp(seconds=START + 3 * 3600),
        status=session_pb2.SESSION_STATUS_CANCELLED,
    )  # fmt: skip
    if project:
        session.project_id = 1
    return session


INSERT_COLUMNS = "client_id, room_id, title, start_time, end_time, status"
INSERT_VALUES = (
    f"1, 1, 'Benchmark take', to_timestamp({START}), to_timestamp({START + 3 * 3600}), 'cancelled'"
)


def _link(session_id: int) -> session_pb2.UpdateSessionRequest:
    return session_pb2.UpdateSessionRequest(
        session=session_pb2.Session(id=session_id, project_id=1),
        update_mask=FieldMask(paths=["project_id"]),
    )


def _unlink(session_id: int) -> session_pb2.UpdateSessionRequest:
    return session_pb2.UpdateSessionRequest(
        session=session_pb2.Session(id=session_id), update_mask=FieldMask(paths=["project_id"])
    )


def scenarios(update_id: int, list_project: int) -> list[Scenario]:
    insert = f"INSERT INTO sessions ({INSERT_COLUMNS}, create_request_id) SELECT {INSERT_VALUES}"
    return [
        Scenario("CreateSession", "CreateSession",
                 session_pb2.CreateSessionRequest(session=_session(False)),
                 f"{insert}, NULL RETURNING *;"),
        Scenario("CreateSession with project", "CreateSession",
                 session_pb2.CreateSessionRequest(session=_session(True)),
                 "WITH p AS (SELECT client_id FROM projects WHERE id = 1 FOR SHARE)"
                 f" INSERT INTO sessions ({INSERT_COLUMNS}, project_id, create_request_id)"
                 f" SELECT {INSERT_VALUES}, 1, NULL WHERE EXISTS"
                 " (SELECT FROM p WHERE client_id = 1) RETURNING *;"),
        Scenario("UpdateSession link", "UpdateSession",
                 _link(_spread_id(0)),
                 f"\\set id {SPREAD_STRIDE} * random(1, {MAX_CLIENTS})\n"
                 "UPDATE sessions SET project_id = 1, version = version + 1, updated_at = now()"
                 " WHERE id = :id AND EXISTS (SELECT FROM projects WHERE id = 1"
                 " AND client_id = sessions.client_id FOR SHARE) RETURNING *;",
                 spread=lambda k: _link(_spread_id(k))),
        Scenario("UpdateSession unlink", "UpdateSession",
                 _unlink(_spread_id(0, 1)),
                 f"\\set id {SPREAD_STRIDE} * random(1, {MAX_CLIENTS}) + 1\n"
                 "UPDATE sessions SET project_id = NULL, version = version + 1,"
                 " updated_at = now() WHERE id = :id RETURNING *;",
                 spread=lambda k: _unlink(_spread_id(k, 1))),
        Scenario("GetSession", "GetSession", session_pb2.GetSessionRequest(id=update_id + 2),
                 f"SELECT * FROM sessions WHERE id = {update_id + 2};"),
        Scenario("ListSessions by project (50)", "ListSessions",
                 session_pb2.ListSessionsRequest(project_id=list_project, page_size=50),
                 f"SELECT * FROM sessions WHERE project_id = {list_project}"
                 " ORDER BY start_time, id LIMIT 51;"),
    ]  # fmt: skip


# -- setup ----------------------------------------------------------------------------------


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    print("installing h2load (Debian package nghttp2-client)...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "nghttp2-client"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return shutil.which("h2load") or "h2load"


def pgbench_binary() -> str:
    return shutil.which("pgbench") or str(bundled_bin_dir() / "pgbench")


SEED = """
INSERT INTO clients (name) SELECT 'Client ' || n FROM generate_series(1, 1000) n;
INSERT INTO rooms (name) SELECT 'Room ' || n FROM generate_series(1, 10) n;
INSERT INTO projects (client_id, name)
    SELECT (n - 1) % 1000 + 1, 'Project ' || n FROM generate_series(1, 10000) n;
INSERT INTO sessions (client_id, room_id, project_id, title, start_time, end_time)
    SELECT (p - 1) % 1000 + 1, n % 10 + 1, CASE WHEN n % 2 = 0 THEN p END, 'Take ' || n,
           timestamptz '2026-01-01' + n * interval '10 minutes',
           timestamptz '2026-01-01' + n * interval '10 minutes' + interval '90 minutes'
    FROM (SELECT n, n % 10000 + 1 AS p FROM generate_series(1, %(sessions)s) n) s;
ANALYZE;
"""


async def provision(master_url: str, sessions: int, tenants: int) -> tuple[str, str, list[str]]:
    """(big tenant URL, its key, keys of the small tenants)."""
    await run_one(master_url, "master", mode="up")
    big = await provision_tenant(master_url, name="Big Studio", slug="big")
    big_url = with_database(master_url, big.database_name)
    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(big_url, autocommit=True) as conn:
        await conn.execute(SEED.replace("%(sessions)s", str(int(sessions))).encode())
    print(f"seeded {sessions} sessions in {time.monotonic() - started:.0f}s", file=sys.stderr)
    template = await provision_tenant(master_url, name="Small Template", slug="small-template")
    template_url = with_database(master_url, template.database_name)
    async with await psycopg.AsyncConnection.connect(template_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO clients (name) VALUES ('Solo');"
            "INSERT INTO rooms (name) VALUES ('Booth');"
            "INSERT INTO sessions (client_id, room_id, title, start_time, end_time)"
            " VALUES (1, 1, 'Only take', now(), now() + interval '1 hour')"
        )
    keys = []
    engine = create_engine_for(master_url, pool_size=1)
    try:
        async with await psycopg.AsyncConnection.connect(master_url, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = {}").format(sql.Literal(template.database_name))
            )  # fmt: skip
            for n in range(tenants):
                name = f"{template.database_name}_{n:04d}"[:63]
                await conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template.database_name)
                    )
                )
                async with engine.begin() as master:
                    org_id = await register_tenant(
                        master, name=f"Small {n}", slug=f"small-{n}", database_name=name
                    )
                    keys.append(await create_key(master, organization_id=org_id, role="member"))
    finally:
        await engine.dispose()
    # Creating a thousand databases leaves gigabytes of dirty pages: write them out before
    # measuring, or the runs measure the disk's writeback instead of the service.
    async with await psycopg.AsyncConnection.connect(master_url, autocommit=True) as conn:
        await conn.execute("CHECKPOINT")
    os.sync()
    return big_url, big.api_key, keys


# -- measuring ------------------------------------------------------------------------------


def grpc_frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def peak_rss_mb(pids: list[int]) -> float:
    peaks = []
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks, default=0.0)


def server_pids(root: int) -> list[int]:
    children = [
        int(p.name) for p in Path("/proc").iterdir()
        if p.name.isdigit() and (p / "stat").exists()
        and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(root)
    ]  # fmt: skip
    return children or [root]


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float


def _grpc_call(
    body: Path, key: str, address: str, method: str, service: str = SERVICE
) -> list[str]:
    """h2load's arguments for one unary gRPC call of ours: body, headers and URL."""
    return ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", f"authorization: Bearer {key}", f"http://{address}{service}{method}"]  # fmt: skip


def h2load(
    binary: str, address: str, key: str, method: str, bodies: list[Path], clients: int,
    seconds: float, log: Path,
) -> Run:  # fmt: skip
    """`clients` connections sending `bodies[0]`; or, with a body per client, one h2load
    process per client sending its own (h2load sends one body), all at once."""
    one_each = len(bodies) > 1
    assert not one_each or len(bodies) == clients
    logs = [log.with_suffix(f".{k}") for k in range(len(bodies))]
    runs = []
    for body, log_k in zip(bodies, logs, strict=True):
        log_k.unlink(missing_ok=True)  # h2load appends to its log file
        runs.append(subprocess.Popen(
            [binary, "-c", "1" if one_each else str(clients), "-m", "1", "-D", str(int(seconds)),
             "--warm-up-time", str(WARM_UP_SECONDS), "--log-file", str(log_k),
             *_grpc_call(body, key, address, method)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    rps, latencies = 0.0, []
    for run, log_k in zip(runs, logs, strict=True):
        out, err = run.communicate()
        match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
        lines = log_k.read_text().splitlines() if log_k.exists() else []
        if not match or not lines:
            raise RuntimeError(f"h2load failed:\n{out}\n{err}")
        rps += float(match.group(1))
        latencies += [int(line.split("\t")[2]) / 1000 for line in lines if line.strip()]
    latencies.sort()
    return Run(
        rps=rps,
        p50_ms=statistics.median(latencies),
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


def pgbench(binary: str, url: str, script: str, clients: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script + "\n")
    result = subprocess.run(
        [binary, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
         "-T", str(int(seconds)), "-f", f.name, url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    os.unlink(f.name)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    if not match:
        raise RuntimeError(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


def count_ok(log_file: Path, method: str, since: int) -> tuple[int, int]:
    """(OK, not OK) calls of `method` the server logged after byte offset `since`."""
    ok = bad = 0
    with log_file.open() as f:
        f.seek(since)
        for line in f:
            if not line.endswith("\n"):  # still being written as we read: not counted
                break
            entry = json.loads(line)  # the server's log is JSON lines
            if entry["logger"] != "studio.call":
                continue
            if "method" not in entry or "code" not in entry:  # an unexpected error: show it
                print(f"server: {line.rstrip()}", file=sys.stderr)
                continue
            # CANCELLED: calls in flight when h2load closed its connections at the end of the run
            if entry["method"].endswith(method) and entry["code"] != "CANCELLED":
                ok, bad = (ok + 1, bad) if entry["code"] == "OK" else (ok, bad + 1)
    return ok, bad


async def peak_connections(url: str, dbname: str, stop: asyncio.Event) -> int:
    peak = 0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                (dbname,),
            )
            row = await cur.fetchone()
            peak = max(peak, int(row[0]) if row else 0)
            await asyncio.sleep(0.05)
    return peak


# -- the run --------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    concurrency: int
    workers: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_per_1000: float
    rss_mb: float
    connections: int
    pgbench_tps: float
    grpc_ok: int
    grpc_failed: int
    repetition: int = 1

    @property
    def ratio(self) -> float:
        return self.rps / self.pgbench_tps if self.pgbench_tps else 0.0


FLOOR_SCENARIOS = (
    "CreateSession",
    "CreateSession with project",
    "UpdateSession link",
    "UpdateSession unlink",
    "GetSession",
    "ListSessions by project (50)",
)
FLOOR_LABEL = " (floor: bare grpc.aio + psycopg)"
METRICS_LABEL = " (metrics on)"
METRICS_VARIANTS = {False: (False,), True: (False, True)}  # by --metrics
PEER_LABEL = " (peer: tRPC + Drizzle + pg)"


def floor_counts(address: str) -> dict[str, int]:
    """The floor server's count of its answers so far, by outcome."""
    with grpc.insecure_channel(address) as channel:
        raw: bytes = channel.unary_unary("/bench.Floor/Counts")(b"", timeout=10)
    counts: dict[str, int] = json.loads(raw)
    return counts


def start_floor(tenant_url: str) -> tuple[subprocess.Popen[str], str]:
    """bench/floor_server.py on the big studio's database: the transport and the driver and
    nothing of ours, to split the gap to pgbench into theirs and ours."""
    server = subprocess.Popen(
        on_server_cores([sys.executable, "-m", "bench.floor_server", tenant_url, EVENT_LOOP[0]]),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    return server, listening_address(server, "the floor server")


def listening_address(server: subprocess.Popen[str], name: str, log: Path | None = None) -> str:
    """host:port from the server's "serving gRPC on host:port" line (it prints it when ready;
    the metrics line, with --metrics-port, comes before it)."""
    assert server.stdout is not None
    line = server.stdout.readline()
    if line.startswith("serving metrics on "):
        line = server.stdout.readline()
    if not line.startswith("serving gRPC on "):
        tail = log.read_text()[-2000:] if log else ""
        raise RuntimeError(f"{name} did not start: {line}{tail}")
    return line.split()[3]


EVENT_LOOP = ["uvloop"]  # --event-loop, for studio serve and the floor alike
SERVER_CORES: set[int] = set()  # --pin: the cores of the server under test; empty: any


def on_server_cores(command: list[str]) -> list[str]:
    """A server under test's command line: with --pin, on its cores (its workers too)."""
    if not SERVER_CORES:
        return command
    return ["taskset", "-c", ",".join(map(str, sorted(SERVER_CORES))), *command]


def pin(workers: int) -> None:
    """--pin: the server under test on cores 0..workers-1, everything else this benchmark
    starts (PostgreSQL, h2load, wrk, pgbench) on the others."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) <= workers:
        sys.exit(f"--pin needs more than {workers} cores; this machine gives {len(cores)}")
    SERVER_CORES.update(cores[:workers])
    os.sched_setaffinity(0, cores[workers:])  # inherited by what we start from now on


def start_server(
    master_url: str, workers: int, log: Path, *, metrics: bool = False
) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "STUDIO_DATABASE_URL": master_url}
    studio = str(Path(sys.executable).parent / "studio")
    server = subprocess.Popen(
        on_server_cores([studio, "serve", "--port", "0", "--no-http", "--no-demo",
                         "--skip-migrations", "--workers", str(workers),
                         "--max-db-connections", "1050", "--event-loop", EVENT_LOOP[0],
                         *(["--metrics-port", "0"] if metrics else [])]),
        env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
    )  # fmt: skip
    return server, listening_address(server, "studio serve", log)


async def measure(
    scenario: Scenario, *, clients: int, seconds: float, address: str, key: str, pids: list[int],
    tenant_url: str, server_log: Path | None, tools: tuple[str, str], work: Path, workers: int,
    profile: Path | None, pgbench_tps: float | None = None, label: str = "",
) -> Row:  # fmt: skip
    """One scenario at one concurrency. Without a server log (the floor server keeps none),
    calls are counted as h2load saw them; with `pgbench_tps`, pgbench is not run again."""
    h2, pgb = tools
    requests = (
        [scenario.spread(k) for k in range(clients)] if scenario.spread else [scenario.request]
    )
    bodies = [work / f"request-{k}.grpc" for k in range(len(requests))]
    for body, request in zip(bodies, requests, strict=True):
        body.write_bytes(grpc_frame(request))
    since = server_log.stat().st_size if server_log else 0
    floor_before = await asyncio.to_thread(floor_counts, address) if server_log is None else {}
    cpu_before = cpu_seconds(pids)
    stop = asyncio.Event()
    dbname = str(psycopg.conninfo.conninfo_to_dict(tenant_url)["dbname"])
    sampler = asyncio.create_task(
        peak_connections(with_database(tenant_url, "postgres"), dbname, stop)
    )
    spy = stacks = None
    if profile is not None:
        stacks = profile / f"{slugify(scenario.name + label)}-c{clients}-w{workers}.txt"
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
            "--rate", str(PROFILE_RATE), "--gil", "--subprocesses", "--nonblocking",
            "--pid", str(pids[0]), "--duration", str(int(seconds) + WARM_UP_SECONDS), "--output", str(stacks),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    run = await asyncio.to_thread(
        h2load, h2, address, key, scenario.method, bodies, clients, seconds, work / "h2.log"
    )
    if spy is not None:
        await spy.wait()
    stop.set()
    connections = await sampler
    cpu = cpu_seconds(pids) - cpu_before
    if stacks is not None:
        stacks.with_suffix(".md").write_text(
            summarise(stacks.read_text(), rate=PROFILE_RATE, cpu_seconds=cpu)
        )
    if server_log is None:  # the floor: it counts its own answers
        after = await asyncio.to_thread(floor_counts, address)
        ok = after.get("OK", 0) - floor_before.get("OK", 0)
        failed = after.get("failed", 0) - floor_before.get("failed", 0)
    else:
        await asyncio.sleep(0.3)  # the last log lines reach the file
        ok, failed = count_ok(server_log, scenario.method, since)
    tps = pgbench_tps or await asyncio.to_thread(
        pgbench, pgb, tenant_url, scenario.pgbench_sql, clients, seconds
    )
    return Row(scenario.name + label, clients, workers, run.rps, run.p50_ms, run.p99_ms,
               cpu / max(ok, 1) * 1000, peak_rss_mb(pids), connections, tps, ok, failed)  # fmt: skip


async def tenant_mix(
    keys: list[str], *, clients: int, address: str, h2: str, work: Path, per_tenant: int = 100
) -> float:
    """GetSession spread over every small tenant: rounds of `clients` h2load processes, each
    on a different tenant's key. Returns requests per second over the whole mix."""
    body = work / "mix.grpc"
    body.write_bytes(grpc_frame(session_pb2.GetSessionRequest(id=1)))
    started, total = time.perf_counter(), 0
    for first in range(0, len(keys), clients):
        batch = keys[first : first + clients]
        procs = [
            await asyncio.create_subprocess_exec(
                h2,
                "-c",
                "1",
                "-m",
                "1",
                "-n",
                str(per_tenant),
                *_grpc_call(body, key, address, "GetSession"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            for key in batch
        ]
        for proc in procs:
            await proc.wait()
        total += per_tenant * len(batch)
    return total / (time.perf_counter() - started)


async def bench(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    tools = (ensure_h2load(), pgbench_binary())
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        work = Path(tmp)
        cluster = None
        base = os.environ.get("STUDIO_DATABASE_URL")
        if base is None:
            cluster = LocalPostgres(work / "pg" / "data", max_connections=1200)
            cluster.start()
            base = cluster.url()
        master_url = with_database(base, f"bench_master_{os.getpid()}")
        async with await psycopg.AsyncConnection.connect(
            with_database(base, "postgres"), autocommit=True
        ) as conn:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(
                sql.Identifier(str(psycopg.conninfo.conninfo_to_dict(master_url)["dbname"]))))  # fmt: skip
        try:
            big_url, big_key, keys = await provision(master_url, args.sessions, args.tenants)
            rows = []
            for repetition in range(1, args.repeat + 1):
                rows += await one_pass(args, master_url, base, big_url, big_key, keys, tools,
                                       work, notes, repetition)  # fmt: skip
            notes += comparisons(rows) + metrics_cost(rows)
            return rows, notes
        finally:
            if cluster is not None:
                cluster.destroy()  # its files too: a benchmark cluster is made for one run


async def one_pass(
    args: argparse.Namespace, master_url: str, base: str, big_url: str, big_key: str,
    keys: list[str], tools: tuple[str, str], work: Path, notes: list[str], repetition: int,
) -> list[Row]:  # fmt: skip
    """Every chosen scenario on studio-rpc (each --workers), then the floor and the peer: a
    repetition. Repetitions interleave the three, so that a slow moment of this shared
    machine weighs on all of them rather than on one."""
    rows: list[Row] = []
    # With --metrics each server twice, one after the other: off then on, on then off in the
    # next repetition (so that neither always runs on the database the other has grown).
    variants = METRICS_VARIANTS[args.metrics][:: 1 if repetition % 2 else -1]
    for workers, metrics in [(w, m) for w in args.workers for m in variants]:
        log = work / f"server-{workers}{'-metrics' if metrics else ''}.log"
        server, address = start_server(master_url, workers, log, metrics=metrics)
        baselines = workers == args.workers[0] and not metrics and args.baselines
        try:
            pids = server_pids(server.pid)
            chosen = [s for s in scenarios(update_id=10_000, list_project=1)
                          if not args.only or s.name in args.only]  # fmt: skip
            for scenario in chosen:
                for clients in args.concurrency:
                    pair = [r.pgbench_tps for r in rows if (r.workers, r.concurrency) == (workers, clients)
                            and r.scenario.removesuffix(METRICS_LABEL) == scenario.name]  # fmt: skip
                    row = await measure(
                            scenario, clients=clients, seconds=args.seconds,
                            address=address, key=big_key, pids=pids, tenant_url=big_url,
                            server_log=log, tools=tools, work=work, workers=workers,
                            profile=args.profile, label=METRICS_LABEL if metrics else "",
                            pgbench_tps=pair[0] if pair else None,  # the other half of a pair's
                        )  # fmt: skip
                    rows.append(row)
                    print(f"{workers}w {row.scenario:<30} c={clients:<3}"
                              f" {row.rps:8.0f}/s p99 {row.p99_ms:6.1f} ms"
                              f" cpu {row.cpu_per_1000:.2f} ms/call"
                              f" pgbench {row.pgbench_tps:8.0f}/s ratio {row.ratio:.2f}"
                              f" ok {row.grpc_ok} failed {row.grpc_failed}", flush=True)  # fmt: skip
            if baselines and keys and repetition == 1:
                for clients in [c for c in args.concurrency if c > 1]:
                    mix = await tenant_mix(keys, clients=clients, address=address,
                                               h2=tools[0], work=work)  # fmt: skip
                    single = await tenant_mix([big_key] * len(keys), clients=clients,
                                                  address=address, h2=tools[0], work=work)  # fmt: skip
                    notes.append(
                        f"{len(keys)}-tenant mix (GetSession, {clients} at once, "
                        f"{clients} h2load processes a round): {mix:.0f}/s against "
                        f"{single:.0f}/s on one tenant measured the same way, ratio "
                        f"{mix / single:.2f}; peak server RSS {peak_rss_mb(pids):.0f} MB"
                    )
                    print(notes[-1], flush=True)
        finally:
            server.terminate()
            server.wait(30)
        if baselines:
            rows += await measure_floor(rows, chosen, args, big_url, tools, work)
            rows += await measure_peer(rows, chosen, args, base, work)
    for row in rows:
        row.repetition = repetition
    return rows


async def measure_floor(
    rows: list[Row], chosen: list[Scenario], args: argparse.Namespace, big_url: str,
    tools: tuple[str, str], work: Path,
) -> list[Row]:  # fmt: skip
    """The floor server on the scenarios it serves, against the same pgbench rates."""
    pgbench_of = {(r.scenario, r.concurrency): r.pgbench_tps for r in rows if r.workers == 1}
    floor_rows = []
    server, address = start_floor(big_url)
    try:
        for scenario in [s for s in chosen if s.name in FLOOR_SCENARIOS]:
            for clients in args.concurrency:
                row = await measure(
                    scenario, clients=clients, seconds=args.seconds, address=address,
                    key="none", pids=[server.pid], tenant_url=big_url, server_log=None,
                    tools=tools, work=work, workers=1, profile=args.profile,
                    pgbench_tps=pgbench_of.get((scenario.name, clients)), label=FLOOR_LABEL,
                )  # fmt: skip
                floor_rows.append(row)
                print(f"floor {row.scenario:<30} c={clients:<3} {row.rps:8.0f}/s"
                      f" cpu {row.cpu_per_1000:.2f} ms/call ratio {row.ratio:.2f}", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
    return floor_rows


_PEERS: dict[Path, TrpcPeer] = {}


async def measure_peer(
    rows: list[Row], chosen: list[Scenario], args: argparse.Namespace, base_url: str, work: Path
) -> list[Row]:
    """The tRPC peer (the system we replace) on the calls it serves, driven by wrk with its
    own scripts, its database reset before every run."""
    source = peer_source()
    wanted = [s for s in chosen if s.name in PEER_SCENARIOS]
    if source is None or not wanted or shutil.which("node") is None:
        print("the tRPC peer is not measured (../shared/peers-trpc or node missing)",
              file=sys.stderr)  # fmt: skip
        return []
    wrk = ensure_wrk()
    pgbench_of = {(r.scenario, r.concurrency): r.pgbench_tps for r in rows if r.workers == 1}
    peer = _PEERS.get(work) or await asyncio.to_thread(TrpcPeer, source, work, base_url)
    _PEERS[work] = peer  # built and given its database once, for every repetition
    peer.wrap = on_server_cores
    peer_rows = []
    for scenario in wanted:
        for clients in args.concurrency:
            await asyncio.to_thread(peer.reset)
            pid = await asyncio.to_thread(peer.start)
            stop = asyncio.Event()
            sampler = asyncio.create_task(
                peak_connections(with_database(peer.url, "postgres"), peer.dbname, stop)
            )
            try:
                cpu_before = cpu_seconds([pid])
                run = await asyncio.to_thread(
                    peer.wrk, wrk, PEER_SCENARIOS[scenario.name], clients, args.seconds
                )
                cpu = cpu_seconds([pid]) - cpu_before
                rss = peak_rss_mb([pid])
            finally:
                stop.set()
                connections = await sampler
                peer.stop()
            if not run.ok:  # its figures would be those of errors: say so, do not print them
                raise RuntimeError(f"the tRPC peer answered no {scenario.name} call with success")
            row = Row(scenario.name + PEER_LABEL, clients, 1, run.rps, run.p50_ms, run.p99_ms,
                      cpu / max(run.ok, 1) * 1000, rss, connections,
                      pgbench_of.get((scenario.name, clients), 0.0), run.ok, run.failed)  # fmt: skip
            peer_rows.append(row)
            print(f"tRPC  {row.scenario:<30} c={clients:<3} {row.rps:8.0f}/s"
                  f" p99 {row.p99_ms:6.1f} ms cpu {row.cpu_per_1000:.2f} ms/call"
                  f" ok {run.ok} failed {run.failed}", flush=True)  # fmt: skip
    return peer_rows


def comparisons(rows: list[Row]) -> list[str]:
    """studio / tRPC peer and studio / floor, per scenario and concurrency (one worker), over
    the repetitions: the range of each ratio (repetition by repetition: each compares runs
    made minutes apart)."""
    by_key = {(r.scenario, r.concurrency, r.repetition): r for r in rows if r.workers == 1}
    others = (PEER_LABEL, FLOOR_LABEL)
    ours_keys = sorted({(n, c) for n, c, _ in by_key if not n.endswith(others)}, key=str)
    lines = []
    for name, clients in ours_keys:
        for label, short in ((PEER_LABEL, "tRPC"), (FLOOR_LABEL, "floor")):
            pairs = [
                (ours, other)
                for (n, c, rep), ours in by_key.items()
                if (n, c) == (name, clients)
                and (other := by_key.get((name + label, clients, rep))) is not None
                and other.rps
                and other.cpu_per_1000
            ]
            if not pairs:
                continue
            rps = [o.rps / t.rps for o, t in pairs]
            cpu = [o.cpu_per_1000 / t.cpu_per_1000 for o, t in pairs]
            line = (
                f"{name} at {clients}: studio / {short} req/s {_span(rps)}, CPU per call"
                f" {_span(cpu)} ({_span([o.cpu_per_1000 for o, _ in pairs])} against"
                f" {_span([t.cpu_per_1000 for _, t in pairs])} ms)"
            )
            if short == "tRPC":
                line += (
                    f", p99 {_span([o.p99_ms for o, _ in pairs], 1)} against"
                    f" {_span([t.p99_ms for _, t in pairs], 1)} ms"
                )
            lines.append(line)
    return lines


def metrics_cost(rows: list[Row]) -> list[str]:
    """What the metrics cost a call: CPU per call with them on against off, per scenario,
    concurrency and workers, over the repetitions (each pair ran back to back)."""
    off = {(r.scenario, r.concurrency, r.workers, r.repetition): r for r in rows}
    pairs: dict[tuple[str, int, int], list[tuple[Row, Row]]] = {}
    for r in rows:
        if r.scenario.endswith(METRICS_LABEL):
            name = r.scenario.removesuffix(METRICS_LABEL)
            base = off.get((name, r.concurrency, r.workers, r.repetition))
            if base is not None and base.cpu_per_1000:
                pairs.setdefault((name, r.concurrency, r.workers), []).append((base, r))
    lines = []
    for (name, clients, workers), runs in pairs.items():
        cost_us = [(on.cpu_per_1000 - b.cpu_per_1000) * 1000 for b, on in runs]
        share = [on.cpu_per_1000 / b.cpu_per_1000 - 1 for b, on in runs]
        lines.append(
            f"metrics on against off, {name} at {clients}, {workers} worker(s): CPU per call"
            f" {_span([on.cpu_per_1000 for _, on in runs])} against"
            f" {_span([b.cpu_per_1000 for b, _ in runs])} ms, a difference of"
            f" {statistics.median(cost_us):+.0f} us ({statistics.median(share):+.1%}) median"
            f" over {len(runs)} pairs (range {min(cost_us):+.0f} to {max(cost_us):+.0f} us);"
            f" req/s {_span([on.rps for _, on in runs], 0)} against"
            f" {_span([b.rps for b, _ in runs], 0)}"
        )
    return lines


def _span(values: list[float], digits: int = 2) -> str:
    low, high = min(values), max(values)
    return (
        f"{low:.{digits}f}"
        if f"{low:.{digits}f}" == f"{high:.{digits}f}"
        else (f"{low:.{digits}f}-{high:.{digits}f}")
    )


def render(rows: list[Row], notes: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python"
        f" {platform.python_version()}, PostgreSQL 18 (embedded binaries, fsync and"
        f" synchronous_commit on), server, PostgreSQL, h2load and pgbench on the same machine."
        f" {args.sessions} sessions in the big studio; {args.seconds:g} s per run,"
        f" {args.repeat} repetitions; event loop {args.event_loop}.",
        "",
        "| scenario | workers | clients | req/s | p50 ms | p99 ms | CPU s / 1000 req |"
        " peak RSS MB | PG conns | pgbench tps | ratio | gRPC OK / failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.workers} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms:.2f} |"
            f" {r.p99_ms:.2f} | {r.cpu_per_1000:.2f} | {r.rss_mb:.0f} | {r.connections} |"
            f" {r.pgbench_tps:.0f} | {r.ratio:.2f} | {r.grpc_ok} / {r.grpc_failed} |"
        )
    return "\n".join([*lines, "", *(f"- {n}" for n in [*notes, *speed_ups(rows)])]) + "\n"


def speed_ups(rows: list[Row]) -> list[str]:
    """req/s with the most workers over req/s with one, per scenario and concurrency."""
    by_key = {(r.scenario, r.concurrency, r.workers): r.rps for r in rows}
    most = max((r.workers for r in rows), default=1)
    found = [
        f"{name} x{by_key[(name, clients, most)] / rps:.2f} at {clients}"
        for (name, clients, workers), rps in by_key.items()
        if workers == 1 and (name, clients, most) in by_key and clients > 1 and rps
    ]
    if most == 1 or not found:
        return []
    return [f"--workers {most} against 1 (req/s): " + "; ".join(found)]


RESULTS = Path("bench/results.md")
README = Path("README.md")
QUOTE_START, QUOTE_END = "<!-- api-bench -->\n", "<!-- /api-bench -->\n"


def quote_in_readme(table: str) -> None:
    """The README quotes the last full run: replace what stands between its markers."""
    text = README.read_text()
    start, end = text.index(QUOTE_START) + len(QUOTE_START), text.index(QUOTE_END)
    README.write_text(text[:start] + table + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")],
                        default=[1, 16, 64])  # fmt: skip
    parser.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")],
                        default=[1, 2])  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="the event loop of studio serve and of the floor")  # fmt: skip
    parser.add_argument("--pin", action="store_true",
                        help="the server on cores of its own (one per worker), the rest on"
                        " the others (needs more cores than workers)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=2,
                        help="repetitions of every run, interleaving studio, floor and peer")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results.md")
    parser.add_argument("--only", type=lambda s: s.split(","), default=[],
                        help="scenario names, comma-separated (default: all)")  # fmt: skip
    parser.add_argument("--profile", type=Path, default=None,
                        help="record each run with py-spy into this directory")  # fmt: skip
    parser.add_argument("--metrics", action="store_true",
                        help="every studio run again with --metrics-port: the metrics' cost")  # fmt: skip
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="leave out the floor, the tRPC peer and the tenant mix")  # fmt: skip
    args = parser.parse_args()
    EVENT_LOOP[0] = args.event_loop
    if args.pin:
        pin(max(args.workers))
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    rows, notes = asyncio.run(bench(args))
    table = render(rows, notes, args)
    out = args.out or (args.profile / "results.md" if args.profile else RESULTS)
    out.write_text(table)
    if out == RESULTS:
        quote_in_readme(table)
    print(table)
    if args.profile is not None:
        summary = [
            f"## {path.stem}\n\n{path.read_text()}" for path in sorted(args.profile.glob("*-w*.md"))
        ]
        (args.profile / "summary.md").write_text("\n".join(summary))
        print("\n".join(summary))


if __name__ == "__main__":
    main()
