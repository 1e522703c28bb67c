"""`studio migrate` as an operator runs it: exit codes, JSON output, and the whole fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from db.migrations.fleet import run_one
from db.tenant_catalog import with_database
from db.tenants import provision_tenant
from tests.conftest import Databases
from tests.migrating import LATEST, TENANT_VERSIONS

STUDIO = str(Path(sys.executable).parent / "studio")


def studio(*args: str, master_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STUDIO_DATABASE_URL"}
    if master_url:
        env["STUDIO_DATABASE_URL"] = master_url
    return subprocess.run(
        [STUDIO, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def json_lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_status_exits_6_while_files_are_pending_and_0_once_applied(fresh_db: str) -> None:
    status = studio("migrate", "status", "--database-url", fresh_db, "--json")
    assert status.returncode == 6, status.stderr
    [report, summary] = json_lines(status.stdout)
    assert report["status"] == "pending"
    assert report["pending"] == TENANT_VERSIONS
    assert summary["summary"]["by_status"] == {"pending": 1}  # type: ignore[index]
    assert summary["summary"]["exit_code"] == 6  # type: ignore[index]
    assert summary["summary"]["duration_ms"]["median"] == report["duration_ms"]  # type: ignore[index]

    up = studio("migrate", "up", "--database-url", fresh_db)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "applied" in up.stdout
    assert "0001, 0002" in up.stdout

    assert studio("migrate", "status", "--database-url", fresh_db).returncode == 0


def test_a_refused_run_exits_2_and_names_the_file(fresh_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE one (id int);\n")
    assert studio("migrate", "up", "--database-url", fresh_db,
                  "--migrations-dir", str(tmp_path)).returncode == 0  # fmt: skip
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE one (id bigint);\n")

    result = studio("migrate", "up", "--database-url", fresh_db, "--migrations-dir", str(tmp_path))

    assert result.returncode == 2
    assert "0001_one.sql: edited after it was applied" in result.stdout


def test_a_failing_file_exits_3_with_file_line_and_sqlstate(fresh_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_broken.sql").write_text("SELECT 1;\nSELECT * FROM missing_table;\n")
    result = studio("migrate", "up", "--database-url", fresh_db,
                    "--migrations-dir", str(tmp_path), "--json")  # fmt: skip
    assert result.returncode == 3
    [report, _summary] = json_lines(result.stdout)
    assert report["status"] == "failed"
    error = dict(report["error"])  # type: ignore[call-overload]
    assert datetime.fromisoformat(error.pop("at")) <= datetime.now(UTC)  # when it was recorded
    assert error == {
        "file": "0001_broken.sql",
        "line": 2,
        "sqlstate": "42P01",
        "message": 'relation "missing_table" does not exist',
    }


async def test_the_fleet_run_migrates_every_tenant_and_reports_each_failure(
    databases: Databases,
) -> None:
    master_url = databases.create("fleet_master")
    await run_one(master_url, "master", mode="up")
    healthy = await provision_tenant(master_url, name="Healthy Studio")
    gone = await provision_tenant(master_url, name="Gone Studio")
    behind = await provision_tenant(master_url, name="Behind Studio")
    with psycopg.connect(databases.server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{gone.database_name}" WITH (FORCE)')
    behind_url = with_database(databases.server_url, behind.database_name)
    with psycopg.connect(behind_url, autocommit=True) as conn:  # as if the latest never ran
        # (every built-in file is safe to run again over what it made: only its record goes)
        conn.execute("DELETE FROM studio_migrate.history WHERE version = %s", (LATEST,))

    status = studio("migrate", "status", "--json", master_url=master_url)
    by_target = {r["target"]: r for r in json_lines(status.stdout)[:-1]}
    assert by_target["tenant behind-studio"]["pending"] == [LATEST]
    assert status.returncode == 4  # one tenant is unreachable: that outranks "pending"

    result = studio("migrate", "up", "--json", master_url=master_url)

    assert result.returncode == 4, result.stdout + result.stderr
    reports = json_lines(result.stdout)
    by_target = {r["target"]: r for r in reports[:-1]}
    assert by_target["master"]["status"] == "up-to-date"
    assert by_target[f"tenant {healthy.slug}"]["status"] == "up-to-date"
    assert by_target[f"tenant {gone.slug}"]["status"] == "unreachable"
    assert by_target[f"tenant {behind.slug}"]["status"] == "applied"
    assert by_target[f"tenant {behind.slug}"]["applied"] == [LATEST]
    assert reports[-1]["summary"]["by_status"] == {  # type: ignore[index]
        "up-to-date": 2,
        "unreachable": 1,
        "applied": 1,
    }


def test_help_explains_the_exit_codes() -> None:
    result = studio("migrate", "--help")
    assert result.returncode == 0
    assert "6    `status` only: migrations are pending" in result.stdout
