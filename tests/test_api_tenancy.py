"""Tenant databases as the server uses them: on another server, behind bounded pools, and
released when a caller's deadline passes."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest

from db.tenant_catalog import with_database
from db.tenants import provision_tenant
from studio.v1 import session_pb2
from tests.api import Api
from tests.conftest import ApiServer, Tenant
from tests.row_lock import RowLock, lock_waiters
from tests.serving import start_serve

POOL_SIZE = 5  # studio serve's default per tenant


def test_a_tenant_on_another_postgresql_server_is_served_from_there(
    api_server: ApiServer, second_server: str
) -> None:
    tenant = asyncio.run(
        provision_tenant(api_server.master_url, name="Far Away", server_url=second_server)
    )
    api = api_server.api(tenant.api_key)
    try:
        api.client("Lives elsewhere")
    finally:
        api.close()
    with psycopg.connect(with_database(second_server, tenant.database_name)) as conn:
        assert conn.execute("SELECT name FROM clients").fetchall() == [("Lives elsewhere",)]


def _connections(tenant: Tenant) -> int:
    with psycopg.connect(with_database(tenant.url, "postgres")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
            (psycopg.conninfo.conninfo_to_dict(tenant.url)["dbname"],),
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_a_burst_of_calls_uses_at_most_the_pool_of_its_tenant(api_server: ApiServer) -> None:
    """24 calls at once, all held in the database by a locked row: only the tenant's pool
    of 5 reach PostgreSQL; the others wait for a connection, then all succeed."""
    tenant = api_server.new_tenant("burst")
    setup = api_server.api(tenant.key)
    session = setup.session(setup.client().id, setup.room().id)
    callers = [api_server.api(tenant.key) for _ in range(24)]
    update = session_pb2.UpdateSessionRequest(
        session=session_pb2.Session(id=session.id, title="Burst")
    )
    try:
        with RowLock(tenant.url, session.id) as row_lock, ThreadPoolExecutor(24) as pool:
            calls = [pool.submit(c.sessions.UpdateSession, update, timeout=30) for c in callers]
            deadline = time.monotonic() + 10
            while lock_waiters(tenant.url) < POOL_SIZE:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.5)  # time for any call beyond the pool to reach the database too
            assert lock_waiters(tenant.url) == POOL_SIZE
            assert _connections(tenant) == POOL_SIZE + 1  # the pool, and the lock's holder
            row_lock.release()
            assert all(c.result().session.title == "Burst" for c in calls)
    finally:
        for caller in [setup, *callers]:
            caller.close()


def test_a_callers_deadline_cancels_its_database_work(api: Api, studio: Tenant) -> None:
    session = api.session(api.client().id, api.room().id)
    with RowLock(studio.url, session.id):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            api.sessions.UpdateSession(
                session_pb2.UpdateSessionRequest(session=session_pb2.Session(id=session.id,
                                                                             title="Late")),
                timeout=1.0,
            )  # fmt: skip
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3
        time.sleep(1.0)
        assert lock_waiters(studio.url) == 0  # nothing left queued behind it for a gone caller
    assert api.sessions.GetSession(session_pb2.GetSessionRequest(id=session.id)).session.title == (
        session.title
    )


def test_a_deadline_cancels_a_single_statement_call_too(api: Api, studio: Tenant) -> None:
    """CreateSession runs in autocommit (no transaction, no statement_timeout of the call's
    own): its statement, waiting for a locked project, is cancelled when the deadline passes."""
    client = api.client()
    project = api.project(client.id)
    room = api.room()
    with RowLock(studio.url, project.id, table="projects"):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            api.session(client.id, room.id, project_id=project.id, timeout=1.0)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3
        time.sleep(1.0)
        assert lock_waiters(studio.url) == 0
    listed = api.sessions.ListSessions(session_pb2.ListSessionsRequest(project_id=project.id))
    assert list(listed.sessions) == []  # the cancelled booking was not made


def test_a_process_holds_no_more_tenant_connections_than_its_cap(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """`--max-db-connections 5` (one tenant's pool): serving eight studios one after the
    other, the process closes the least recently used idle pools instead of holding one
    connection per studio."""
    tenants = [api_server.new_tenant("capped") for _ in range(8)]
    server = start_serve(
        tmp_path / "serve", "--no-demo", "--max-db-connections", "5",
        master_url=api_server.master_url,
    )  # fmt: skip
    try:
        for tenant in tenants:
            api = Api(server.address, tenant.key)
            try:
                api.client("Visitor")
            finally:
                api.close()
        time.sleep(0.5)  # the eviction of idle pools runs beside the calls
        names = [str(psycopg.conninfo.conninfo_to_dict(t.url)["dbname"]) for t in tenants]
        with psycopg.connect(api_server.master_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s)", (names,)
            ).fetchone()
        assert row is not None
        assert 1 <= row[0] <= POOL_SIZE
    finally:
        assert server.terminate() == 0
