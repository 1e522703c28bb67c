"""How long `studio tenants move` holds a studio's writes, by the size of the studio.

    python3 dev.py bench move [--sessions 0,10000,100000] [--runs 3] [--out bench/move_results.md]

It starts two PostgreSQL servers of its own (the embedded binaries, fsync on; the source is
STUDIO_DATABASE_URL's server when that is set), provisions one studio per size on the source
(1,000 clients, 10 rooms, 10,000 projects and that many sessions, as bench/api_bench.py
seeds them), and moves each to the other server with the command itself, `--json`, reading
its pause (hold to switch) and the time of each step. Each size is moved `--runs` times (there
and back: the source of one run is dropped with --drop-source before the next). A benchmark,
not a test: it measures, asserts nothing; no load runs meanwhile (tests/test_tenant_move.py
moves a studio under load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from bench.api_bench import SEED
from db.local_postgres import LocalPostgres
from db.migrations.fleet import run_one
from db.tenant_catalog import with_database
from db.tenants import provision_tenant

STUDIO = str(Path(sys.executable).parent / "studio")


def _studio(master_url: str, *args: str) -> dict[str, object]:
    env = {**os.environ, "STUDIO_DATABASE_URL": master_url}
    done = subprocess.run(
        [STUDIO, *args, "--json"], env=env, capture_output=True, text=True, check=True
    )
    parsed: dict[str, object] = json.loads(done.stdout)
    return parsed


async def _seeded(master_url: str, server_url: str, sessions: int) -> tuple[str, str]:
    """A studio of `sessions` sessions on `server_url`: (slug, its database's size)."""
    made = await provision_tenant(master_url, name=f"Size {sessions}", server_url=server_url)
    url = with_database(server_url, made.database_name)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(SEED.replace("%(sessions)s", str(int(sessions))).encode())
        await conn.execute("VACUUM (ANALYZE)")
        cur = await conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        row = await cur.fetchone()
    return made.slug, str(row[0]) if row else "?"


def _move(master_url: str, slug: str, to: str) -> dict[str, object]:
    report = _studio(master_url, "tenants", "move", slug, "--to", to)
    _studio(master_url, "tenants", "move", slug, "--drop-source")
    return report


async def main(args: argparse.Namespace) -> None:
    sizes = [int(n) for n in args.sessions.split(",")]
    with tempfile.TemporaryDirectory(prefix="move-bench-") as tmp:
        clusters = [LocalPostgres(Path(tmp) / name / "data") for name in ("source", "target")]
        for cluster in clusters:
            cluster.start()
        try:
            source = os.environ.get("STUDIO_DATABASE_URL") or clusters[0].url()
            target = clusters[1].url()
            async with await psycopg.AsyncConnection.connect(
                with_database(source, "postgres"), autocommit=True
            ) as conn:
                master_name = f"move_bench_{os.getpid()}"
                await conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(master_name))
                )
            master_url = with_database(source, master_name)
            await run_one(master_url, "master", mode="up")
            rows = []
            for sessions in sizes:
                slug, size = await _seeded(master_url, source, sessions)
                reports = []
                for run in range(args.runs):
                    there = target if run % 2 == 0 else source
                    reports.append(await asyncio.to_thread(_move, master_url, slug, there))
                rows.append((sessions, size, reports))
                print(f"moved {sessions} sessions {args.runs} times", file=sys.stderr)
        finally:
            for cluster in clusters:
                cluster.destroy()  # its files too: benchmark clusters are made for one run
    _write(args, rows)


def _median(reports: list[dict[str, object]], step: str) -> float:
    return statistics.median(float(r["step_seconds"][step]) for r in reports)  # type: ignore[index]


def _write(args: argparse.Namespace, rows: list[tuple[int, str, list[dict[str, object]]]]) -> None:
    lines = [
        "# Moving a studio: the write pause",
        "",
        f"`python3 dev.py bench move --sessions {args.sessions} --runs {args.runs}`. Machine:"
        f" {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()},"
        f" load average {os.getloadavg()[0]:.1f} at the end (the machine is shared); two"
        " PostgreSQL servers of the embedded binaries on it (fsync on). Each studio also has"
        " 1,000 clients, 10 rooms and 10,000 projects. Medians of the runs;"
        " the pause is from the hold (the source turns read-only) to the switch (the catalogue"
        " names the copy), as the command prints it.",
        "",
        "| sessions | database | pause s (median) | pause s (max) | copy s | verify s |"
        " before the hold s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sessions, size, reports in rows:
        pauses = [float(str(r["pause_seconds"])) for r in reports]
        lines.append(
            f"| {sessions:,} | {size} | {statistics.median(pauses):.2f} | {max(pauses):.2f} |"
            f" {_median(reports, 'copied'):.2f} | {_median(reports, 'verified'):.2f} |"
            f" {_median(reports, 'checked'):.2f} |"
        )
    text = "\n".join([*lines, ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="0,10000,100000", help="sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench/move_results.md")
    asyncio.run(main(parser.parse_args()))
