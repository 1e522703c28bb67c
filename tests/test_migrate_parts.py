"""`studio migrate up --part K/N`: several runners split a fleet, each tenant exactly once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from db.migrations.fleet import run_one
from db.tenant_catalog import with_database
from db.tenants import TenantSpec, provision_tenants
from tests.conftest import Databases
from tests.migrating import LATEST, next_file
from tests.test_cli_migrate import json_lines, studio

NEW_FILE = next_file("add_sessions_note")


def _tenants(output: str) -> list[str]:
    return [str(r["target"]) for r in json_lines(output)[:-1] if r["target"] != "master"]


async def _fleet(databases: Databases, names: list[str]) -> tuple[str, dict[str, str]]:
    master_url = databases.create("parts_master")
    await run_one(master_url, "master", mode="up")
    made = await provision_tenants(master_url, [TenantSpec(n, None, None) for n in names])
    urls = {}
    for tenant in made:
        assert not isinstance(tenant, Exception), tenant
        urls[f"tenant {tenant.slug}"] = with_database(databases.server_url, tenant.database_name)
    return master_url, urls


def _applied_new(url: str) -> int:
    """Whether the new file (the one after the built-in ones) was applied there: 1 or 0."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM studio_migrate.history WHERE version = %s", (LATEST + 1,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_parts_cover_the_fleet_once_and_keep_their_tenants_as_it_grows(
    databases: Databases, tenant_migrations: Callable[..., Path]
) -> None:
    master_url, urls = await _fleet(databases, [f"Part Studio {i}" for i in range(12)])
    folder = tenant_migrations()
    (folder / NEW_FILE).write_text("ALTER TABLE sessions ADD COLUMN IF NOT EXISTS note text;\n")
    common = ("--migrations-dir", str(folder), "--json")

    shares: dict[int, list[str]] = {}
    for k in (1, 2, 3):
        result = studio("migrate", "up", "--part", f"{k}/3", *common, master_url=master_url)
        assert result.returncode == 0, result.stdout + result.stderr
        reports = json_lines(result.stdout)
        assert reports[0]["target"] == "master"  # every part brings the master up first
        shares[k] = _tenants(result.stdout)
        assert all(r["applied"] == [LATEST + 1] for r in reports[1:-1])
        # this part's tenants have the new file now; the tenants of the parts still to run do not
        done = {t for j in range(1, k + 1) for t in shares[j]}
        assert {t for t, url in urls.items() if _applied_new(url) == 1} == done

    every = [t for k in (1, 2, 3) for t in shares[k]]
    assert sorted(every) == sorted(urls)  # no gap, and (with the count) no overlap
    assert len(every) == len(set(every))
    assert all(shares.values()), shares  # 12 tenants in 3 shares: none empty here
    assert all(_applied_new(url) == 1 for url in urls.values())  # each migrated once

    # The same split on the next run, and for `status`; new tenants do not move the old ones.
    await _more(master_url, ["Part Studio 12", "Part Studio 13"], folder)
    later: list[str] = []
    for k in (1, 2, 3):
        status = studio("migrate", "status", "--part", f"{k}/3", *common, master_url=master_url)
        assert status.returncode == 0, status.stdout + status.stderr
        now = _tenants(status.stdout)
        assert set(shares[k]) <= set(now)  # a tenant keeps its share as the fleet grows
        later += now
    whole = studio("migrate", "status", *common, master_url=master_url)
    assert sorted(later) == sorted(_tenants(whole.stdout))
    assert len(later) == len(set(later)) == 14


async def _more(master_url: str, names: list[str], folder: Path) -> None:
    specs = [TenantSpec(n, None, None) for n in names]
    made = await provision_tenants(master_url, specs, tenant_dir=folder)
    assert not any(isinstance(t, Exception) for t in made), made


def test_a_bad_part_is_a_usage_error(fresh_db: str) -> None:
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        result = studio("migrate", "up", "--part", bad, master_url=fresh_db)
        assert result.returncode == 1, (bad, result.stderr)
        assert "K/N" in result.stderr
    one = studio("migrate", "up", "--part", "1/2", "--database-url", fresh_db)
    assert one.returncode == 1
    assert "--part" in one.stderr
