"""Shared fixtures: a real PostgreSQL server, and databases of this test run's own.

The server is, in order: STUDIO_TEST_PG_URL if set; the machine's PostgreSQL on
127.0.0.1:5432 if it answers; else a throwaway cluster started here (and stopped at the end).
STUDIO_TEST_PG=throwaway forces the throwaway cluster. Tests marked `pgbouncer` that use the
`api` fixture run twice: on a studio served directly and on one served through a real
PgBouncer (transaction mode) in front of that server. Every database a test makes is named
after this run (st_<run id>_...) and dropped at the end, and so is every role (tenant roles are
named like their databases), so runs never share state.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import select

from db.api_keys import create_key
from db.engines import create_engine_for
from db.local_pgbouncer import LocalPgBouncer, pgbouncer_binary
from db.local_postgres import LocalPostgres
from db.master_tables import organizations
from db.migrations.files import migrations_dir
from db.migrations.fleet import run_one
from db.tenant_catalog import with_database
from db.tenants import provision_tenant
from tests.api import Api
from tests.connect_api import ConnectApi
from tests.serving import ServerProcess, start_serve

RUN_ID = secrets.token_hex(3)
MACHINE_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ROUTES = ["direct", "pgbouncer"]  # how the service reaches a studio of the `api` fixture


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pgbouncer: runs on a studio served through PgBouncer too (api fixture)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "api" in metafunc.fixturenames and metafunc.definition.get_closest_marker("pgbouncer"):
        metafunc.parametrize("api", ROUTES, indirect=True)


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
    with _throwaway_cluster(tmp_path_factory, "pg") as url:
        yield url


@pytest.fixture(scope="session")
def second_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Another PostgreSQL server (its `postgres` database): tenants live on more than one."""
    with _throwaway_cluster(tmp_path_factory, "second") as url:
        yield url


@pytest.fixture(scope="session")
def third_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A third PostgreSQL server, for fleets spread over three."""
    with _throwaway_cluster(tmp_path_factory, "third") as url:
        yield url


@contextmanager
def _throwaway_cluster(factory: pytest.TempPathFactory, name: str) -> Iterator[str]:
    cluster = LocalPostgres(factory.mktemp(name) / "data", durable=False)
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

    def _drop(self, name: str) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            ident = sql.Identifier(name)  # a template database must stop being one first
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))

    def drop_all(self) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"st_{RUN_ID}_%",)
            ).fetchall()
            # Several at once: each DROP DATABASE waits for a checkpoint, and concurrent ones
            # share it (30 databases: 34 s one by one, 2.3 s eight at a time, here).
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(self._drop, [name for (name,) in rows]))
            # Tenant roles are named like their databases, and are cluster-wide: once the
            # databases they own are gone, the run's roles go too.
            roles = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"st_{RUN_ID}_%",)
            ).fetchall()
            for (role,) in roles:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


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


@dataclass(frozen=True)
class Tenant:
    slug: str
    key: str
    url: str  # the tenant database, for checks behind the API's back


class ApiServer:
    """One `studio serve` process for the session, on its own master database."""

    def __init__(self, master_url: str, server: ServerProcess) -> None:
        self.master_url = master_url
        self.server = server
        self.address = server.address
        self.http_url = server.http_url  # Connect and gRPC-Web
        self._count = 0

    def new_tenant(self, label: str = "studio", *, pooled_url: str | None = None) -> Tenant:
        """A new studio; served through the pooler at `pooled_url` when given."""
        self._count += 1
        provisioned = asyncio.run(
            provision_tenant(self.master_url, name=f"{label} {self._count}", pooled_url=pooled_url)
        )
        return Tenant(
            provisioned.slug,
            provisioned.api_key,
            with_database(self.master_url, provisioned.database_name),
        )

    def new_key(self, tenant: Tenant, role: str) -> str:
        async def make() -> str:
            engine = create_engine_for(self.master_url, pool_size=1)
            try:
                async with engine.begin() as conn:
                    org_id = await conn.scalar(
                        select(organizations.c.id).where(organizations.c.slug == tenant.slug)
                    )
                    assert org_id is not None
                    return await create_key(conn, organization_id=org_id, role=role)
            finally:
                await engine.dispose()

        return asyncio.run(make())

    def api(self, key: str | None) -> Api:
        return Api(self.address, key)

    def connect(self, key: str | None, **options: Any) -> ConnectApi:
        """The same services over Connect (options: protocol, json, http2)."""
        return ConnectApi(self.http_url, key, **options)


@pytest.fixture(scope="session")
def api_server(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    master_url = databases.create("api_master")
    asyncio.run(run_one(master_url, "master", mode="up"))
    server = start_serve(
        tmp_path_factory.mktemp("serve"),
        "--no-demo",
        "--key-cache-seconds",
        "0.2",
        master_url=master_url,
    )
    try:
        yield ApiServer(master_url, server)
    finally:
        server.terminate()


@pytest.fixture(scope="session")
def studio(api_server: ApiServer) -> Tenant:
    """A studio shared by the tests that only create rows of their own."""
    return api_server.new_tenant("shared")


@pytest.fixture(scope="session")
def pgbouncer(pg_url: str) -> Iterator[LocalPgBouncer]:
    """A PgBouncer in transaction mode in front of the test server, one server connection
    per studio (so every call of a studio shares it: any session state would leak)."""
    if pgbouncer_binary() is None:
        if IN_CI:
            pytest.fail("pgbouncer is not installed, and CI must run the PgBouncer tests")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    bouncer = LocalPgBouncer(pg_url, pool_size=1)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.destroy()


@pytest.fixture(scope="session")
def pooled_studio(api_server: ApiServer, pgbouncer: LocalPgBouncer) -> Tenant:
    """A studio the server reaches through PgBouncer (its catalogue entry's pooled_url)."""
    return api_server.new_tenant("pooled", pooled_url=pgbouncer.url)


@pytest.fixture
def api(api_server: ApiServer, request: pytest.FixtureRequest) -> Iterator[Api]:
    """A client of the shared studio; of the pooled one for a `pgbouncer` test's second run."""
    route = getattr(request, "param", "direct")
    studio: Tenant = request.getfixturevalue("pooled_studio" if route == "pgbouncer" else "studio")
    client = api_server.api(studio.key)
    try:
        yield client
    finally:
        client.close()
