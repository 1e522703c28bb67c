"""Shared fixtures: a real PostgreSQL server, and databases of this test run's own.

The server is, in order: STUDIO_TEST_PG_URL if set; the machine's PostgreSQL on
127.0.0.1:5432 if it answers; else a throwaway cluster started here (and stopped at the end).
STUDIO_TEST_PG=throwaway forces the throwaway cluster. Every database a test makes is named
after this run (st_<run id>_...) and dropped at the end, so runs never share state.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from db.local_postgres import LocalPostgres
from db.migrations.files import migrations_dir
from db.tenant_catalog import with_database

RUN_ID = secrets.token_hex(3)
MACHINE_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the `postgres` database of a real server the tests may use."""
    explicit = os.environ.get("STUDIO_TEST_PG_URL")
    if explicit:
        yield explicit
        return
    if os.environ.get("STUDIO_TEST_PG") != "throwaway" and _answers(MACHINE_PG):
        yield MACHINE_PG
        return
    cluster = LocalPostgres(tmp_path_factory.mktemp("pg") / "data", durable=False)
    cluster.start()
    try:
        yield cluster.url()
    finally:
        cluster.stop("immediate")


class Databases:
    """Creates uniquely named databases on the test server; drops them all at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.names: list[str] = []

    def name(self, label: str) -> str:
        name = f"st_{RUN_ID}_{label}_{len(self.names)}"
        self.names.append(name)
        return name

    def create(self, label: str) -> str:
        name = self.name(label)
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return with_database(self.server_url, name)

    def drop_all(self) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"st_{RUN_ID}_%",)
            ).fetchall()
            for (name,) in rows:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@pytest.fixture(scope="session")
def databases(pg_url: str) -> Iterator[Databases]:
    dbs = Databases(pg_url)
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture
def fresh_db(databases: Databases, request: pytest.FixtureRequest) -> str:
    """A new empty database for one test."""
    return databases.create(request.node.name[:20].lower().replace("[", "_").strip("_-]"))


@pytest.fixture
def tenant_migrations(tmp_path: Path) -> Callable[..., Path]:
    """Copy the built-in tenant files (up to a version) into a folder a test may edit."""

    def copy(up_to: int | None = None) -> Path:
        folder = tmp_path / "tenant_sql"
        folder.mkdir(exist_ok=True)
        for path in sorted(migrations_dir("tenant").glob("*.sql")):
            if up_to is None or int(path.name[:4]) <= up_to:
                (folder / path.name).write_bytes(path.read_bytes())
        return folder

    return copy
