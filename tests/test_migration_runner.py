"""The migration runner on one database: history, failures, refusals, and concurrent runners."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from db.migrations.files import checksum, load_migrations, migrations_dir, normalize
from db.migrations.fleet import run_one
from db.migrations.runner import LOCK_KEY, Status
from tests.migrating import LATEST, TENANT_VERSIONS, CopyMigrations, migrate_up, next_file

ALL_TENANT_VERSIONS = TENANT_VERSIONS
NEXT = LATEST + 1


async def _fetch(url: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await (await conn.execute(query, params)).fetchall()


async def test_up_applies_every_file_once_and_records_each(fresh_db: str) -> None:
    report = await migrate_up(fresh_db)
    assert report.status is Status.APPLIED
    assert (report.before, report.after, report.applied) == (None, LATEST, ALL_TENANT_VERSIONS)

    rows = await _fetch(
        fresh_db,
        "SELECT version, filename, checksum, status, applied_by, execution_ms >= 0,"
        " applied_at <= now() FROM studio_migrate.history ORDER BY version",
    )
    files, _ = load_migrations(migrations_dir("tenant"))
    assert rows == [
        (f.version, f.filename, f.checksum, "applied", "postgres", True, True) for f in files
    ]

    again = await migrate_up(fresh_db)
    assert (again.status, again.applied, again.before) == (Status.UP_TO_DATE, [], LATEST)


async def test_a_failed_file_leaves_no_trace_and_a_fixed_rerun_needs_no_force(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations(up_to=2)
    bad = folder / "0003_add_studio_notes.sql"
    bad.write_text(
        "CREATE TABLE studio_notes (id bigint PRIMARY KEY);\n"
        "\n"
        "-- the next statement names a column that does not exist\n"
        "ALTER TABLE rooms ADD CONSTRAINT rooms_bogus_check CHECK (no_such_column > 0);\n"
    )
    report = await migrate_up(fresh_db, folder)

    assert report.status is Status.FAILED
    assert report.applied == [1, 2]
    assert report.error is not None
    assert (report.error.filename, report.error.line, report.error.sqlstate) == (
        "0003_add_studio_notes.sql",
        4,
        "42703",
    )
    assert "no_such_column" in report.error.message
    # the table made on line 1 was rolled back with the failing statement
    assert await _fetch(fresh_db, "SELECT to_regclass('studio_notes')") == [(None,)]
    assert await _fetch(fresh_db, "SELECT max(version) FROM studio_migrate.history") == [(2,)]
    attempts = await _fetch(
        fresh_db, "SELECT version, outcome, sqlstate, line FROM studio_migrate.attempts"
    )
    assert attempts == [(3, "failed", "42703", 4)]

    bad.write_text("CREATE TABLE studio_notes (id bigint PRIMARY KEY);\n")
    fixed = await migrate_up(fresh_db, folder)
    assert (fixed.status, fixed.applied) == (Status.APPLIED, [3])


async def test_an_edited_applied_file_refuses_the_run_before_any_change(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations(up_to=3)
    assert (await migrate_up(fresh_db, folder)).status is Status.APPLIED
    edited = folder / "0002_create_rooms.sql"
    before = checksum(normalize(edited.read_bytes()))
    edited.write_text(edited.read_text().replace("varchar(255)", "varchar(300)"))
    (folder / "0004_create_tracks.sql").write_bytes(
        (migrations_dir("tenant") / "0004_create_tracks.sql").read_bytes()
    )

    report = await migrate_up(fresh_db, folder)

    assert report.status is Status.DRIFT
    [problem] = report.problems
    assert "0002_create_rooms.sql" in problem
    assert before in problem
    assert checksum(normalize(edited.read_bytes())) in problem
    # the new file was not applied either
    assert await _fetch(fresh_db, "SELECT to_regclass('tracks')") == [(None,)]


async def test_line_endings_and_a_bom_are_not_an_edit(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations(up_to=2)
    await migrate_up(fresh_db, folder)
    path = folder / "0002_create_rooms.sql"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert (await migrate_up(fresh_db, folder)).status is Status.UP_TO_DATE


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("remove_applied", "0002_create_rooms.sql: applied (version 2) but the file is gone"),
        ("duplicate", "duplicate version 3"),
        ("below_highest", "0002_create_rooms.sql: new file numbered below the highest applied"),
        ("bad_name", "V3__rooms.sql: not named like"),
    ],
)
async def test_a_broken_folder_is_refused_naming_the_file(
    fresh_db: str, tenant_migrations: CopyMigrations, change: str, expected: str
) -> None:
    folder = tenant_migrations(up_to=3)
    rooms = folder / "0002_create_rooms.sql"
    rooms_sql = rooms.read_bytes()
    if change == "below_highest":
        rooms.unlink()  # 0001 and 0003 get applied; 0002 comes late
    await migrate_up(fresh_db, folder)
    (folder / "0004_create_tracks.sql").write_bytes(
        (migrations_dir("tenant") / "0004_create_tracks.sql").read_bytes()
    )
    if change == "remove_applied":
        (folder / "0002_create_rooms.sql").unlink()
    elif change == "duplicate":
        (folder / "0003_another.sql").write_text("SELECT 1;\n")
    elif change == "below_highest":
        rooms.write_bytes(rooms_sql)
    else:
        (folder / "V3__rooms.sql").write_text("SELECT 1;\n")

    report = await migrate_up(fresh_db, folder)

    assert report.status is Status.REFUSED
    assert any(expected in p for p in report.problems), report.problems
    assert await _fetch(fresh_db, "SELECT to_regclass('tracks')") == [(None,)]


async def test_runners_started_together_apply_each_file_exactly_once(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations()
    # a slow last file keeps the lock held while the other runners poll for it
    (folder / next_file("slow")).write_text("SELECT pg_sleep(1);\n")

    reports = await asyncio.gather(*(migrate_up(fresh_db, folder) for _ in range(4)))

    statuses = sorted(r.status for r in reports)
    assert statuses == [Status.APPLIED, *[Status.UP_TO_DATE] * 3]
    [winner] = [r for r in reports if r.status is Status.APPLIED]
    assert winner.applied == [*ALL_TENANT_VERSIONS, NEXT]
    rows = await _fetch(
        fresh_db, "SELECT version, count(*) FROM studio_migrate.history GROUP BY version"
    )
    assert sorted(rows) == [(v, 1) for v in [*ALL_TENANT_VERSIONS, NEXT]]


async def test_a_runner_gives_up_when_the_lock_is_held_too_long(fresh_db: str) -> None:
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as holder:
        await holder.execute(f"SELECT pg_advisory_lock({LOCK_KEY})")
        report = await migrate_up(fresh_db, lock_wait=0.5)
    assert report.status is Status.LOCK_TIMEOUT
    assert await _fetch(fresh_db, "SELECT to_regclass('clients')") == [(None,)]


async def test_a_database_built_without_the_runner_needs_a_baseline(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        for path in sorted(tenant_migrations(up_to=7).glob("*.sql")):
            await conn.execute(path.read_bytes())

    refused = await migrate_up(fresh_db)
    assert refused.status is Status.REFUSED
    assert "baseline" in refused.problems[0]

    baseline = await run_one(fresh_db, "tenant", mode="baseline", baseline_version=7)
    assert (baseline.status, baseline.applied) == (Status.BASELINED, list(range(1, 8)))
    report = await migrate_up(fresh_db)
    assert (report.status, report.applied) == (Status.APPLIED, list(range(8, LATEST + 1)))


async def test_status_reports_pending_files_and_changes_nothing(fresh_db: str) -> None:
    report = await run_one(fresh_db, "tenant", mode="status")
    assert (report.status, report.pending) == (Status.PENDING, ALL_TENANT_VERSIONS)
    assert await _fetch(fresh_db, "SELECT to_regnamespace('studio_migrate')") == [(None,)]


async def test_an_unreachable_database_is_reported_not_raised(databases: object) -> None:
    url = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"
    report = await migrate_up(url)
    assert report.status is Status.UNREACHABLE
    assert report.error is not None
    assert "Connection refused" in report.error.message
    assert report.as_dict()["error"] == {
        "file": None, "line": None, "sqlstate": None, "message": report.error.message, "at": None,
    }  # fmt: skip


async def test_tenant_at_0007_with_sessions_is_migrated_to_0008_and_keeps_them(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    """The original's plan for 0008, tested as it never was."""
    assert (await migrate_up(fresh_db, tenant_migrations(up_to=7))).after == 7
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO clients (id, name) VALUES (1, 'Ada');"
            "INSERT INTO rooms (id, name) VALUES (1, 'Studio A');"
            "INSERT INTO projects (id, client_id, name) VALUES (1, 1, 'First album');"
            "INSERT INTO sessions (client_id, room_id, title, start_time, end_time)"
            " SELECT 1, 1, 'Take ' || n, now() + n * interval '1 day',"
            "        now() + n * interval '1 day' + interval '3 hours'"
            " FROM generate_series(1, 5) AS n"
        )

    report = await migrate_up(fresh_db)  # the built-in folder: 0008 and later are new
    assert (report.status, report.applied) == (Status.APPLIED, list(range(8, LATEST + 1)))

    assert await _fetch(fresh_db, "SELECT count(*), count(project_id) FROM sessions") == [(5, 0)]
    [(fk,)] = await _fetch(
        fresh_db,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'sessions_project_id_projects_id_fk'",
    )
    assert fk == "FOREIGN KEY (project_id) REFERENCES projects(id) ON DELETE SET NULL"
    assert await _fetch(fresh_db, "SELECT to_regclass('sessions_project_id_idx') IS NOT NULL") == [
        (True,)
    ]

    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        await conn.execute("UPDATE sessions SET project_id = 1 WHERE title IN ('Take 1', 'Take 2')")
        await conn.execute("DELETE FROM projects WHERE id = 1")
    assert await _fetch(fresh_db, "SELECT count(*), count(project_id) FROM sessions") == [(5, 0)]
