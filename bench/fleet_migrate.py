"""Fleet migration benchmark: how long `studio migrate up` takes over N tenant databases on
two PostgreSQL servers, one at a time and at several --jobs, with the peak number of
migration connections observed per server.

    python3 dev.py bench fleet [--tenants 200] [--jobs 1,4,8,16] [--out bench/fleet_results.md]

It starts two PostgreSQL servers of its own (embedded binaries, fsync on, as in production),
registers N empty tenant databases in a master, alternating servers, and before each round
recreates them empty, so that every round applies the same 8 tenant files to every tenant.
A benchmark, not a test: it asserts nothing, it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from db.engines import create_engine_for
from db.local_postgres import LocalPostgres
from db.migrations.fleet import Fleet, FleetOptions, run_one
from db.migrations.runner import Status
from db.tenants import register_tenant


async def _sample_peaks(servers: list[str], stop: asyncio.Event) -> dict[str, int]:
    peaks = dict.fromkeys(servers, 0)
    conns = [await psycopg.AsyncConnection.connect(s, autocommit=True) for s in servers]
    try:
        while not stop.is_set():
            for server, conn in zip(servers, conns, strict=True):
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'studio-migrate%'"
                )
                row = await cur.fetchone()
                peaks[server] = max(peaks[server], int(row[0]) if row else 0)
            await asyncio.sleep(0.01)
    finally:
        for conn in conns:
            await conn.close()
    return peaks


async def _recreate(servers: list[str], names: list[str]) -> None:
    for index, name in enumerate(names):
        async with await psycopg.AsyncConnection.connect(
            servers[index % 2], autocommit=True
        ) as conn:
            ident = sql.Identifier(name)
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))


async def _register(master_url: str, servers: list[str], names: list[str]) -> None:
    engine = create_engine_for(master_url, pool_size=1)
    try:
        async with engine.begin() as master:
            for index, name in enumerate(names):
                await register_tenant(
                    master, name=name, slug=name.replace("_", "-"), database_name=name,
                    server_url=servers[index % 2],
                )  # fmt: skip
    finally:
        await engine.dispose()


async def bench(tenants: int, jobs_values: list[int]) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        clusters = [LocalPostgres(Path(tmp) / f"pg{i}" / "data") for i in (1, 2)]
        for cluster in clusters:
            cluster.start()
        try:
            servers = [c.url() for c in clusters]
            master_url = clusters[0].url("bench_master")
            async with await psycopg.AsyncConnection.connect(servers[0], autocommit=True) as c:
                await c.execute("CREATE DATABASE bench_master")
            await run_one(master_url, "master", mode="up")
            names = [f"bench_tenant_{n:05d}" for n in range(tenants)]
            await _register(master_url, servers, names)
            rows = []
            for jobs in jobs_values:
                await _recreate(servers, names)
                stop = asyncio.Event()
                sampler = asyncio.create_task(_sample_peaks(servers, stop))
                started = time.perf_counter()
                reports = await Fleet(
                    master_url, FleetOptions(jobs=jobs, max_per_server=max(1, jobs // 2))
                ).run()
                seconds = time.perf_counter() - started
                stop.set()
                peaks = await sampler
                applied = sum(r.status is Status.APPLIED for r in reports[1:])
                rows.append({
                    "jobs": jobs, "max_per_server": max(1, jobs // 2), "seconds": seconds,
                    "tenants_per_second": tenants / seconds, "applied": applied,
                    "peak_connections": [peaks[s] for s in servers],
                })  # fmt: skip
                peak = [peaks[s] for s in servers]
                print(f"jobs={jobs:>3}: {seconds:7.2f} s, {applied}/{tenants} tenants applied,"
                      f" peak connections per server {peak}", flush=True)  # fmt: skip
            return rows
        finally:
            for cluster in clusters:
                cluster.stop()


def render(tenants: int, rows: list[dict[str, object]]) -> str:
    base = float(rows[0]["seconds"])  # type: ignore[arg-type]
    lines = [
        f"Fleet migration: {tenants} tenant databases on 2 PostgreSQL 18 servers (fsync on),",
        "8 tenant files each (0001-0008), master first. Machine: "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}.",
        "",
        "| --jobs | --max-per-server | seconds | tenants/s | speed-up vs one at a time |"
        " peak connections per server |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        seconds = float(row["seconds"])  # type: ignore[arg-type]
        peaks = " / ".join(str(p) for p in row["peak_connections"])  # type: ignore[attr-defined]
        lines.append(
            f"| {row['jobs']} | {row['max_per_server']} | {seconds:.2f} |"
            f" {float(row['tenants_per_second']):.1f} | {base / seconds:.2f}x | {peaks} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--jobs", default="1,4,8,16", help="comma-separated --jobs values")
    parser.add_argument("--out", type=Path, default=Path("bench/fleet_results.md"))
    args = parser.parse_args()
    rows = asyncio.run(bench(args.tenants, [int(j) for j in args.jobs.split(",")]))
    table = render(args.tenants, rows)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
