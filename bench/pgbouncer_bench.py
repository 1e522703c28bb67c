"""PgBouncer benchmark: calls/s and PostgreSQL connections with and without a pooler, with
load spread over many studios.

    python3 dev.py bench pgbouncer [--tenants 1000] [--workers 2] [--concurrency 32]
                                   [--calls-per-tenant 50] [--max-db-connections 200]
                                   [--pool-size 2] [--server-idle-timeout 10]
                                   [--out bench/pgbouncer_results.md]

It starts its own PostgreSQL (fsync and synchronous commit on, max_connections 1200),
provisions `--tenants` studios with `studio tenants create --count` (from the template, as an
operator would), and starts a PgBouncer 1.18 (Debian's, transaction mode) in front of it.
Then, once without and once with the pooler (`studio tenants set-pooled-url --server ...` and
`--clear` in between, a fresh `studio serve --workers N` for each), it calls ListClients on
every studio: `--concurrency` h2load processes at any time, each on one studio's key with two
connections (so a studio's calls reach one or both workers, as behind a load balancer), each
making `--calls-per-tenant` calls; the next studio starts when one is done. Calls are counted
from the server's own log of gRPC codes. A sampler counts PostgreSQL's client backends (the
whole server, every 0.1 s): the peak, and what is left open when the load ends. The load
average before and after each pass goes with the figures (a shared machine). A benchmark,
not a test: it measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
from psycopg import sql

from bench.api_bench import (
    _grpc_call,
    count_ok,
    cpu_seconds,
    ensure_h2load,
    grpc_frame,
    listening_address,
    server_pids,
)
from db.local_pgbouncer import LocalPgBouncer
from db.local_postgres import LocalPostgres
from db.migrations.fleet import run_one
from db.tenant_catalog import list_tenants, server_of, service_conninfo, with_database
from studio.v1 import client_pb2

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "pgbouncer_results.md"
STUDIO = str(Path(sys.executable).parent / "studio")
METHOD = "ListClients"
SERVICE = "/studio.v1.ClientService/"


@dataclass
class Pass:
    mode: str  # "direct" or "pgbouncer"
    calls_per_second: float
    ok: int
    failed: int
    seconds: float
    peak_connections: int
    connections_after: int
    server_cpu_per_1000: float
    pgbouncer_cpu_per_1000: float | None
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def studio_command(master_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STUDIO_DATABASE_URL": master_url}
    done = subprocess.run([STUDIO, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"studio {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done


def provision(master_url: str, tenants: int) -> list[str]:
    """`tenants` studios made as an operator would; their admin keys (one JSON line each)."""
    asyncio.run(run_one(master_url, "master", mode="up"))
    started = time.monotonic()
    made = studio_command(
        master_url,
        "tenants",
        "create",
        "--name",
        "Bench",
        "--count",
        str(tenants),
        "--jobs",
        "4",
        "--json",
    )
    keys = [json.loads(line)["api_key"] for line in made.stdout.splitlines() if line.strip()]
    print(f"provisioned {len(keys)} studios in {time.monotonic() - started:.1f} s", file=sys.stderr)
    # A thousand new databases leave their pages dirty: written out before measuring.
    with psycopg.connect(master_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()
    return keys


async def sample_connections(url: str, stop: asyncio.Event) -> tuple[int, int]:
    """(peak, last) count of PostgreSQL's client backends, ours left out."""
    peak = last = 0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            row = await cur.fetchone()
            last = int(row[0]) if row else 0
            peak = max(peak, last)
            await asyncio.sleep(0.1)
    return peak, last


