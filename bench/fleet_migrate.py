"""Fleet benchmark: provisioning N studios from the migrated template, then fanning a new
tenant file out to all of them with `studio migrate up`'s engine at several --jobs, with the
peak number of migration connections observed per server.

    python3 dev.py bench fleet [--tenants 1000] [--servers 3] [--provision-jobs 4]
                               [--jobs 4,8,16] [--out bench/fleet_results.md]

It starts PostgreSQL servers of its own (embedded binaries, fsync on, as in production),
provisions N studios spread over them (`provision_tenants`, what `studio tenants create
--from-file` runs: a copy of each server's template, its own role, its history, its key), then
for each --jobs value adds one tenant file (a new table) and migrates the whole fleet.
A benchmark, not a test: it asserts nothing, it measures.

Run it on a rested disk: on this machine's ext4 (no journal) the kernel skips inodes freed in
the last minutes one by one when it makes a file (`recently_deleted` in ext4_create, seen with
perf), so right after a test suite or another run (each deletes ~300,000 files) a studio's
copy costs several times the CPU in the kernel, and provisioning takes up to 90 s instead of
55. Measured here: creating a file takes 9 us normally and 127 us right after deleting 30,000.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import psycopg

from db.local_postgres import LocalPostgres
from db.migrations.files import migrations_dir
from db.migrations.fleet import Fleet, FleetOptions, run_one
from db.migrations.runner import Status
from db.tenants import ProvisionError, TenantSpec, provision_tenants


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


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


async def bench(
    tenants: int, servers_count: int, provision_jobs: int, jobs_values: list[int]
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        clusters = [LocalPostgres(Path(tmp) / f"pg{i}" / "data") for i in range(servers_count)]
        for cluster in clusters:
            cluster.start()
        try:
            servers = [c.url() for c in clusters]
            master_url = clusters[0].url("bench_master")
            async with await psycopg.AsyncConnection.connect(servers[0], autocommit=True) as c:
                await c.execute("CREATE DATABASE bench_master")
            await run_one(master_url, "master", mode="up")
            specs = [
                TenantSpec(f"Bench {n}", None, None if n % servers_count == 0
                           else servers[n % servers_count])
                for n in range(tenants)
            ]  # fmt: skip
            load_before = _load()
            started = time.perf_counter()
            made = await provision_tenants(master_url, specs, concurrency=provision_jobs)
            provision_s = time.perf_counter() - started
            failed = [m for m in made if isinstance(m, ProvisionError)]
            print(f"provisioned {tenants - len(failed)}/{tenants} studios in {provision_s:.1f} s"
                  f" ({tenants / provision_s:.1f}/s, --jobs {provision_jobs}),"
                  f" load {load_before} -> {_load()}", flush=True)  # fmt: skip
            folder = Path(tmp) / "tenant_sql"
            folder.mkdir()
            shipped = sorted(migrations_dir("tenant").glob("*.sql"))
            for path in shipped:
                shutil.copy(path, folder / path.name)
            latest = max(int(path.name.split("_", 1)[0]) for path in shipped)
            rounds = []
            for step, jobs in enumerate(jobs_values):
                version = latest + 1 + step  # a new file after the shipped ones
                (folder / f"{version:04d}_bench_{version}.sql").write_text(
                    f"CREATE TABLE bench_{version} (id bigint PRIMARY KEY, note text);\n"
                )
                per_server = max(1, jobs // servers_count)
                stop = asyncio.Event()
                sampler = asyncio.create_task(_sample_peaks(servers, stop))
                load_before = _load()
                started = time.perf_counter()
                reports = await Fleet(
                    master_url,
                    FleetOptions(jobs=jobs, max_per_server=per_server, tenant_dir=folder),
                ).run()
                seconds = time.perf_counter() - started
                stop.set()
                peaks = await sampler
                applied = sum(r.status is Status.APPLIED for r in reports[1:])
                durations = sorted(r.duration_ms for r in reports[1:])
                row = {
                    "jobs": jobs, "max_per_server": per_server, "seconds": seconds,
                    "applied": applied, "peaks": [peaks[s] for s in servers],
                    "median_ms": durations[len(durations) // 2] if durations else 0,
                    "load": f"{load_before} -> {_load()}",
                }  # fmt: skip
                rounds.append(row)
                print(f"fan-out --jobs {jobs:>3} --max-per-server {per_server}: {seconds:6.2f} s,"
                      f" {applied}/{tenants} applied, median {row['median_ms']} ms per tenant,"
                      f" peak connections per server {row['peaks']}, load {row['load']}",
                      flush=True)  # fmt: skip
            return {
                "provision_s": provision_s, "provision_failed": len(failed),
                "provision_jobs": provision_jobs, "rounds": rounds,
            }  # fmt: skip
        finally:
            for cluster in clusters:
                cluster.destroy()  # its files too: a benchmark cluster is made for one run


def render(tenants: int, servers: int, result: dict[str, object]) -> str:
    provision_s = float(result["provision_s"])  # type: ignore[arg-type]
    lines = [
        f"Fleet: {tenants} studios on {servers} PostgreSQL 18 servers (fsync on). Machine:"
        f" {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
        " (shared with other work: see the load averages).",
        "",
        f"Provisioning (copies of each server's migrated template, --jobs"
        f" {result['provision_jobs']}): {provision_s:.1f} s, {tenants / provision_s:.1f}"
        f" studios/s, {result['provision_failed']} failed.",
        "",
        "Fan-out of one new tenant file to every studio:",
        "",
        "| --jobs | --max-per-server | applied | seconds | tenants/s | median ms per tenant |"
        " peak connections per server | load (1/5/15 min) |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in result["rounds"]:  # type: ignore[attr-defined]
        seconds = float(row["seconds"])
        peaks = " / ".join(str(p) for p in row["peaks"])
        lines.append(
            f"| {row['jobs']} | {row['max_per_server']} | {row['applied']} | {seconds:.2f} |"
            f" {tenants / seconds:.1f} | {row['median_ms']} | {peaks} | {row['load']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--provision-jobs", type=int, default=4)
    parser.add_argument("--jobs", default="4,8,16", help="comma-separated --jobs values")
    parser.add_argument("--out", type=Path, default=Path("bench/fleet_results.md"))
    args = parser.parse_args()
    result = asyncio.run(
        bench(args.tenants, args.servers, args.provision_jobs,
              [int(j) for j in args.jobs.split(",")])
    )  # fmt: skip
    table = render(args.tenants, args.servers, result)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
