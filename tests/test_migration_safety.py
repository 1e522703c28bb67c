"""The runner where migrations usually hurt: no-transaction files, locks held by the
application, edits after the fact, and a runner killed mid-run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time

import psycopg

from db.migrations.fleet import run_one
from db.migrations.runner import Status
from tests.migrating import LATEST, CopyMigrations, migrate_up, next_file
from tests.serving import STUDIO

NEXT = LATEST + 1


def _fetch(url: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params or None).fetchall()


def _index_is_valid(url: str, name: str) -> object:
    rows = _fetch(
        url, "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)
    )
    return rows[0][0] if rows else None


async def test_a_concurrent_index_runs_outside_a_transaction_and_resumes_after_a_failure(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations()
    assert (await migrate_up(fresh_db, folder)).status is Status.APPLIED
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO clients (name, email) VALUES ('A', 'x@y'), ('B', 'x@y')")
    (folder / next_file("unique_client_email")).write_text(
        "-- migrate: no-transaction\n"
        "CREATE TABLE email_audit (note text);\n"
        "INSERT INTO email_audit VALUES ('before the index');\n"
        "CREATE UNIQUE INDEX CONCURRENTLY clients_email_key ON clients (email);\n"
    )

    failed = await migrate_up(fresh_db, folder)
    assert failed.status is Status.FAILED
    assert failed.error is not None
    assert (failed.error.line, failed.error.sqlstate) == (4, "23505")
    assert any("clients_email_key" in p for p in failed.problems)  # the INVALID index is named
    assert _index_is_valid(fresh_db, "clients_email_key") is False

    # IF NOT EXISTS would "pass" the invalid index; the runner refuses while it is there
    refused = await migrate_up(fresh_db, folder)
    assert refused.status is Status.FAILED
    assert refused.error is not None
    assert "clients_email_key" in refused.error.message

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("DROP INDEX CONCURRENTLY clients_email_key")
        conn.execute("UPDATE clients SET email = 'b@y' WHERE name = 'B'")
    resumed = await migrate_up(fresh_db, folder)
    assert (resumed.status, resumed.applied) == (Status.APPLIED, [NEXT])
    assert _index_is_valid(fresh_db, "clients_email_key") is True
    # statements 1 and 2 ran once: the resume started at statement 3
    assert _fetch(fresh_db, "SELECT count(*) FROM email_audit") == [(1,)]
    assert _fetch(
        fresh_db,
        "SELECT status, statements_done, statements_total FROM studio_migrate.history"
        " WHERE version = %s",
        (NEXT,),
    ) == [("applied", 2, 3)]


async def test_a_concurrent_only_statement_in_a_transactional_file_is_refused_up_front(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations()
    (folder / next_file("index")).write_text(
        "CREATE TABLE t9 (id int);\nCREATE INDEX CONCURRENTLY t9_id_idx ON t9 (id);\n"
    )
    report = await migrate_up(fresh_db, folder)
    assert report.status is Status.REFUSED
    assert report.problems == [
        f"{next_file('index')}:2: CREATE INDEX CONCURRENTLY cannot run inside a transaction;"
        " put it in a file with `-- migrate: no-transaction`"
    ]
    assert _fetch(fresh_db, "SELECT to_regclass('clients')") == [(None,)]  # nothing ran at all


async def test_a_concurrent_index_build_while_another_runner_waits_finishes_valid(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations()
    await migrate_up(fresh_db, folder)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO clients (name) SELECT 'client ' || n FROM generate_series(1, 50000) n"
        )
    (folder / next_file("client_names")).write_text(
        "-- migrate: no-transaction\n"
        "SELECT pg_sleep(0.5);\n"
        "CREATE INDEX CONCURRENTLY clients_name_idx ON clients (name);\n"
    )
    reports = await asyncio.gather(migrate_up(fresh_db, folder), migrate_up(fresh_db, folder))
    assert sorted(r.status for r in reports) == [Status.APPLIED, Status.UP_TO_DATE]
    assert _index_is_valid(fresh_db, "clients_name_idx") is True


def test_a_migration_blocked_by_the_application_fails_fast_retries_and_stalls_no_one(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations()
    asyncio.run(migrate_up(fresh_db, folder))
    (folder / next_file("session_tags")).write_text(
        "-- migrate: lock_timeout=200ms\nALTER TABLE sessions ADD COLUMN tags text[];\n"
    )
    app_reads, holding, release = [], threading.Event(), threading.Event()

    def application_transaction() -> None:  # a long read keeps a lock on sessions
        with psycopg.connect(fresh_db) as conn:
            conn.execute("SELECT count(*) FROM sessions")
            holding.set()
            release.wait(30)

    def other_queries() -> None:  # meanwhile the rest of the application reads sessions
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            while not release.is_set():
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM sessions")
                app_reads.append(time.monotonic() - started)
                time.sleep(0.02)

    holder = threading.Thread(target=application_transaction)
    reader = threading.Thread(target=other_queries)
    holder.start()
    assert holding.wait(10)
    reader.start()
    threading.Timer(3.0, release.set).start()  # the application commits after 3 seconds
    report = asyncio.run(migrate_up(fresh_db, folder))
    holder.join()
    reader.join()

    assert (report.status, report.applied) == (Status.APPLIED, [NEXT])
    retries = _fetch(
        fresh_db, "SELECT count(*) FROM studio_migrate.attempts WHERE outcome = 'lock-retry'"
    )
    assert retries[0][0] >= 1  # it gave up its place in the lock queue at least once
    assert app_reads
    # Reads waited at most about one lock_timeout each time the runner queued, never for the
    # application's transaction (3 s), as they would behind a migration that queued unbounded.
    assert max(app_reads) < 1.0


def test_a_runner_killed_mid_file_leaves_nothing_and_a_rerun_is_clean(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations()
    (folder / next_file("slow")).write_text("CREATE TABLE nine (id int);\nSELECT pg_sleep(2);\n")
    command = [STUDIO, "migrate", "up", "--database-url", fresh_db, "--migrations-dir", str(folder)]
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not _fetch(fresh_db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                               "'%pg_sleep(2)%' AND pid <> pg_backend_pid()")[0][0]:  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runner.send_signal(signal.SIGKILL)
    runner.communicate(timeout=10)

    assert _fetch(fresh_db, "SELECT to_regclass('nine')") == [(None,)]
    rerun = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ},
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _fetch(
        fresh_db, "SELECT version, count(*) FROM studio_migrate.history WHERE version >= %s"
        " GROUP BY version ORDER BY version", (LATEST,)
    ) == [(LATEST, 1), (NEXT, 1)]  # fmt: skip


async def test_an_edit_of_comments_only_is_a_warning_and_repair_records_a_real_one(
    fresh_db: str, tenant_migrations: CopyMigrations
) -> None:
    folder = tenant_migrations(up_to=2)
    await migrate_up(fresh_db, folder)
    rooms = folder / "0002_create_rooms.sql"
    original = rooms.read_text()

    rooms.write_text("-- reviewed in 2027\n" + original.replace("    ", "\t"))
    cosmetic = await migrate_up(fresh_db, folder)
    assert cosmetic.status is Status.UP_TO_DATE
    assert "comments or white space only" in cosmetic.warnings[0]

    rooms.write_text(original.replace("DEFAULT 1,", "DEFAULT 2,"))
    drift = await migrate_up(fresh_db, folder)
    assert drift.status is Status.DRIFT
    assert "0002_create_rooms.sql: edited after it was applied" in drift.problems[0]

    repaired = await run_one(
        fresh_db, "tenant", mode="repair", directory=folder, baseline_version=2
    )
    assert repaired.status is Status.REPAIRED
    assert (await migrate_up(fresh_db, folder)).status is Status.UP_TO_DATE
    [(outcome, message)] = _fetch(
        fresh_db, "SELECT outcome, message FROM studio_migrate.attempts WHERE version = 2"
    )
    assert outcome == "accepted-edit"
    assert "->" in str(message)
