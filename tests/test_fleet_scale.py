"""A fleet of several hundred studios on three PostgreSQL servers, provisioned in bulk from
the migrated template and migrated through the CLI: one tenant failing, and a server that does
not answer, leave the others as they would be without them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from db.migrations.files import migrations_dir
from db.migrations.fleet import run_one
from db.tenant_catalog import server_of, with_database
from tests.conftest import Databases
from tests.serving import STUDIO
from tests.silent_server import SilentServer

PER_SERVER = 100  # 300 studios in all


@dataclass
class BigFleet:
    master_url: str
    servers: list[str]  # the `postgres` database of each server
    tenant_dir: Path  # the files tests add to: each adds the next version
    tenants: dict[str, str]  # slug -> database name
    server_of_slug: dict[str, str]  # slug -> server URL

    def next_file(self, body: str) -> str:
        version = max(int(p.name[:4]) for p in self.tenant_dir.glob("*.sql")) + 1
        name = f"{version:04d}_step_{version}.sql"
        (self.tenant_dir / name).write_text(body)
        return name

    def studio(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "STUDIO_DATABASE_URL": self.master_url}
        return subprocess.run(
            [STUDIO, "migrate", *args, "--migrations-dir", str(self.tenant_dir)],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def admin_url(self, slug: str) -> str:
        return with_database(self.server_of_slug[slug], self.tenants[slug])


def _entries(output: str) -> tuple[dict[str, dict[str, object]], dict[str, object]]:
    lines = [json.loads(line) for line in output.splitlines()]
    return {e["target"]: e for e in lines[:-1]}, lines[-1]["summary"]


@pytest.fixture(scope="module")
def big_fleet(
    databases: Databases,
    second_server: str,
    third_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BigFleet]:
    master_url = databases.create("big")
    asyncio.run(run_one(master_url, "master", mode="up"))
    servers = [databases.server_url, second_server, third_server]
    folder = tmp_path_factory.mktemp("big_fleet")
    specs = folder / "studios.jsonl"
    lines = []
    for index, server in enumerate(servers):
        for n in range(PER_SERVER):
            entry = {"name": f"Big {index} {n}", "server_url": None if index == 0 else server}
            lines.append(json.dumps(entry))
    specs.write_text("\n".join(lines) + "\n")
    made = subprocess.run(
        [STUDIO, "tenants", "create", "--from-file", str(specs), "--jobs", "6"],
        env={**os.environ, "STUDIO_DATABASE_URL": master_url},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    created = [json.loads(line) for line in made.stdout.splitlines()]
    assert len(created) == 3 * PER_SERVER
    tenant_dir = folder / "tenant_sql"
    tenant_dir.mkdir()
    for path in migrations_dir("tenant").glob("*.sql"):
        (tenant_dir / path.name).write_bytes(path.read_bytes())
    server_by_slug = {c["tenant"]: servers[int(c["tenant"].split("-")[1])] for c in created}
    yield BigFleet(
        master_url,
        servers,
        tenant_dir,
        {c["tenant"]: c["database"] for c in created},
        server_by_slug,
    )
    for server in servers[1:]:  # the session's cleanup covers only the first server
        Databases(server).drop_all()


def test_a_tenant_the_runner_cannot_migrate_fails_alone_and_the_fleet_goes_on(
    big_fleet: BigFleet, tmp_path: Path
) -> None:
    slug = next(s for s in big_fleet.tenants if s.startswith("big-1-"))  # on the second server
    database = big_fleet.tenants[slug]
    with psycopg.connect(big_fleet.admin_url(slug), autocommit=True) as conn:
        conn.execute(f'REVOKE CREATE ON DATABASE "{database}" FROM "{database}"')
    big_fleet.next_file("CREATE TABLE IF NOT EXISTS step_notes (note text);\n")
    report = tmp_path / "report.jsonl"

    result = big_fleet.studio("up", "--json", "--jobs", "8", "--report", str(report))

    assert result.returncode == 4, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    by_target, summary = _entries(result.stdout)
    failed = by_target[f"tenant {slug}"]
    assert failed["status"] == "failed"
    assert failed["error"]["sqlstate"] == "42501"  # type: ignore[index]
    assert "permission denied" in failed["error"]["message"]  # type: ignore[index]
    assert (failed["tenant"], failed["database"]) == (slug, database)
    assert failed["server"] == server_of(big_fleet.server_of_slug[slug])
    assert summary["by_status"] == {"up-to-date": 1, "applied": 299, "failed": 1}
    for entry in by_target.values():  # every line names its studio, database and server
        if entry["target"] != "master":
            tenant = str(entry["tenant"])
            assert entry["database"] == big_fleet.tenants[tenant]
            assert entry["server"] == server_of(big_fleet.server_of_slug[tenant])

    with psycopg.connect(big_fleet.admin_url(slug), autocommit=True) as conn:
        conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO "{database}"')
    again = big_fleet.studio("up", "--json", "--only-failed", str(report))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    by_target, _ = _entries(again.stdout)
    assert [t for t, e in by_target.items() if e["status"] == "applied"] == [f"tenant {slug}"]


def _move_to(big_fleet: BigFleet, server: str, to_url: str) -> None:
    """Point the master's catalogue for every tenant of `server` at another URL."""
    with psycopg.connect(big_fleet.master_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tenant_databases SET server_url = %s WHERE server_url IS NOT DISTINCT FROM %s",
            (to_url, None if server == big_fleet.servers[0] else server),
        )


def test_a_server_that_does_not_answer_slows_no_one_else_and_is_reported_at_once(
    big_fleet: BigFleet,
) -> None:
    third = big_fleet.servers[2]
    flags = ["--json", "--jobs", "8", "--connect-timeout", "3"]
    started = time.monotonic()
    without = big_fleet.studio("status", *flags)
    healthy_alone = time.monotonic() - started
    assert without.returncode == 0, without.stderr[-2000:]

    with SilentServer() as silent:
        _move_to(big_fleet, third, silent.url)
        try:
            started = time.monotonic()
            result = big_fleet.studio("status", *flags)
            with_silent = time.monotonic() - started
        finally:
            _move_to(big_fleet, silent.url, third)
        accepted = silent.accepted

    assert result.returncode == 4, result.stderr[-2000:]
    by_target, summary = _entries(result.stdout)
    assert summary["by_status"] == {"up-to-date": 201, "unreachable": 100}
    hung = [e for e in by_target.values() if e["status"] == "unreachable"]
    assert all(str(e["tenant"]).startswith("big-2-") for e in hung)
    # One tenant tried the silent server, for its connect timeout; the others were reported
    # at once, naming why, instead of each waiting out the timeout in turn.
    assert accepted == 1
    messages = {str(e["tenant"]): str(e["error"]["message"]) for e in hung}  # type: ignore[index]
    [tried] = [slug for slug, message in messages.items() if "not tried" not in message]
    assert "did not answer within 3s" in messages[tried]
    assert by_target[f"tenant {tried}"]["duration_ms"] < 3000 + 1000  # type: ignore[operator]
    for slug, message in messages.items():
        if slug != tried:
            assert message.startswith("not tried: "), message
            assert f"tenant {tried}" in message, message
            assert by_target[f"tenant {slug}"]["duration_ms"] == 0
    # The healthy two thirds took what they take alone (one slot of 8 held for 3 s at most).
    assert with_silent < healthy_alone + 3 + 0.5 * healthy_alone, (with_silent, healthy_alone)
