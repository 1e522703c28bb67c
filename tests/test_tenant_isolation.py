"""Least privilege between studios: each tenant database has a role of its own, the owner of
everything in it and the only role that may connect to it, and the service reaches a studio
as that role, so reaching the wrong database is refused by PostgreSQL itself."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from db.api_keys import create_key
from db.engines import create_engine_for
from db.local_postgres import LocalPostgres
from db.migrations.fleet import Fleet, FleetOptions, run_one
from db.migrations.runner import Status
from db.tenant_catalog import TenantLocation, list_tenants, tenant_conninfo, with_database
from db.tenant_roles import objects_not_owned_by
from db.tenants import (
    ProvisionedTenant,
    create_database_if_missing,
    provision_tenant,
    register_tenant,
    tenant_database_name,
)
from tests.conftest import ApiServer, Databases
from tests.migrating import next_file
from tests.row_lock import RowLock
from tests.serving import STUDIO


def _location(master_url: str, slug: str) -> TenantLocation:
    async def find() -> TenantLocation:
        async with await psycopg.AsyncConnection.connect(master_url) as conn:
            return next(t for t in await list_tenants(conn) if t.slug == slug)

    return asyncio.run(find())


def _as_role_of(master_url: str, slug: str, *, database: str | None = None) -> str:
    """How the service reaches studio `slug` (optionally pointed at another database)."""
    conninfo = tenant_conninfo(master_url, _location(master_url, slug))
    return make_conninfo(conninfo, dbname=database) if database else conninfo


async def _master(databases: Databases, label: str) -> str:
    master_url = databases.create(label)
    await run_one(master_url, "master", mode="up")
    return master_url


def _dbname(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


def _provision(master_url: str, name: str) -> ProvisionedTenant:
    return asyncio.run(provision_tenant(master_url, name=name))


def _provision_the_old_way(master_url: str, name: str, slug: str) -> str:
    """A studio as provisioning made them before tenant roles: its database created and
    migrated as the server's user, registered without a role. Its admin key."""

    async def make() -> str:
        database = tenant_database_name(master_url, slug)
        admin_url = with_database(master_url, database)
        assert await create_database_if_missing(admin_url)
        assert (await run_one(admin_url, "tenant", mode="up")).status is Status.APPLIED
        engine = create_engine_for(master_url, pool_size=1)
        try:
            async with engine.begin() as conn:
                org_id = await register_tenant(conn, name=name, slug=slug, database_name=database)
                return await create_key(conn, organization_id=org_id, role="admin")
        finally:
            await engine.dispose()

    return asyncio.run(make())