async def spread_load(
    h2: str, keys: list[str], *, address: str, concurrency: int, calls: int, body: Path
) -> float:
    """Every studio's `calls` calls, `concurrency` studios at a time; the seconds it took."""
    slots = asyncio.Semaphore(concurrency)

    async def one(key: str) -> None:
        async with slots:
            proc = await asyncio.create_subprocess_exec(
                h2, "-c", "2", "-m", "1", "-n", str(calls),
                *_grpc_call(body, key, address, METHOD, SERVICE),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await proc.wait()

    started = time.perf_counter()
    await asyncio.gather(*(one(key) for key in keys))
    return time.perf_counter() - started


def timeout_cost(conninfo: str, *, rounds: int = 10, calls: int = 300) -> tuple[float, float]:
    """Microseconds per call of one primary-key read as the service runs it through the
    pooler (autocommit, the cap a role default), and with the cap as SET LOCAL instead
    (BEGIN; SET LOCAL in one simple query, the read, COMMIT): the alternative's cost. Rounds
    alternate, so that the machine's other load falls on both alike."""
    read = "SELECT id, name FROM clients WHERE id = %s"
    spent = [0.0, 0.0]
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("INSERT INTO clients (name) VALUES ('Timing')")
        for _round in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                conn.execute(read, (1,)).fetchone()
            spent[0] += time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(calls):
                conn.execute("BEGIN; SET LOCAL statement_timeout = 30000")
                conn.execute(read, (1,)).fetchone()
                conn.execute("COMMIT")
            spent[1] += time.perf_counter() - started
    per_call = 1e6 / (rounds * calls)
    return spent[0] * per_call, spent[1] * per_call


def start_server(
    master_url: str, workers: int, max_db_connections: int, log: Path
) -> subprocess.Popen[str]:
    env = {**os.environ, "STUDIO_DATABASE_URL": master_url}
    return subprocess.Popen(
        [STUDIO, "serve", "--port", "0", "--no-http", "--no-demo", "--skip-migrations",
         "--workers", str(workers), "--max-db-connections", str(max_db_connections)],
        env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
    )  # fmt: skip


async def one_pass(
    args: argparse.Namespace, mode: str, master_url: str, base: str, keys: list[str],
    bouncer: LocalPgBouncer, h2: str, work: Path,
) -> Pass:  # fmt: skip
    server_address = server_of(base)
    if mode == "pgbouncer":
        studio_command(master_url, "tenants", "set-pooled-url", "--server", server_address,
                       bouncer.url)  # fmt: skip
    else:
        studio_command(master_url, "tenants", "set-pooled-url", "--server", server_address,
                       "--clear")  # fmt: skip
    log = work / f"serve-{mode}.log"
    server = start_server(master_url, args.workers, args.max_db_connections, log)
    try:
        address = listening_address(server, "studio serve", log)
        pids = server_pids(server.pid)
        body = work / "list-clients.grpc"
        body.write_bytes(grpc_frame(client_pb2.ListClientsRequest(page_size=10)))
        load_before = os.getloadavg()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_connections(with_database(base, "postgres"), stop))
        cpu_before = cpu_seconds(pids)
        bouncer_pid = [bouncer.process.pid] if bouncer.process is not None else []
        bouncer_before = cpu_seconds(bouncer_pid)
        seconds = await spread_load(
            h2, keys, address=address, concurrency=args.concurrency,
            calls=args.calls_per_tenant, body=body,
        )  # fmt: skip
        cpu = cpu_seconds(pids) - cpu_before
        bouncer_cpu = cpu_seconds(bouncer_pid) - bouncer_before
        await asyncio.sleep(1.0)  # what stays open once the load is over; the last log lines
        stop.set()
        peak, after = await sampler
        load_after = os.getloadavg()
        ok, failed = count_ok(log, METHOD, 0)
    finally:
        server.terminate()
        server.wait(60)
    per_1000 = 1000 / max(ok, 1)
    return Pass(
        mode, ok / seconds, ok, failed, seconds, peak, after, cpu * per_1000,
        bouncer_cpu * per_1000 if mode == "pgbouncer" else None, load_before, load_after,
    )  # fmt: skip


