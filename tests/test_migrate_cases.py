"""`studio migrate` in the cases operators hit: bad bounds, signals while it waits, exit codes
for each mix of outcomes, recorded failures, files out of order or deleted, cosmetic edits,
and per-tenant placeholders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from db.migrations.files import load_migrations
from db.migrations.runner import LOCK_KEY, Status, run_database
from tests.migrating import LATEST, CopyMigrations, next_file
from tests.polling import wait_until
from tests.serving import STUDIO
from tests.silent_server import SilentServer
from tests.test_fleet import FleetSetup, fleet_setup  # noqa: F401 (a fixture)

NINE = next_file("nine")

SIGNAL_BOUND = 15.0  # seconds: the CLI promises 10 after a signal, whatever it waits on


def _studio(*args: str, master_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STUDIO_DATABASE_URL"}
    if master_url:
        env["STUDIO_DATABASE_URL"] = master_url
    return subprocess.run(
        [STUDIO, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _one(url: str, query: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params or None).fetchone()
        return None if row is None else row[0]


def _lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "flags",
    [
        ["status", "--max-per-server", "0"],
        ["up", "--jobs", "0"],
        ["up", "--max-per-server", "-1"],
        ["up", "--max-failures", "0"],
        ["up", "--connect-timeout", "0"],
        ["status", "--lock-wait", "-5"],
    ],
)
def test_bounds_that_would_hang_are_refused_before_anything_runs(flags: list[str]) -> None:
    started = time.monotonic()
    result = _studio("migrate", *flags, master_url="postgresql://postgres@127.0.0.1:1/none")
    assert result.returncode == 1, result.stderr
    assert "must be" in result.stderr
    assert time.monotonic() - started < 30  # refused while parsing, not after connecting


def test_sigterm_ends_a_run_waiting_on_a_server_that_does_not_answer(tmp_path: Path) -> None:
    report = tmp_path / "report.jsonl"
    with SilentServer() as silent:
        process = subprocess.Popen(
            [STUDIO, "migrate", "up", "--database-url", silent.url, "--connect-timeout", "300",
             "--report", str(report)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(lambda: silent.accepted == 1, timeout=30, what="the runner's connection")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = process.communicate(timeout=SIGNAL_BOUND + 5)
        ended = time.monotonic() - started
    assert process.returncode == 143, out + err
    assert ended < SIGNAL_BOUND
    entries = _lines(report.read_text())
    assert entries[0]["status"] == "interrupted"
    assert entries[-1]["summary"]["exit_code"] == 143  # type: ignore[index]


def test_sigterm_ends_a_fleet_run_waiting_for_a_lock_and_for_slots(
    fleet_setup: FleetSetup,  # noqa: F811
    tmp_path: Path,
) -> None:
    (fleet_setup.tenant_dir / NINE).write_text("CREATE TABLE nine (id int);\n")
    first = next(iter(fleet_setup.tenants.values()))
    report = tmp_path / "report.jsonl"
    with psycopg.connect(first, autocommit=True) as holder:  # another runner holds the lock
        holder.execute(f"SELECT pg_advisory_lock({LOCK_KEY})")
        env = {**os.environ, "STUDIO_DATABASE_URL": fleet_setup.master_url}
        process = subprocess.Popen(
            [STUDIO, "migrate", "up", "--jobs", "1", "--lock-wait", "300", "--report",
             str(report), "--migrations-dir", str(fleet_setup.tenant_dir)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        def polling_the_lock() -> bool:
            query = (  # in this tenant's database: the master's runner polls its own too
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE"
                " '%%pg_try_advisory_lock%%' AND pid <> pg_backend_pid()"
                " AND datname = current_database()"
            )
            return bool(_one(first, query))

        wait_until(polling_the_lock, timeout=60, what="the runner polling the lock")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = process.communicate(timeout=SIGNAL_BOUND + 5)
        ended = time.monotonic() - started
    assert process.returncode == 143, out + err
    assert ended < SIGNAL_BOUND
    statuses = [e["status"] for e in _lines(report.read_text()) if "target" in e]
    assert statuses.count("interrupted") == 1  # the one waiting for the lock
    assert statuses.count("skipped") == 5  # those waiting for a slot


def _drift(url: str) -> None:
    """As if the latest file had been applied with other contents there."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE studio_migrate.history SET checksum = 'sha256:0'"
                     ", checksum_loose = 'sha256:0' WHERE version = %s", (LATEST,))  # fmt: skip