def _isolate(master_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STUDIO_DATABASE_URL": master_url}
    return subprocess.run(
        [STUDIO, "tenants", "isolate", *args], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


@dataclass(frozen=True)
class Ownership:
    tables: dict[str, str]  # table or sequence -> its owner
    database_owner: str
    acl: list[str] | None
    public_may_connect: bool


def _ownership(admin_url: str) -> Ownership:
    """Who owns the database and its tables, and who may connect: as a DBA would check."""
    with psycopg.connect(admin_url) as conn:
        owners = conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('public', 'studio_migrate') AND c.relkind IN ('r', 'S')"
        ).fetchall()
        database = conn.execute(
            "SELECT pg_get_userbyid(datdba), datacl::text[],"
            " has_database_privilege('public', datname, 'CONNECT')"
            " FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert database is not None
    return Ownership(
        {str(name): str(owner) for name, owner in owners},
        str(database[0]),
        database[1],
        bool(database[2]),
    )


def _not_owned_by(admin_url: str, role: str) -> list[tuple[str, str]]:
    async def check() -> list[tuple[str, str]]:
        async with await psycopg.AsyncConnection.connect(admin_url) as conn:
            return await objects_not_owned_by(conn, role)

    return asyncio.run(check())


def _role_row(master_url: str, slug: str) -> tuple[object, ...]:
    """The catalogue's role columns and the role's stored verifier (changes if re-set)."""
    location = _location(master_url, slug)
    with psycopg.connect(with_database(master_url, "postgres")) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (location.role_name,)
        ).fetchone()
    return (location.role_name, location.role_password, row)


def _service_users(admin_url: str) -> set[str]:
    """The users the service's pooled connections to this database are logged in as."""
    database = _dbname(admin_url)
    with psycopg.connect(with_database(admin_url, "postgres")) as conn:
        rows = conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return {str(name) for (name,) in rows}


def _served_as(api_server: ApiServer, key: str, admin_url: str, role: str) -> None:
    """Calls succeed, and (within a bound: the server caches keys briefly) reach the
    database as `role`."""
    api = api_server.api(key)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert api.client("Booked through the API").id
            if role in _service_users(admin_url):
                return
            assert time.monotonic() < deadline, _service_users(admin_url)
            time.sleep(0.1)
    finally:
        api.close()


def test_a_studios_role_cannot_connect_to_another_studios_database(
    api_server: ApiServer,
) -> None:
    master = api_server.master_url
    a = _provision(master, "Isolated A")
    b = _provision(master, "Isolated B")

    with psycopg.connect(_as_role_of(master, a.slug)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (a.role_name,)
    for role_of, other in ((a, b), (b, a)):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(_as_role_of(master, role_of.slug, database=other.database_name))

    catalogue = _as_role_of(master, a.slug, database=_dbname(master))  # nor the master's
    with psycopg.connect(catalogue) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT role_password FROM tenant_databases")

    for tenant in (a, b):  # the service serves both, each as its own role only
        admin_url = with_database(master, tenant.database_name)
        _served_as(api_server, tenant.api_key, admin_url, tenant.role_name)
        assert _service_users(admin_url) == {tenant.role_name}


def test_a_studios_database_and_everything_in_it_belong_to_its_role(
    api_server: ApiServer,
) -> None:
    tenant = _provision(api_server.master_url, "Owned")
    admin_url = with_database(api_server.master_url, tenant.database_name)

    ownership = _ownership(admin_url)
    assert ownership.database_owner == tenant.role_name
    assert ownership.public_may_connect is False
    assert {"clients", "sessions", "history"} <= set(ownership.tables)
    assert set(ownership.tables.values()) == {tenant.role_name}
    assert _not_owned_by(admin_url, tenant.role_name) == []  # schemas, sequences, types too


def test_what_a_later_migration_creates_belongs_to_the_role_too(
    databases: Databases, tenant_migrations: object
) -> None:
    master_url = asyncio.run(_master(databases, "iso_fleet"))
    tenant = _provision(master_url, "Later")
    folder: Path = tenant_migrations()  # type: ignore[operator]
    (folder / next_file("add_labels")).write_text("CREATE TABLE labels (id bigint, name text);\n")

    reports = asyncio.run(Fleet(master_url, FleetOptions(tenant_dir=folder)).run())

    assert [r.status for r in reports[1:]] == [Status.APPLIED]
    admin_url = with_database(master_url, tenant.database_name)
    assert _ownership(admin_url).tables["labels"] == tenant.role_name
    # and when an administrator migrates that one database by its URL, as the superuser
    (folder / next_file("add_colours", step=2)).write_text("CREATE TABLE colours (id bigint);\n")
    by_url = subprocess.run(
        [STUDIO, "migrate", "up", "--database-url", admin_url, "--kind", "tenant",
         "--migrations-dir", str(folder)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert by_url.returncode == 0, by_url.stdout + by_url.stderr
    assert _ownership(admin_url).tables["colours"] == tenant.role_name
    assert _not_owned_by(admin_url, tenant.role_name) == []


def test_a_studio_made_before_tenant_roles_is_converted_and_stays_served(
    api_server: ApiServer,
) -> None:
    master = api_server.master_url
    key = _provision_the_old_way(master, "Old Timer", "old-timer")
    database = tenant_database_name(master, "old-timer")
    admin_url = with_database(master, database)
    api = api_server.api(key)
    try:
        api.client("Before")  # served as the server's user, as before
    finally:
        api.close()
    assert _ownership(admin_url).public_may_connect is True

    converted = _isolate(master, "old-timer", "--json")

    assert converted.returncode == 0, converted.stderr
    report = json.loads(converted.stdout)
    assert (report["tenant"], report["status"]) == ("old-timer", "isolated")
    role = report["role"]
    assert "handed" in " ".join(report["changes"])
    assert _location(master, "old-timer").role_password not in converted.stdout
    ownership = _ownership(admin_url)
    assert ownership.database_owner == role
    assert ownership.public_may_connect is False
    assert set(ownership.tables.values()) == {role}
    assert _not_owned_by(admin_url, role) == []
    # the running server reaches it as its role now, and the data made before is there
    _served_as(api_server, key, admin_url, role)
    with psycopg.connect(_as_role_of(master, "old-timer")) as conn:
        names = {name for (name,) in conn.execute("SELECT name FROM clients").fetchall()}
        assert "Before" in names
    other = _provision(master, "Neighbour")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(_as_role_of(master, other.slug, database=database))
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(_as_role_of(master, "old-timer", database=other.database_name))

    before = (_ownership(admin_url), _role_row(master, "old-timer"))
    again = _isolate(master, "old-timer", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "already-isolated"
    assert json.loads(again.stdout)["changes"] == []
    assert (_ownership(admin_url), _role_row(master, "old-timer")) == before


def test_isolate_all_converts_every_old_studio_and_refuses_a_strangers_role(
    databases: Databases,
) -> None:
    master = asyncio.run(_master(databases, "iso_all"))
    new = _provision(master, "Already New")
    _provision_the_old_way(master, "Old One", "old-one")
    _provision_the_old_way(master, "Taken", "taken")
    stranger = tenant_database_name(master, "taken")  # a role of that name, not ours
    with psycopg.connect(master, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {stranger} NOLOGIN")

    status = subprocess.run(
        [STUDIO, "migrate", "status", "--json"], env={**os.environ, "STUDIO_DATABASE_URL": master},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    warned = {r["target"]: r["warnings"] for r in map(json.loads, status.stdout.splitlines()[:-1])}
    assert warned[f"tenant {new.slug}"] == []
    assert "studio tenants isolate old-one" in warned["tenant old-one"][0]

    first = _isolate(master, "--all", "--json")

    assert first.returncode == 3, first.stdout + first.stderr
    statuses = {r["tenant"]: r["status"] for r in map(json.loads, first.stdout.splitlines())}
    assert statuses == {new.slug: "already-isolated", "old-one": "isolated", "taken": "failed"}
    assert "not a studio tenant role" in first.stdout
    with psycopg.connect(master) as conn:  # the stranger's role was left alone
        assert conn.execute(
            "SELECT rolcanlogin, shobj_description(oid, 'pg_authid') FROM pg_roles"
            " WHERE rolname = %s", (stranger,)
        ).fetchone() == (False, None)  # fmt: skip
        conn.execute(f"DROP ROLE {stranger}")

    second = _isolate(master, "--all")
    assert second.returncode == 0, second.stdout + second.stderr
    lines = second.stdout.splitlines()
    assert len(lines) == 3
    assert sum("already-isolated" in line for line in lines) == 2
    assert "taken: isolated" in second.stdout
    assert _isolate(master, "--all").stdout.count("already-isolated") == 3
    status = subprocess.run(
        [STUDIO, "migrate", "status", "--json"], env={**os.environ, "STUDIO_DATABASE_URL": master},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "studio tenants isolate" not in status.stdout
    assert _isolate(master, "nope").returncode == 1


def test_an_administrator_that_is_not_a_superuser_can_provision_and_convert(
    databases: Databases, second_server: str
) -> None:
    """As on a managed PostgreSQL: the service's user has CREATEROLE and CREATEDB only (and,
    since PostgreSQL 16, may not act as a role it created unless it grants itself that)."""
    admin = databases.name("operator")
    password = secrets.token_hex(16)  # the embedded server checks passwords
    with psycopg.connect(second_server, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {admin} LOGIN CREATEROLE CREATEDB PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {admin} OWNER {admin}")
    master = make_conninfo(second_server, user=admin, dbname=admin, password=password)
    assert asyncio.run(run_one(master, "master", mode="up")).status is Status.APPLIED
    new = _provision(master, "Managed New")
    _provision_the_old_way(master, "Managed Old", "managed-old")

    converted = _isolate(master, "--all", "--json")

    assert converted.returncode == 0, converted.stdout + converted.stderr
    statuses = {r["tenant"]: r["status"] for r in map(json.loads, converted.stdout.splitlines())}
    assert statuses == {new.slug: "already-isolated", "managed-old": "isolated"}
    old = _location(master, "managed-old")
    assert _not_owned_by(with_database(master, old.database_name), str(old.role_name)) == []
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(_as_role_of(master, new.slug, database=old.database_name))


def test_on_a_server_that_checks_passwords_the_service_logs_in_as_the_role(
    tmp_path: Path,
) -> None:
    """Only the administrator is trusted; every other user must give its SCRAM password."""
    cluster = LocalPostgres(tmp_path / "data", durable=False)
    cluster.start()
    try:
        (cluster.data_dir / "pg_hba.conf").write_text(
            "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE DATABASE master")
        master = cluster.url("master")
        assert asyncio.run(run_one(master, "master", mode="up")).status is Status.APPLIED
        tenant = _provision(master, "Checked")

        with psycopg.connect(_as_role_of(master, tenant.slug)) as conn:
            assert conn.execute("SELECT count(*) FROM clients").fetchone() == (0,)
        wrong = make_conninfo(_as_role_of(master, tenant.slug), password="guess")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong)
    finally:
        cluster.stop("immediate")


def test_converting_a_studio_in_use_gives_up_on_a_held_lock_and_changes_nothing(
    databases: Databases,
) -> None:
    """A call holding a row of the studio's: the conversion does not queue behind it (nor
    block the calls after it) for long; it is reported failed, undone, and can be rerun."""
    master = asyncio.run(_master(databases, "iso_busy"))
    _provision_the_old_way(master, "Busy", "busy")
    admin_url = with_database(master, tenant_database_name(master, "busy"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("INSERT INTO clients (id, name) VALUES (1, 'Holding a row')")
    before = _ownership(admin_url)

    with RowLock(admin_url, 1, table="clients"):
        started = time.monotonic()
        busy = _isolate(master, "busy", "--json")
        waited = time.monotonic() - started

    assert busy.returncode == 3, busy.stdout + busy.stderr
    report = json.loads(busy.stdout)
    assert report["status"] == "failed"
    assert "lock timeout" in report["error"]
    assert waited < 20
    assert _ownership(admin_url) == before  # one transaction: nothing half done
    assert _location(master, "busy").role_name is None
    assert json.loads(_isolate(master, "busy", "--json").stdout)["status"] == "isolated"
