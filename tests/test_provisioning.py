"""Provisioning from the migrated template: a studio made that way is the one migrating file
by file would make, and the template follows the files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psycopg

from db.migrations.fleet import run_one
from db.tenant_catalog import with_database
from db.tenant_roles import objects_not_owned_by
from db.tenants import TenantSpec, provision_tenants
from tests.conftest import Databases
from tests.migrating import LATEST, TENANT_VERSIONS, CopyMigrations, next_file
from tests.serving import STUDIO

HISTORY = (
    "SELECT version, name, filename, checksum, checksum_loose, transactional, status,"
    " statements_done, statements_total, statement_checksums, applied_by, out_of_order"
    " FROM studio_migrate.history ORDER BY version"
)
SCHEMA = """
SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) = current_database(),
       coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                 || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                 || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY a.attnum)
                 FROM pg_attribute a LEFT JOIN pg_attrdef d
                   ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''),
       coalesce((SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ', '
                 ORDER BY conname) FROM pg_constraint WHERE conrelid = c.oid), ''),
       coalesce(pg_get_indexdef(c.oid), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('public', 'studio_migrate')
 ORDER BY 1
"""


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


async def test_a_studio_copied_from_the_template_is_one_migrated_file_by_file(
    databases: Databases,
) -> None:
    master_url = databases.create("prov")
    await run_one(master_url, "master", mode="up")
    # file by file, as its own role: what provisioning did before templates
    by_file = databases.create("by_file")
    name = str(psycopg.conninfo.conninfo_to_dict(by_file)["dbname"])
    with psycopg.connect(databases.server_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO "{name}"')
    assert (await run_one(by_file, "tenant", mode="up")).applied == TENANT_VERSIONS

    [made] = await provision_tenants(master_url, [TenantSpec("Copied")])
    assert not isinstance(made, Exception), made
    copied = with_database(master_url, made.database_name)

    def history(url: str) -> list[tuple[object, ...]]:
        return [(*row[:-2], row[-2] == _rows(url, "SELECT current_database()")[0][0], row[-1])
                for row in _rows(url, HISTORY)]  # fmt: skip

    assert history(copied) == history(by_file)  # applied by the database's own role, too
    assert _rows(copied, SCHEMA) == _rows(by_file, SCHEMA)
    with psycopg.connect(copied) as conn:
        assert await _not_owned(copied, made.role_name) == []
        [(attempt,)] = conn.execute("SELECT outcome FROM studio_migrate.attempts").fetchall()
    assert attempt == "copied-template"


async def _not_owned(url: str, role: str) -> list[tuple[str, str]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await objects_not_owned_by(conn, role)


def _templates(server_url: str, master_db: str) -> list[str]:
    with psycopg.connect(server_url) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datistemplate AND starts_with(datname, %s)",
            (f"{master_db}_tpl_",),
        ).fetchall()
    return [str(r[0]) for r in rows]


async def test_the_template_follows_the_files_and_placeholder_files_run_per_studio(
    databases: Databases, tenant_migrations: CopyMigrations
) -> None:
    master_url = databases.create("follow")
    master_db = str(psycopg.conninfo.conninfo_to_dict(master_url)["dbname"])
    await run_one(master_url, "master", mode="up")
    folder = tenant_migrations()
    [first] = await provision_tenants(master_url, [TenantSpec("First")], tenant_dir=folder)
    assert not isinstance(first, Exception), first
    [old_template] = _templates(databases.server_url, master_db)

    (folder / next_file("notes")).write_text("CREATE TABLE notes (body text);\n")
    (folder / next_file("own_name", step=2)).write_text(
        "CREATE TABLE own_name (slug text DEFAULT ${tenant_slug});\n"
        "INSERT INTO own_name DEFAULT VALUES;\n"
    )
    made = await provision_tenants(
        master_url, [TenantSpec("Second"), TenantSpec("Third")], tenant_dir=folder
    )
    [new_template] = _templates(databases.server_url, master_db)
    assert new_template != old_template  # rebuilt for the new files, the old one dropped
    for tenant in made:
        assert not isinstance(tenant, Exception), tenant
        url = with_database(master_url, tenant.database_name)
        assert _rows(url, "SELECT slug FROM own_name") == [(tenant.slug,)]
        versions = [row[0] for row in _rows(url, HISTORY)]
        assert versions == [*TENANT_VERSIONS, LATEST + 1, LATEST + 2]
    # the template holds the files before the first one with placeholders
    copied = ("SELECT count(*) FROM studio_migrate.attempts"
              f" WHERE outcome = 'copied-template' AND version = {LATEST + 1}")  # fmt: skip
    assert _rows(with_database(master_url, made[0].database_name), copied) == [(1,)]


def test_tenants_create_count_provisions_many_and_prints_each_key(
    databases: Databases, tmp_path: Path
) -> None:
    master_url = databases.create("count")
    env = {**os.environ, "STUDIO_DATABASE_URL": master_url}
    migrated = subprocess.run([STUDIO, "migrate", "up"], env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    made = subprocess.run(
        [STUDIO, "tenants", "create", "--name", "Load", "--count", "5", "--jobs", "3"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = [json.loads(line) for line in made.stdout.splitlines()]
    assert sorted(c["tenant"] for c in created) == [f"load-{n}" for n in range(1, 6)]
    assert all(c["api_key"].startswith("sk_") for c in created)
    assert "provisioned 5 of 5 studios" in made.stderr
    listed = subprocess.run([STUDIO, "tenants", "list", "--json"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert len(listed.stdout.splitlines()) == 5