async def bench(args: argparse.Namespace) -> tuple[list[Pass], tuple[float, float]]:
    h2 = ensure_h2load()
    with tempfile.TemporaryDirectory(prefix="pgbouncer-bench-") as tmp:
        work = Path(tmp)
        cluster = LocalPostgres(work / "pg" / "data", max_connections=1200)
        cluster.start()
        bouncer = LocalPgBouncer(
            cluster.url(), pool_size=args.pool_size, max_client_conn=5000,
            server_idle_timeout=args.server_idle_timeout, auth_query=False,
        )  # fmt: skip
        try:
            base = cluster.url()
            master_url = with_database(base, "bench_master")
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("bench_master")))
            keys = await asyncio.to_thread(provision, master_url, args.tenants)
            bouncer.start()
            # Roles from the auth file: auth_query would hold a connection in every database.
            await asyncio.to_thread(bouncer.sync_auth_file, base)
            await asyncio.sleep(1)  # the reload
            location = await asyncio.to_thread(_first_studio, master_url, bouncer.url)
            cost = await asyncio.to_thread(timeout_cost, location)
            print(f"timeout cost (us per call): {cost}", file=sys.stderr)
            passes = []
            for mode in args.modes:
                passes.append(await one_pass(args, mode, master_url, base, keys, bouncer, h2, work))
                print(passes[-1], file=sys.stderr)
            return passes, cost
        finally:
            bouncer.destroy()
            cluster.destroy()  # its files too: a benchmark cluster is made for one run


def _first_studio(master_url: str, pooled_url: str) -> str:
    """The first studio's address through the pooler, as the service builds it."""

    async def find() -> str:
        async with await psycopg.AsyncConnection.connect(master_url) as master:
            tenant = (await list_tenants(master))[0]
        return service_conninfo(master_url, replace(tenant, pooled_url=pooled_url))

    return asyncio.run(find())


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def render(passes: list[Pass], cost: tuple[float, float], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, shared with other work (load"
        " averages 1 / 5 / 15 min before and after each pass). PostgreSQL 18 (embedded binaries,"
        " fsync and synchronous_commit on), PgBouncer 1.18 (Debian), studio serve, h2load on the"
        f" same machine. {args.tenants} studios from `studio tenants create --count`; ListClients"
        f" (page of 10) on every studio, {args.calls_per_tenant} calls each, {args.concurrency}"
        " studios at a time, two h2load connections each; `studio serve --workers"
        f" {args.workers} --max-db-connections {args.max_db_connections}`. PgBouncer: pool_mode"
        f" transaction, default_pool_size {args.pool_size}, server_idle_timeout"
        f" {args.server_idle_timeout} s, roles' SCRAM secrets in its auth_file. PG conns: PostgreSQL's client backends, the whole server"
        " (peak while loaded; still open 1 s after).",
        "",
        "| route | calls/s | gRPC OK / failed | seconds | PG conns peak | PG conns after |"
        " studio CPU s / 1000 calls | PgBouncer CPU s / 1000 calls | load before | load after |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for p in passes:
        bouncer = "" if p.pgbouncer_cpu_per_1000 is None else f"{p.pgbouncer_cpu_per_1000:.2f}"
        lines.append(
            f"| {p.mode} | {p.calls_per_second:.0f} | {p.ok} / {p.failed} | {p.seconds:.1f} |"
            f" {p.peak_connections} | {p.connections_after} | {p.server_cpu_per_1000:.2f} |"
            f" {bouncer} | {_load(p.load_before)} | {_load(p.load_after)} |"
        )
    command = shlex.join(["python3", "dev.py", "bench", "pgbouncer", *sys.argv[1:]])
    plain, set_local = cost
    lines += [
        "",
        "The statement cap through the pooler, one primary-key read on one studio, one caller:"
        f" {plain:.0f} us a call as the service runs it (autocommit, the cap the role's"
        f" default), {set_local:.0f} us with the cap as SET LOCAL in a transaction instead"
        f" (+{set_local - plain:.0f} us, {set_local / plain:.2f}x: two more round trips).",
        "",
        f"Command: `{command}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32, help="studios called at once")
    parser.add_argument("--calls-per-tenant", type=int, default=50)
    parser.add_argument("--max-db-connections", type=int, default=200,
                        help="studio serve's, per worker (its default: 200)")  # fmt: skip
    parser.add_argument("--pool-size", type=int, default=2,
                        help="PgBouncer's default_pool_size (server connections per studio)")  # fmt: skip
    parser.add_argument("--server-idle-timeout", type=int, default=10,
                        help="PgBouncer's: an idle server connection is closed after it")  # fmt: skip
    parser.add_argument("--modes", type=lambda s: [m for m in s.split(",") if m],
                        default=["direct", "pgbouncer"], help="the passes (none: '')")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    passes, cost = asyncio.run(bench(args))
    table = render(passes, cost, args)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
