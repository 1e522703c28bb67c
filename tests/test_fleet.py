"""`studio migrate` over a fleet of tenant databases on two PostgreSQL servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from db.migrations.fleet import Fleet, FleetOptions, run_one
from db.migrations.runner import Status
from db.tenant_catalog import with_database
from db.tenants import provision_tenant
from tests.conftest import RUN_ID, Databases
from tests.migrating import LATEST, next_file
from tests.polling import wait_until
from tests.serving import STUDIO

NEXT = LATEST + 1
SLOW = 0.4  # seconds a test migration sleeps, so that runs overlap


@dataclass
class FleetSetup:
    master_url: str
    tenants: dict[str, str]  # slug -> conninfo
    tenant_dir: Path

    def fleet(self, **options: object) -> Fleet:
        return Fleet(self.master_url, FleetOptions(tenant_dir=self.tenant_dir, **options))  # type: ignore[arg-type]

    def studio(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "STUDIO_DATABASE_URL": self.master_url}
        return subprocess.run(
            [STUDIO, "migrate", *args, "--migrations-dir", str(self.tenant_dir)],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


def _one(url: str, query: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]


@pytest.fixture
def fleet_setup(
    databases: Databases,
    second_server: str,
    tenant_migrations: object,
    request: pytest.FixtureRequest,
) -> FleetSetup:
    """A master on the test server, three tenants there and three on the second server, all
    at the latest version, and a tenant folder (built-in files) a test can add files to."""
    master_url = databases.create("fleet")
    label = request.node.name.split("[")[0][5:17].replace("_", "-").strip("-")

    async def provision() -> dict[str, str]:
        await run_one(master_url, "master", mode="up")
        made = {}
        for n in range(6):
            server = None if n < 3 else second_server
            tenant = await provision_tenant(master_url, name=f"{label} {n}", server_url=server)
            made[tenant.slug] = with_database(server or master_url, tenant.database_name)
        return made

    tenants = asyncio.run(provision())
    return FleetSetup(master_url, tenants, tenant_migrations())  # type: ignore[operator]


def _add(setup: FleetSetup, name: str, sql: str) -> None:
    (setup.tenant_dir / name).write_text(sql)


def _version(url: str) -> object:
    return _one(url, "SELECT max(version) FROM studio_migrate.history WHERE status = 'applied'")


async def _peak_connections(setup: FleetSetup, stop: asyncio.Event) -> dict[str, int]:
    """Sample, per server, how many migration connections are open at once."""
    servers = {with_database(url, "postgres") for url in setup.tenants.values()}
    peak = dict.fromkeys(servers, 0)
    # one connection per server, open throughout (autocommit: each sample sees the present)
    conns = {s: await psycopg.AsyncConnection.connect(s, autocommit=True) for s in servers}
    while not stop.is_set():
        for server, conn in conns.items():
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'studio-migrate up' AND datname LIKE %s",
                (f"st\\_{RUN_ID}\\_%\\_t\\_%",),  # this run's tenants: others share the server
            )
            row = await cur.fetchone()
            peak[server] = max(peak[server], int(row[0]) if row else 0)
        await asyncio.sleep(0.01)
    for conn in conns.values():
        await conn.close()
    return peak


async def test_a_fleet_run_reaches_every_tenant_on_both_servers_within_its_bounds(
    fleet_setup: FleetSetup,
) -> None:
    _add(fleet_setup, next_file("add_session_tags"),
         f"SELECT pg_sleep({SLOW});\nALTER TABLE sessions ADD COLUMN tags text[];\n")  # fmt: skip
    stop = asyncio.Event()
    sampler = asyncio.create_task(_peak_connections(fleet_setup, stop))
    reports = await fleet_setup.fleet(jobs=4, max_per_server=2).run()
    stop.set()
    peaks = await sampler

    assert reports[0].target == "master"
    tenants = reports[1:]
    assert len(tenants) == 6
    assert {r.status for r in tenants} == {Status.APPLIED}
    assert all(r.applied == [NEXT] and (r.before, r.after) == (LATEST, NEXT) for r in tenants)
    assert len({r.server for r in tenants}) == 2
    assert all(1 <= peak <= 2 for peak in peaks.values()), peaks  # --max-per-server 2
    for url in fleet_setup.tenants.values():
        assert _version(url) == NEXT


async def test_one_tenant_failing_half_way_changes_nothing_there_and_stops_no_one(
    fleet_setup: FleetSetup, tmp_path: Path
) -> None:
    broken_slug, broken_url = next(iter(fleet_setup.tenants.items()))
    with psycopg.connect(broken_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE session_tags (id int)")  # in the way of line 3
    _add(fleet_setup, next_file("add_tags"),
         "ALTER TABLE sessions ADD COLUMN tags text[];\n\n"
         "CREATE TABLE session_tags (session_id bigint, tag text);\n")  # fmt: skip
    report_file = tmp_path / "report.jsonl"

    result = fleet_setup.studio("up", "--json", "--report", str(report_file))

    assert result.returncode == 4, result.stdout + result.stderr
    entries = [json.loads(line) for line in report_file.read_text().splitlines()]
    by_target = {e["target"]: e for e in entries if "target" in e}
    failed = by_target[f"tenant {broken_slug}"]
    assert failed["status"] == "failed"
    assert failed["error"]["file"] == next_file("add_tags")
    assert failed["error"]["line"] == 3
    assert failed["error"]["sqlstate"] == "42P07"
    assert failed["server"]
    assert sum(e["status"] == "applied" for e in by_target.values()) == 5
    # the failed file left no part of itself: line 1's column is not there
    assert _one(broken_url, "SELECT count(*) FROM information_schema.columns"
                " WHERE table_name = 'sessions' AND column_name = 'tags'") == 0  # fmt: skip
    assert entries[-1]["summary"]["by_status"] == {"up-to-date": 1, "applied": 5, "failed": 1}

    with psycopg.connect(broken_url, autocommit=True) as conn:
        conn.execute("DROP TABLE session_tags")
    again = fleet_setup.studio("up", "--json", "--only-failed", str(report_file))
    assert again.returncode == 0, again.stdout + again.stderr
    visited = [json.loads(line) for line in again.stdout.splitlines()][:-1]
    assert [(v["target"], v["status"]) for v in visited] == [
        ("master", "up-to-date"),
        (f"tenant {broken_slug}", "applied"),
    ]


async def test_fleet_runners_started_together_apply_each_file_exactly_once(
    fleet_setup: FleetSetup,
) -> None:
    _add(fleet_setup, next_file("slow"), f"SELECT pg_sleep({SLOW});\nCREATE TABLE nine (id int);\n")
    runs = await asyncio.gather(*(fleet_setup.fleet(jobs=3).run() for _ in range(3)))
    for url in fleet_setup.tenants.values():
        assert (
            _one(url, "SELECT count(*) FROM studio_migrate.history WHERE version = %s", (NEXT,))
            == 1
        )
    applied = [r for run in runs for r in run[1:] if r.applied]
    assert sorted(r.target for r in applied) == sorted(f"tenant {s}" for s in fleet_setup.tenants)
    assert all(r.status in {Status.APPLIED, Status.UP_TO_DATE} for run in runs for r in run)


@pytest.mark.parametrize("policy", ["on_error_stop", "max_failures", "canary"])
async def test_policies_stop_starting_tenants_after_failures(
    fleet_setup: FleetSetup, policy: str
) -> None:
    slugs = list(fleet_setup.tenants)
    # Two tenants will fail: the canary, or each server's first tenant (the one that goes
    # first on its server, before its others are let in).
    failing = slugs[:2] if policy == "canary" else [slugs[0], slugs[3]]
    for slug in failing:
        with psycopg.connect(fleet_setup.tenants[slug], autocommit=True) as conn:
            conn.execute("CREATE TABLE nine (id int)")
    _add(fleet_setup, next_file("nine"), "CREATE TABLE nine (id int);\n")
    flags = {
        "on_error_stop": ["--jobs", "1", "--on-error", "stop"],
        "max_failures": ["--jobs", "1", "--max-failures", "2"],
        "canary": ["--jobs", "4", "--canary", "2"],
    }[policy]

    result = fleet_setup.studio("up", "--json", *flags)

    assert result.returncode == 4, result.stdout + result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    statuses = [e["status"] for e in entries if e.get("target", "master") != "master"]
    expected_failed = 1 if policy == "on_error_stop" else 2
    assert statuses.count("failed") == expected_failed
    assert "applied" not in statuses
    assert statuses.count("skipped") == 6 - expected_failed


async def test_an_unreachable_tenant_is_reported_and_the_others_migrate(
    fleet_setup: FleetSetup,
) -> None:
    slug = next(iter(fleet_setup.tenants))
    with psycopg.connect(fleet_setup.master_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tenant_databases SET server_url = 'postgresql://postgres@127.0.0.1:1/x'"
            " WHERE organization_id = (SELECT id FROM organizations WHERE slug = %s)",
            (slug,),
        )
    _add(fleet_setup, next_file("nine"), "CREATE TABLE nine (id int);\n")
    reports = {r.target: r for r in await fleet_setup.fleet().run()}
    assert reports[f"tenant {slug}"].status is Status.UNREACHABLE
    assert sum(r.status is Status.APPLIED for r in reports.values()) == 5


def test_status_all_reads_the_fleet_from_a_role_that_cannot_write(
    fleet_setup: FleetSetup, databases: Databases
) -> None:
    _add(fleet_setup, next_file("nine"), "CREATE TABLE nine (id int);\n")
    behind = next(iter(fleet_setup.tenants.values()))
    role = f"{databases.name('reader')}_role"
    with psycopg.connect(databases.server_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE pg_read_all_data")
    try:
        reader_url = psycopg.conninfo.make_conninfo(fleet_setup.master_url, user=role)
        env = {**os.environ, "STUDIO_DATABASE_URL": reader_url}
        # only the tenants on this server: the second server has no such role
        with psycopg.connect(fleet_setup.master_url, autocommit=True) as conn:
            conn.execute("DELETE FROM tenant_databases WHERE server_url IS NOT NULL")
        result = subprocess.run(
            [STUDIO, "migrate", "status", "--all", "--migrations-dir", str(fleet_setup.tenant_dir)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        with psycopg.connect(databases.server_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
    assert result.returncode == 6, result.stdout + result.stderr
    assert "3 of 4 databases behind or broken" in result.stdout
    assert _version(behind) == LATEST  # status changed nothing


def test_sigint_stops_starting_tenants_and_rolls_back_the_one_in_flight(
    fleet_setup: FleetSetup, tmp_path: Path
) -> None:
    _add(fleet_setup, next_file("slow"), "CREATE TABLE nine (id int);\nSELECT pg_sleep(30);\n")
    report_file = tmp_path / "report.jsonl"
    env = {**os.environ, "STUDIO_DATABASE_URL": fleet_setup.master_url}
    process = subprocess.Popen(
        [STUDIO, "migrate", "up", "--jobs", "1", "--report", str(report_file),
         "--migrations-dir", str(fleet_setup.tenant_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (report_file.exists() and "master" in report_file.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    def a_tenant_is_in_its_pg_sleep() -> bool:
        return any(_one(with_database(url, "postgres"), "SELECT count(*) FROM pg_stat_activity"
                        " WHERE query LIKE '%%pg_sleep(30)%%' AND pid <> pg_backend_pid()")
                   for url in set(fleet_setup.tenants.values()))  # fmt: skip

    wait_until(a_tenant_is_in_its_pg_sleep, timeout=30, what="the first tenant's migration")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)

    assert process.returncode == 130, out + err
    entries = [json.loads(line) for line in report_file.read_text().splitlines()]
    statuses = [e["status"] for e in entries if "target" in e]
    assert statuses.count("interrupted") == 1
    assert statuses.count("skipped") == 5
    assert entries[-1]["summary"]["exit_code"] == 130
    for url in fleet_setup.tenants.values():  # the one in flight rolled back
        assert _one(url, "SELECT to_regclass('nine')") is None


def test_on_a_terminal_a_fleet_run_shows_a_live_progress_bar(fleet_setup: FleetSetup) -> None:
    _add(fleet_setup, next_file("nine"), "CREATE TABLE nine (id int);\n")
    primary, secondary = os.openpty()  # stderr is a terminal, as for an operator
    env = {**os.environ, "STUDIO_DATABASE_URL": fleet_setup.master_url}
    process = subprocess.Popen(
        [STUDIO, "migrate", "up", "--migrations-dir", str(fleet_setup.tenant_dir)],
        env=env, stdout=subprocess.PIPE, stderr=secondary, text=True,
    )  # fmt: skip
    os.close(secondary)
    stdout, _ = process.communicate(timeout=120)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    assert process.returncode == 0
    final = [line for line in screen.decode().split("\r") if "[" in line][-1]
    assert "[##############################] 7/7" in final
    assert "applied 6" in final
    assert "up-to-date 1" in final
    assert "ETA" in screen.decode()
    assert stdout.strip() == "applied: 6 up-to-date: 1"


def test_the_json_summary_has_a_dashboards_figures_per_status_and_per_server(
    fleet_setup: FleetSetup,
) -> None:
    """Counts per status, the run's time and each tenant's (median, p95), and the same per
    server: a dashboard reads one line, and the failing server stands out."""
    slugs = list(fleet_setup.tenants)
    broken_slug, broken_url = slugs[-1], fleet_setup.tenants[slugs[-1]]  # on the second server
    with psycopg.connect(broken_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE session_labels (id int)")
    _add(fleet_setup, next_file("add_labels"), "CREATE TABLE session_labels (label text);\n")

    result = fleet_setup.studio("up", "--json")

    assert result.returncode == 4, result.stdout + result.stderr
    *lines, last = [json.loads(line) for line in result.stdout.splitlines()]
    summary = last["summary"]
    assert summary["by_status"] == {"up-to-date": 1, "applied": 5, "failed": 1}
    tenant_ms = sorted(e["duration_ms"] for e in lines if e["tenant"] is not None)
    durations = summary["duration_ms"]
    assert durations["sum"] == sum(tenant_ms)
    assert durations["max"] == tenant_ms[-1]
    assert durations["p95"] == tenant_ms[-1]  # nearest rank of 6
    assert tenant_ms[2] <= durations["median"] <= tenant_ms[3]
    assert durations["total"] >= durations["max"]
    broken_server = next(e["server"] for e in lines if e["tenant"] == broken_slug)
    master_server = next(e["server"] for e in lines if e["target"] == "master")
    assert broken_server != master_server
    assert summary["servers"][broken_server]["by_status"] == {"applied": 2, "failed": 1}
    assert summary["servers"][master_server]["by_status"] == {"up-to-date": 1, "applied": 3}
    assert summary["servers"][master_server]["databases"] == 4
    per_server_ms = {s: v["duration_ms"]["sum"] for s, v in summary["servers"].items()}
    assert sum(per_server_ms.values()) == sum(e["duration_ms"] for e in lines)
