"""Tenant databases as the server uses them: on another server, behind bounded pools, and
released when a caller's deadline passes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest

from db.tenant_catalog import with_database
from db.tenants import provision_tenant
from studio.v1 import client_pb2, session_pb2
from tests.api import Api, failure
from tests.conftest import ApiServer, Tenant
from tests.row_lock import RowLock, lock_waiters
from tests.serving import start_serve

POOL_SIZE = 5  # studio serve's default per tenant
LOCK_HOLDER = "test-row-lock"  # application_name of the tests' own lock-holding connections


def _dbname(tenant: Tenant) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(tenant.url)["dbname"])


def _row_lock(tenant: Tenant, row_id: int, **kwargs: str) -> RowLock:
    """A RowLock whose connection the samplers below do not count as the server's."""
    url = psycopg.conninfo.make_conninfo(tenant.url, application_name=LOCK_HOLDER)
    return RowLock(url, row_id, **kwargs)


def _established_local_ports() -> set[int]:
    """Local ports of this machine's TCP connections that are still open at the client's end
    (ESTABLISHED): a connection its client has closed is in FIN_WAIT or TIME_WAIT."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)  # the header
            for row in rows:
                local, _remote, state = row.split()[1:4]
                if state == "01":  # ESTABLISHED
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class Connections:
    """Samples pg_stat_activity every few ms from a thread of its own, for as long as the
    `with` block runs: the most connections the server held to `tenants` at any moment, and
    the most of them waiting for a lock (the tests' own lock holders are not counted).

    A backend whose client has closed its connection stays in pg_stat_activity for the moment
    it takes to exit (longer on a busy machine), while the client no longer holds it: so a
    backend counts only while its client's end of the TCP connection is still open, read from
    the kernel's socket table right after PostgreSQL's."""

    def __init__(self, server_url: str, tenants: list[Tenant]) -> None:
        self.server_url = server_url
        self.names = [_dbname(t) for t in tenants]
        self.peak = self.peak_waiting = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped)
        self._failure: BaseException | None = None

    def _sample_until_stopped(self) -> None:
        try:
            self._sample()
        except Exception as exc:  # noqa: BLE001 (__exit__ reports it: a dead sampler proves nothing)
            self._failure = exc

    def _sample(self) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT client_port, wait_event_type = 'Lock' FROM pg_stat_activity"
                    " WHERE datname = ANY(%s) AND application_name <> %s",
                    (self.names, LOCK_HOLDER),
                ).fetchall()
                assert all(port > 0 for port, _ in rows), "the server must connect over TCP"
                held = _established_local_ports()
                self.peak = max(self.peak, sum(port in held for port, _ in rows))
                self.peak_waiting = max(self.peak_waiting, sum(bool(w) for _, w in rows))
                self.samples += 1
                self._stop.wait(0.002)

    def __enter__(self) -> Connections:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.samples:  # sampling has begun
            assert self._thread.is_alive(), "the sampler failed"
            assert time.monotonic() < deadline, "no sample"
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._failure is not None:
            raise AssertionError("the sampler failed") from self._failure


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
        with (
            Connections(api_server.master_url, [tenant]) as seen,
            _row_lock(tenant, session.id) as row_lock,
            ThreadPoolExecutor(24) as pool,
        ):
            calls = [pool.submit(c.sessions.UpdateSession, update, timeout=30) for c in callers]
            deadline = time.monotonic() + 10
            while seen.peak_waiting < POOL_SIZE:  # (the calls wait until the release)
                assert time.monotonic() < deadline
                time.sleep(0.02)
            row_lock.release()
            assert all(c.result().session.title == "Burst" for c in calls)
        # sampled all along: before, while and after the pool was full
        assert seen.peak_waiting == POOL_SIZE
        assert seen.peak == POOL_SIZE
    finally:
        for caller in [setup, *callers]:
            caller.close()


def _until_no_lock_waiters(url: str) -> None:
    """Nothing left queued behind a lock for a caller that is gone (psycopg's cancel request
    reaches PostgreSQL soon after the deadline)."""
    deadline = time.monotonic() + 5
    while lock_waiters(url):
        assert time.monotonic() < deadline, "a cancelled call still waits in PostgreSQL"
        time.sleep(0.05)


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
        _until_no_lock_waiters(studio.url)
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
        _until_no_lock_waiters(studio.url)
    listed = api.sessions.ListSessions(session_pb2.ListSessionsRequest(project_id=project.id))
    assert list(listed.sessions) == []  # the cancelled booking was not made


def test_a_process_holds_no_more_tenant_connections_than_its_cap(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """`--max-db-connections 5` (one tenant's pool): serving eight studios one after the
    other, the process closes the least recently used idle pools instead of holding one
    connection per studio, at every moment."""
    tenants = [api_server.new_tenant("capped") for _ in range(8)]
    server = start_serve(
        tmp_path / "serve", "--no-demo", "--max-db-connections", "5",
        master_url=api_server.master_url,
    )  # fmt: skip
    try:
        with Connections(api_server.master_url, tenants) as seen:
            for tenant in tenants:
                api = Api(server.address, tenant.key)
                try:
                    api.client("Visitor")
                finally:
                    api.close()
        assert 1 <= seen.peak <= POOL_SIZE
    finally:
        assert server.terminate() == 0


CAP = 20
BUSY_STUDIOS = 100
HOLDING = 8  # studios whose calls wait in the database for a locked row meanwhile
CALLS_EACH = 3


def _provision(api_server: ApiServer, count: int, label: str) -> list[Tenant]:
    async def provision_all() -> list[Tenant]:
        parallel = asyncio.Semaphore(8)

        async def one(i: int) -> Tenant:
            async with parallel:
                made = await provision_tenant(api_server.master_url, name=f"{label} {i}")
            url = with_database(api_server.master_url, made.database_name)
            return Tenant(made.slug, made.api_key, url)

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    return asyncio.run(provision_all())


def _outcome(api: Api, i: int) -> tuple[grpc.StatusCode, str]:
    try:
        if i % 2:
            api.client(f"Caller {i}")
        else:
            api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=30)
    except grpc.RpcError as error:
        return error.code(), failure(error).reason  # every error carries an ErrorInfo
    return grpc.StatusCode.OK, ""


def test_a_hundred_busy_studios_never_take_a_process_past_its_connection_cap(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """`--max-db-connections 20` and 100 studios busy at once, 8 of them with a call held
    in the database by a locked row (connections that cannot be closed): PostgreSQL, sampled
    every few ms, never sees more than 20 of the process's connections to the studios; every
    call succeeds or is RESOURCE_EXHAUSTED, and afterwards every studio is served (no
    connection slot was lost)."""
    tenants = _provision(api_server, BUSY_STUDIOS, "busy")
    server = start_serve(tmp_path / "serve", "--no-demo", "--skip-migrations",
                         "--max-db-connections", str(CAP),
                         master_url=api_server.master_url)  # fmt: skip
    apis = [Api(server.address, t.key) for t in tenants]
    try:
        held = [api.session(api.client().id, api.room().id) for api in apis[:HOLDING]]
        with (
            Connections(api_server.master_url, tenants) as seen,
            contextlib.ExitStack() as locks,
            ThreadPoolExecutor(48) as pool,
        ):
            for tenant, session in zip(tenants[:HOLDING], held, strict=True):
                locks.enter_context(_row_lock(tenant, session.id))
            holders = [
                pool.submit(api.sessions.UpdateSession, session_pb2.UpdateSessionRequest(
                    session=session_pb2.Session(id=s.id, title="Held")), timeout=60)
                for api, s in zip(apis[:HOLDING], held, strict=True)
            ]  # fmt: skip
            deadline = time.monotonic() + 20
            while seen.peak_waiting < HOLDING:
                assert time.monotonic() < deadline, "the held calls never reached the locks"
                time.sleep(0.02)
            storm = [pool.submit(_outcome, api, i)
                     for i in range(CALLS_EACH) for api in apis]  # fmt: skip
            outcomes = [call.result() for call in storm]
            locks.close()  # the held calls go on
            assert all(h.result().session.title == "Held" for h in holders)
        assert set(outcomes) <= {
            (grpc.StatusCode.OK, ""),
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS"),  # the studio's own pool
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "DATABASE_CONNECTIONS_EXHAUSTED"),  # the process's
        }, set(outcomes)
        assert seen.peak <= CAP, f"{seen.peak} connections seen against a cap of {CAP}"
        assert seen.peak > HOLDING  # the studios did share the budget
        for api in apis:  # nothing leaked: each studio gets a connection again
            assert _outcome(api, 0) == (grpc.StatusCode.OK, "")
    finally:
        for api in apis:
            api.close()
        assert server.terminate() == 0
