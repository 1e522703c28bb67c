"""The SQL migrations and the SQLAlchemy Core tables describe the same schema."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import MetaData

from db.catalog import SchemaDescription, describe_schema
from db.engines import create_engine_for
from db.master_tables import master_metadata
from db.migrations.files import Kind, load_migrations, migrations_dir
from db.migrations.fleet import run_one
from db.migrations.runner import Status
from db.tables import tenant_metadata
from tests.conftest import Databases


async def _describe(url: str) -> SchemaDescription:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await describe_schema(conn)


async def _create_all(url: str, metadata: MetaData) -> None:
    engine = create_engine_for(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
    finally:
        await engine.dispose()


def _assert_same(migrated: SchemaDescription, core: SchemaDescription) -> None:
    # Compared per part so that a failure names the table and what differs.
    assert migrated.columns == core.columns
    assert migrated.constraints == core.constraints
    assert migrated.indexes == core.indexes


@pytest.mark.parametrize(
    ("kind", "metadata"), [("tenant", tenant_metadata), ("master", master_metadata)]
)
async def test_migrated_schema_equals_core_tables(
    databases: Databases, kind: Kind, metadata: MetaData
) -> None:
    migrated_url = databases.create(f"{kind}_migrated")
    core_url = databases.create(f"{kind}_core")
    report = await run_one(migrated_url, kind, mode="up")
    assert report.status is Status.APPLIED
    await _create_all(core_url, metadata)

    migrated = await _describe(migrated_url)
    assert set(migrated.columns) == set(metadata.tables)
    _assert_same(migrated, await _describe(core_url))


async def test_schema_has_the_rules_the_original_lacked(databases: Databases) -> None:
    url = databases.create("rules")
    await run_one(url, "tenant", mode="up")
    schema = await _describe(url)
    sessions = schema.columns["sessions"]
    assert sessions["start_time"][0] == "timestamp with time zone"
    assert sessions["project_id"][1] is False  # nullable: a session may stand alone
    assert "CHECK ((end_time > start_time))" in schema.constraints["sessions"].values()
    fk = schema.constraints["sessions"]["sessions_project_id_projects_id_fk"]
    assert fk == "FOREIGN KEY (project_id) REFERENCES projects(id) ON DELETE SET NULL"
    assert "sessions_project_id_idx" in schema.indexes["sessions"]
    # every foreign key says deliberately what a delete of its parent does
    for table, constraints in schema.constraints.items():
        for name, definition in constraints.items():
            if definition.startswith("FOREIGN KEY"):
                assert "ON DELETE" in definition, f"{table}.{name} has no ON DELETE"


@pytest.mark.parametrize("kind", ["tenant", "master"])
async def test_every_file_is_safe_to_run_twice_by_hand(databases: Databases, kind: Kind) -> None:
    by_hand = databases.create(f"{kind}_twice")
    by_runner = databases.create(f"{kind}_once")
    files, problems = load_migrations(migrations_dir(kind))
    assert not problems
    async with await psycopg.AsyncConnection.connect(by_hand, autocommit=True) as conn:
        for _ in range(2):
            for file in files:
                await conn.execute(file.sql.encode())
    await run_one(by_runner, kind, mode="up")
    _assert_same(await _describe(by_hand), await _describe(by_runner))