@pytest.mark.parametrize(
    ("case", "mode", "code", "statuses"),
    [
        ("one drifted, the others migrated", "up", 4, {"drift": 1, "applied": 5}),
        ("one drifted, the others up to date", "up", 2, {"drift": 1, "up-to-date": 5}),
        ("a file every tenant refuses", "up", 2, {"refused": 6}),
        ("one drifted, the others pending", "status", 2, {"drift": 1, "pending": 5}),
        ("all pending", "status", 6, {"pending": 6}),
        ("one failed, the others migrated", "up", 4, {"failed": 1, "applied": 5}),
        ("one unreachable, the others up to date", "up", 4, {"unreachable": 1, "up-to-date": 5}),
    ],
)
def test_the_exit_code_says_what_happened_for_each_mix(
    fleet_setup: FleetSetup,  # noqa: F811
    case: str,
    mode: str,
    code: int,
    statuses: dict[str, int],
) -> None:
    slug, url = next(iter(fleet_setup.tenants.items()))
    if "drifted" in case:
        _drift(url)
    if "migrated" in case or "pending" in case:
        (fleet_setup.tenant_dir / NINE).write_text("CREATE TABLE nine (id int);\n")
    if "failed" in case:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE nine (id int)")
    if "refuses" in case:
        (fleet_setup.tenant_dir / NINE).write_text("CREATE TABLE nine (id int);\nCOMMIT WORK;\n")
    if "unreachable" in case:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f'REVOKE CONNECT ON DATABASE "{conn.info.dbname}" FROM "{conn.info.dbname}"'
            )

    result = fleet_setup.studio(mode, "--json")

    assert result.returncode == code, result.stdout + result.stderr
    entries = _lines(result.stdout)
    tenants = [e for e in entries[:-1] if e["target"] != "master"]
    counts: dict[str, int] = {}
    for e in tenants:
        counts[str(e["status"])] = counts.get(str(e["status"]), 0) + 1
    assert counts == statuses
    if "refuses" in case:
        assert all(
            _one(u, "SELECT to_regclass('nine')") is None for u in fleet_setup.tenants.values()
        )
    if "drifted" in case:
        [drifted] = [e for e in tenants if e["tenant"] == slug]
        assert f"`studio migrate repair --accept {LATEST} --tenant {slug}`" in str(
            drifted["problems"]
        )


