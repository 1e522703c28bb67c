"""Studios served through a real PgBouncer (Debian's 1.18, transaction pooling) in front of the
test server: the service leaves no session state on the server connections it shares, the
operator commands switch a studio to and from the pooler, and the runner keeps the direct
address. The API suite's `pgbouncer`-marked tests run every service through it too.

The fixture's PgBouncer keeps one server connection per studio (database and role), so every
call of a studio, and any other client of that studio, runs on the same PostgreSQL backend:
whatever one left behind in the session, the next would see.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from db.local_pgbouncer import LocalPgBouncer
from db.migrations.fleet import placeholder_values, run_one
from db.migrations.runner import Status
from db.tenant_catalog import (
    TenantLocation,
    list_tenants,
    server_of,
    service_conninfo,
    tenant_conninfo,
)
from db.tenants import provision_tenant
from studio.v1 import client_pb2, session_pb2
from tests.conftest import ApiServer, Databases, Tenant
from tests.row_lock import RowLock, lock_waiters
from tests.serving import STUDIO, wait_until

pytestmark = pytest.mark.pgbouncer  # `-m pgbouncer`: everything that runs through it
START = 1_900_000_000


def _location(master_url: str, slug: str) -> TenantLocation:
    async def find() -> TenantLocation:
        async with await psycopg.AsyncConnection.connect(master_url) as master:
            return next(t for t in await list_tenants(master) if t.slug == slug)

    return asyncio.run(find())


def _through_pooler(master_url: str, slug: str) -> psycopg.Connection[tuple[object, ...]]:
    """A client of the studio's pooled address, as the service connects (its role, no
    prepared statements, no startup options)."""
    conninfo = service_conninfo(master_url, _location(master_url, slug))
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)


def _value(conn: psycopg.Connection[tuple[object, ...]], query: str) -> object:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _studio(master_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STUDIO_DATABASE_URL": master_url}
    return subprocess.run(
        [STUDIO, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _book(api_server: ApiServer, tenant: Tenant, calls: int) -> None:
    """Calls of both kinds: single statements in autocommit (more than psycopg's prepare
    threshold of 5, each the same statement) and transactions carrying their deadline as
    SET LOCAL statement_timeout."""
    api = api_server.api(tenant.key)
    try:
        client, room = api.client(), api.room()
        for n in range(calls):
            api.clients.GetClient(client_pb2.GetClientRequest(id=client.id), timeout=10)
            booked = session_pb2.Session(
                client_id=client.id, room_id=room.id, title=f"Take {n}",
                start_time=Timestamp(seconds=START + n * 7200),
                end_time=Timestamp(seconds=START + n * 7200 + 3600),
            )  # fmt: skip
            api.sessions.CreateSession(session_pb2.CreateSessionRequest(session=booked), timeout=7)
    finally:
        api.close()


def test_calls_through_pgbouncer_leave_no_session_state_on_the_shared_connection(
    api_server: ApiServer, pgbouncer: LocalPgBouncer
) -> None:
    tenant = api_server.new_tenant("no leak", pooled_url=pgbouncer.url)
    other = api_server.new_tenant("neighbour", pooled_url=pgbouncer.url)
    _book(api_server, tenant, calls=8)
    database = str(_location(api_server.master_url, tenant.slug).database_name)
    assert f"db={database}" in pgbouncer.log  # the service did come through the pooler

    with (
        _through_pooler(api_server.master_url, tenant.slug) as first,
        _through_pooler(api_server.master_url, tenant.slug) as second,
        _through_pooler(api_server.master_url, other.slug) as neighbour,
    ):
        backend = _value(first, "SELECT pg_backend_pid()")
        # The same backend serves every client of the studio: a leak could not hide.
        assert _value(second, "SELECT pg_backend_pid()") == backend
        first.execute("SET work_mem = '7MB'")  # what a session-level SET would do
        try:
            assert _value(second, "SHOW work_mem") == "7MB"
        finally:
            first.execute("RESET work_mem")
        # What the service's calls left there: the role's cap, not a call's deadline, and
        # no statement prepared on the connection.
        assert _value(second, "SHOW statement_timeout") == "30s"
        assert _value(second, "SELECT count(*) FROM pg_prepared_statements") == 0
        # Another studio logs in as its own role: PgBouncer never hands it this backend.
        assert _value(neighbour, "SELECT pg_backend_pid()") != backend
        assert _value(neighbour, "SELECT current_user") != _value(first, "SELECT current_user")
    _book(api_server, tenant, calls=1)  # and the studio still works


def test_the_pooler_refuses_what_the_direct_pool_sends_at_connect(
    api_server: ApiServer, pgbouncer: LocalPgBouncer
) -> None:
    """Why pooled connections carry no `options`: PgBouncer 1.18 refuses the startup
    parameter the direct pool caps statements with."""
    tenant = api_server.new_tenant("options", pooled_url=pgbouncer.url)
    conninfo = service_conninfo(
        api_server.master_url, _location(api_server.master_url, tenant.slug)
    )
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        psycopg.connect(conninfo, options="-c statement_timeout=30000").close()


def test_operators_switch_a_studio_to_the_pooler_and_back(
    api_server: ApiServer, pgbouncer: LocalPgBouncer
) -> None:
    tenant = api_server.new_tenant("switched")
    database = _location(api_server.master_url, tenant.slug).database_name
    switched = _studio(
        api_server.master_url, "tenants", "set-pooled-url", "--tenant", tenant.slug, pgbouncer.url
    )
    assert switched.returncode == 0, switched.stderr
    assert switched.stdout == f"{tenant.slug}: served through {pgbouncer.url[13:]}\n"
    assert _location(api_server.master_url, tenant.slug).pooled_url == pgbouncer.url
    # The server picks it up within its key cache time (0.2 s here): the next calls go
    # through PgBouncer.
    _book(api_server, tenant, calls=1)
    assert f"db={database}" in pgbouncer.log

    cleared = _studio(
        api_server.master_url, "tenants", "set-pooled-url", "--tenant", tenant.slug, "--clear"
    )
    assert cleared.returncode == 0, cleared.stderr
    assert _location(api_server.master_url, tenant.slug).pooled_url is None
    born = _studio(api_server.master_url, "tenants", "create", "--name", "Born Pooled",
                   "--pooled-url", pgbouncer.url, "--json")  # fmt: skip
    assert born.returncode == 0, born.stderr
    assert _location(api_server.master_url, "born-pooled").pooled_url == pgbouncer.url
    missing = _studio(
        api_server.master_url, "tenants", "set-pooled-url", "--tenant", "nope", "--clear"
    )
    assert (missing.returncode, missing.stderr) == (
        1,
        "studio tenants set-pooled-url: no studio 'nope'\n",
    )


def test_the_runner_keeps_the_direct_address_and_no_statement_cap(
    api_server: ApiServer, pgbouncer: LocalPgBouncer, tenant_migrations: Callable[..., Path]
) -> None:
    """A pooled studio's role caps the service's statements at 30 s; its migrations run on
    the server itself, as the role, with no cap unless one is given."""
    tenant = api_server.new_tenant("migrated", pooled_url=pgbouncer.url)
    location = _location(api_server.master_url, tenant.slug)
    folder = tenant_migrations()
    after_built_in = max(int(path.name[:4]) for path in folder.glob("*.sql")) + 1
    (folder / f"{after_built_in:04d}_check_timeout.sql").write_text(
        "DO $$ BEGIN\n"
        "  IF current_setting('statement_timeout') <> '0' THEN\n"
        "    RAISE 'statement_timeout is %', current_setting('statement_timeout');\n"
        "  END IF;\n"
        "END $$;\n"
    )
    conninfo = tenant_conninfo(api_server.master_url, location)
    assert f"port={pgbouncer.port}" not in conninfo
    report = asyncio.run(
        run_one(conninfo, "tenant", mode="up", directory=folder,
                placeholders=placeholder_values(location))
    )  # fmt: skip
    assert (report.status, report.applied) == (Status.APPLIED, [after_built_in]), report.as_dict()


def test_a_server_goes_behind_its_pooler_at_once_and_each_role_gets_the_cap(
    databases: Databases,
) -> None:
    """`--server`: every studio on that server, in one step; a role made before the cap was
    a role default gets it; a studio without a role of its own stops the whole change."""
    master_url = databases.create("pool_master")
    asyncio.run(run_one(master_url, "master", mode="up"))
    made = [asyncio.run(provision_tenant(master_url, name=f"On Server {n}")) for n in range(2)]
    with psycopg.connect(master_url, autocommit=True) as conn:  # as before this feature
        conn.execute(sql.SQL("ALTER ROLE {} RESET statement_timeout").format(
            sql.Identifier(made[0].role_name)))  # fmt: skip
    server = server_of(master_url)
    pooler = "postgresql://127.0.0.1:6432"

    switched = _studio(master_url, "tenants", "set-pooled-url", "--server", server, pooler)
    assert switched.returncode == 0, switched.stderr
    assert sorted(switched.stdout.splitlines()) == [
        f"{t.slug}: served through 127.0.0.1:6432" for t in made
    ]
    with psycopg.connect(master_url) as conn:
        for tenant in made:
            assert conn.execute(
                "SELECT setconfig FROM pg_db_role_setting WHERE setrole = %s::regrole",
                (tenant.role_name,),
            ).fetchone() == (["statement_timeout=30000"],)

    legacy = databases.create("pool_legacy")
    with psycopg.connect(master_url, autocommit=True) as conn:
        conn.execute("INSERT INTO organizations (name, slug) VALUES ('Old', 'old')")
        conn.execute(
            "INSERT INTO tenant_databases (organization_id, database_name)"
            " SELECT id, %s FROM organizations WHERE slug = 'old'",
            (str(conninfo_to_dict(legacy)["dbname"]),),
        )
    refused = _studio(master_url, "tenants", "set-pooled-url", "--server", server, pooler)
    assert (refused.returncode, refused.stderr) == (
        1,
        "studio tenants set-pooled-url: these studios have no role of their own"
        " (`studio tenants isolate` them first): old\n",
    )
    assert _location(master_url, "old").pooled_url is None
    cleared = _studio(master_url, "tenants", "set-pooled-url", "--server", server, "--clear")
    assert cleared.returncode == 0, cleared.stderr
    assert all(_location(master_url, t.slug).pooled_url is None for t in made)


def test_a_deadline_cancels_a_pooled_call_in_postgresql(
    api_server: ApiServer, pgbouncer: LocalPgBouncer
) -> None:
    """A booking waiting for a locked project gets DEADLINE_EXCEEDED, and psycopg's cancel
    request reaches the statement through PgBouncer: nothing is left waiting."""
    tenant = api_server.new_tenant("cancelled", pooled_url=pgbouncer.url)
    api = api_server.api(tenant.key)
    try:
        client, room = api.client(), api.room()
        project = api.project(client.id)
        with RowLock(tenant.url, project.id, table="projects"):
            with pytest.raises(grpc.RpcError) as raised:
                api.session(client.id, room.id, project_id=project.id, timeout=1.0)
            assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            wait_until(lambda: lock_waiters(tenant.url) == 0, "the cancelled statement ends")
        assert api.session(client.id, room.id, project_id=project.id).project_id == project.id
    finally:
        api.close()