def test_the_repair_a_drift_message_names_brings_the_tenant_back(
    fleet_setup: FleetSetup,  # noqa: F811
) -> None:
    slug, url = next(iter(fleet_setup.tenants.items()))
    _drift(url)
    assert fleet_setup.studio("up").returncode == 2
    repaired = fleet_setup.studio("repair", "--accept", str(LATEST), "--tenant", slug, "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert _lines(repaired.stdout)[0]["status"] == "repaired"
    assert fleet_setup.studio("up").returncode == 0


def test_status_shows_the_failure_a_run_recorded_instead_of_behind(
    fleet_setup: FleetSetup,  # noqa: F811
) -> None:
    slug, url = next(iter(fleet_setup.tenants.items()))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE nine (id int)")
    (fleet_setup.tenant_dir / NINE).write_text("\nCREATE TABLE nine (id int);\n")
    assert fleet_setup.studio("up").returncode == 4

    table = fleet_setup.studio("status")
    as_json = fleet_setup.studio("status", "--json")

    assert table.returncode == 4, table.stdout + table.stderr
    table_part = table.stdout[table.stdout.index("\ndatabase ") :]  # after the per-database lines
    [line] = [line for line in table_part.splitlines() if line.startswith(f"tenant {slug} ")]
    assert f'failed: {NINE}:2: relation "nine" already exists (SQLSTATE 42P07) at ' in line
    assert "behind" not in line
    [entry] = [e for e in _lines(as_json.stdout)[:-1] if e.get("tenant") == slug]
    assert entry["status"] == "failed"
    error = entry["error"]
    assert isinstance(error, dict)
    assert (error["file"], error["line"], error["sqlstate"]) == (NINE, 2, "42P07")
    assert error["at"]


def _up(db: str, folder: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return _studio("migrate", "up", "--database-url", db, "--migrations-dir", str(folder), *flags)


def test_a_file_out_of_order_is_refused_unless_allowed_and_then_recorded(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations(up_to=4)
    late = folder / "0003_create_projects.sql"
    body = late.read_bytes()
    late.unlink()
    (folder / "0004_create_tracks.sql").unlink()
    assert _up(fresh_db, folder).returncode == 0  # 1 and 2
    (folder / "0005_other.sql").write_text("CREATE TABLE other (id int);\n")
    assert _up(fresh_db, folder).returncode == 0  # 5
    late.write_bytes(body)  # 3 arrives after 5

    refused = _up(fresh_db, folder)
    assert refused.returncode == 2
    assert "0003_create_projects.sql: new file numbered below the highest applied version 5" in (
        refused.stdout
    )
    assert "--allow-out-of-order" in refused.stdout

    allowed = _up(fresh_db, folder, "--allow-out-of-order")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    rows = _one(fresh_db, "SELECT array_agg(version::text || ':' || out_of_order::text"
                          " ORDER BY version) FROM studio_migrate.history")  # fmt: skip
    assert rows == ["1:false", "2:false", "3:true", "5:false"]


def test_a_deleted_applied_file_is_refused_unless_said_to_be_intended(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations(up_to=3)
    assert _up(fresh_db, folder).returncode == 0
    (folder / "0003_create_projects.sql").unlink()
    refused = _up(fresh_db, folder)
    assert refused.returncode == 2
    assert "0003_create_projects.sql: applied (version 3) but the file is gone" in refused.stdout
    ignored = _up(fresh_db, folder, "--ignore-missing")
    assert ignored.returncode == 0, ignored.stdout
    assert "ignored (--ignore-missing)" in ignored.stdout


def test_a_comment_only_edit_warns_by_default_and_fails_under_error(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations(up_to=2)
    assert _up(fresh_db, folder).returncode == 0
    rooms = folder / "0002_create_rooms.sql"
    rooms.write_text("-- reviewed\n" + rooms.read_text().replace("\n", "\n\n"))

    warned = _up(fresh_db, folder)
    assert warned.returncode == 0
    assert "in comments or white space only" in warned.stdout
    refused = _up(fresh_db, folder, "--on-cosmetic-drift=error")
    assert refused.returncode == 2
    assert "refused by --on-cosmetic-drift=error" in refused.stdout
    assert "`studio migrate repair --accept 2 --database-url URL`" in refused.stdout


PLACEHOLDER_FILE = (
    "-- ${tenant_slug} in a comment is left alone\n"
    "CREATE TABLE ${tenant_slug:ident} (slug text, id bigint, db text);\n"
    "INSERT INTO ${tenant_slug:ident} VALUES (${tenant_slug}, ${tenant_id}, ${tenant_database});\n"
)


def test_placeholders_are_rendered_for_each_tenant_and_checksummed_once(
    fleet_setup: FleetSetup,  # noqa: F811
) -> None:
    (fleet_setup.tenant_dir / next_file("per_tenant")).write_text(PLACEHOLDER_FILE)
    result = fleet_setup.studio("up", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    sums = set()
    for slug, url in fleet_setup.tenants.items():
        with psycopg.connect(url) as conn:
            row = conn.execute(f'SELECT slug, id, db FROM "{slug}"').fetchone()
            org = _one(fleet_setup.master_url, "SELECT id FROM organizations WHERE slug = %s",
                       (slug,))  # fmt: skip
            assert row == (slug, org, conn.info.dbname)
            sums.add(conn.execute("SELECT checksum FROM studio_migrate.history"
                                  " WHERE version = %s", (LATEST + 1,)).fetchone())  # fmt: skip
    [(stored,)] = sums  # one checksum, of the file as written
    [file] = [f for f in load_migrations(fleet_setup.tenant_dir)[0] if f.version == LATEST + 1]
    assert stored == file.checksum

    # one database by its URL knows no tenant: refused, naming the way that does
    url = next(iter(fleet_setup.tenants.values()))
    (fleet_setup.tenant_dir / next_file("again", step=2)).write_text("SELECT ${tenant_id};\n")
    refused = _studio("migrate", "up", "--database-url", url,
                      "--migrations-dir", str(fleet_setup.tenant_dir))  # fmt: skip
    assert refused.returncode == 2
    assert f"{next_file('again', step=2)}: uses placeholders" in refused.stdout


async def test_a_placeholder_value_cannot_break_out_of_its_quotes(
    fresh_db: str, tmp_path: Path
) -> None:
    hostile = "x\"; DROP TABLE victims; --' OR 1=1; $$"
    (tmp_path / "0001_victims.sql").write_text("CREATE TABLE victims (id int);\n")
    (tmp_path / "0002_per_tenant.sql").write_text(PLACEHOLDER_FILE)
    files, problems = load_migrations(tmp_path)
    assert problems == []
    report = await run_database(
        fresh_db, files, target="t", mode="up",
        placeholders={"tenant_slug": hostile, "tenant_id": 7, "tenant_database": "d"},
    )  # fmt: skip
    assert report.status is Status.APPLIED, report
    assert _one(fresh_db, "SELECT to_regclass('victims') IS NOT NULL") is True
    with psycopg.connect(fresh_db) as conn:
        table = psycopg.sql.Identifier(hostile)
        row = conn.execute(psycopg.sql.SQL("SELECT slug, id FROM {}").format(table)).fetchone()
    assert row == (hostile, 7)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("SELECT 'hello ${tenant_slug}';\n", "is inside a string"),
        ("DO $$ BEGIN PERFORM ${tenant_slug}; END $$;\n", "is inside a string"),
        ('SELECT "t_${tenant_slug}";\n', "is inside a string"),
        ("SELECT ${tenant_name};\n", "unknown placeholder ${tenant_name}"),
        ("CREATE TABLE t_${tenant_slug:ident} (id int);\n", "is inside a string"),
    ],
)
def test_a_placeholder_that_cannot_be_quoted_safely_refuses_the_file(
    tmp_path: Path, body: str, problem: str
) -> None:
    (tmp_path / "0001_x.sql").write_text(body)
    [found] = load_migrations(tmp_path)[1]
    assert found.startswith("0001_x.sql: line 1: ")
    assert problem in found
