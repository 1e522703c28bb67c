"""Faults with real processes: a database restarted under load, a tenant database gone."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from db.local_postgres import LocalPostgres
from db.tenant_catalog import with_database
from db.tenants import provision_tenant
from studio.v1 import client_pb2, session_pb2
from tests.api import Api, failure
from tests.conftest import ApiServer
from tests.polling import wait_until
from tests.row_lock import RowLock, lock_waiters
from tests.serving import health, start_serve

CALLERS = 4


def test_a_database_restart_under_load_loses_no_acknowledged_booking(tmp_path: Path) -> None:
    cluster = LocalPostgres(tmp_path / "pg" / "data", durable=False)
    cluster.start()
    server = None
    try:
        master_url = cluster.url("studio_master")
        server = start_serve(tmp_path / "serve", "--no-demo", master_url=master_url)
        tenant = asyncio.run(provision_tenant(master_url, name="Under Load"))
        tenant_url = with_database(master_url, tenant.database_name)
        setup = Api(server.address, tenant.api_key)
        client, room = setup.client(), setup.room()
        setup.close()

        acknowledged: list[str] = []
        refusals: Counter[str] = Counter()
        lock, enough = threading.Lock(), threading.Event()

        def caller(index: int) -> None:
            api = Api(server.address, tenant.api_key)  # type: ignore[union-attr]
            try:
                n = 0
                while not enough.is_set():
                    n += 1
                    request_id = str(uuid.uuid4())
                    deadline = time.monotonic() + 60
                    while True:  # retry with the same request_id until acknowledged
                        try:
                            start = 1_900_000_000 + index * 10_000_000 + n * 3600
                            api.session(
                                client.id, room.id, request_id=request_id, start=start, hours=1
                            )
                            break
                        except grpc.RpcError as error:
                            with lock:
                                refusals[f"{error.code().name}/{failure(error).reason}"] += 1
                            assert time.monotonic() < deadline, "never recovered"
                            time.sleep(0.1)
                    with lock:
                        acknowledged.append(request_id)
            finally:
                api.close()

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acknowledged) >= CALLERS * 5, timeout=60, what="load, first")
        cluster.stop("fast")  # PostgreSQL goes away in the middle of the load...
        time.sleep(2.0)
        cluster.start(port=cluster.port)  # ...and comes back on the same address
        back = time.monotonic()
        probe = Api(server.address, tenant.api_key)
        while True:  # how soon is the service back?
            try:
                probe.clients.ListClients(client_pb2.ListClientsRequest(), timeout=5)
                break
            except grpc.RpcError:
                assert time.monotonic() - back < 10, "not serving 10 s after the database"
                time.sleep(0.05)
        recovered = time.monotonic() - back
        probe.close()
        after_outage = len(acknowledged)
        wait_until(lambda: len(acknowledged) >= after_outage + CALLERS * 5, timeout=60,
                   what="load after the outage")  # fmt: skip
        enough.set()
        for thread in threads:
            thread.join(120)

        print(f"2 s outage: {len(acknowledged)} bookings acknowledged, refusals"
              f" {dict(refusals)}, serving again {recovered:.2f} s after the database")  # fmt: skip
        assert len(acknowledged) > CALLERS * 10
        assert refusals, "the outage was not noticed by any call"
        assert {r.split("/")[0] for r in refusals} <= {"UNAVAILABLE"}, refusals
        with psycopg.connect(tenant_url) as conn:
            rows = conn.execute(
                "SELECT create_request_id::text, count(*) FROM sessions"
                " WHERE create_request_id IS NOT NULL GROUP BY 1"
            ).fetchall()
        assert sorted(r for r, _ in rows) == sorted(acknowledged)  # every one, none lost
        assert {count for _, count in rows} == {1}  # none twice
        assert server.process.poll() is None  # the server needed no restart
    finally:
        if server is not None:
            server.terminate()
        cluster.stop("immediate")


def test_a_tenant_whose_database_is_gone_is_unavailable_and_others_are_not(
    api_server: ApiServer,
) -> None:
    gone, fine = api_server.new_tenant("gone"), api_server.new_tenant("fine")
    lost, kept = api_server.api(gone.key), api_server.api(fine.key)
    try:
        lost.client("Before")
        with psycopg.connect(with_database(gone.url, "postgres"), autocommit=True) as conn:
            dbname = psycopg.conninfo.conninfo_to_dict(gone.url)["dbname"]
            conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as raised:
                lost.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
            got = failure(raised.value)
            assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        assert kept.client("Unaffected").name == "Unaffected"
        # while callers keep hammering the lost studio, the other's calls all succeed
        hammer = threading.Thread(target=lambda: [
            _ignore_errors(lambda: lost.clients.ListClients(client_pb2.ListClientsRequest()))
            for _ in range(100)])  # fmt: skip
        hammer.start()
        for _ in range(50):
            listed = kept.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
            assert [c.name for c in listed.clients] == ["Unaffected"]
        hammer.join()
    finally:
        lost.close()
        kept.close()


def _ignore_errors(call: object) -> None:
    with contextlib.suppress(grpc.RpcError):
        call()  # type: ignore[operator]


def test_sigterm_lets_calls_in_flight_finish_and_refuses_new_ones(
    api_server: ApiServer, tmp_path: Path
) -> None:
    tenant = api_server.new_tenant("shutdown")
    server = start_serve(tmp_path, "--no-demo", "--skip-migrations", "--grace", "10",
                         master_url=api_server.master_url)  # fmt: skip
    api = Api(server.address, tenant.key)
    try:
        session = api.session(api.client().id, api.room().id)
        results: list[object] = []
        with RowLock(tenant.url, session.id) as row_lock:
            in_flight = threading.Thread(target=lambda: results.append(api.sessions.UpdateSession(
                session_pb2.UpdateSessionRequest(
                    session=session_pb2.Session(id=session.id, title="Late")),
                timeout=30)))  # fmt: skip
            in_flight.start()
            deadline = time.monotonic() + 10
            while not lock_waiters(tenant.url):  # until the update really waits for the row
                assert time.monotonic() < deadline
                time.sleep(0.05)
            server.process.send_signal(signal.SIGTERM)
            refused: list[tuple[grpc.StatusCode, str]] = []

            def a_new_caller_is_refused() -> bool:  # the signal takes a moment to arrive
                late = Api(server.address, tenant.key)
                try:
                    late.clients.ListClients(client_pb2.ListClientsRequest(), timeout=5)
                except grpc.RpcError as error:
                    refused.append((error.code(), failure(error).reason))
                    return True
                finally:
                    late.close()
                return False

            wait_until(a_new_caller_is_refused, timeout=10, what="new calls refused after SIGTERM")
            # Refused by the server itself while it drains: retryable, and explained.
            assert refused == [(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")]
            assert health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
            row_lock.release()
            in_flight.join(30)
        started = time.monotonic()
        assert server.terminate(timeout=15) == 0
        assert time.monotonic() - started < 10
        [response] = results
        assert response.session.title == "Late"  # type: ignore[attr-defined]
        with psycopg.connect(tenant.url) as conn:
            assert conn.execute(
                "SELECT title FROM sessions WHERE id = %s", (session.id,)
            ).fetchone() == ("Late",)
    finally:
        api.close()
        server.terminate()


def test_kill_9_of_the_server_loses_nothing_that_was_acknowledged(
    api_server: ApiServer, tmp_path: Path
) -> None:
    tenant = api_server.new_tenant("killed")
    args = ("--no-demo", "--skip-migrations")
    server = start_serve(tmp_path / "a", *args, master_url=api_server.master_url)
    setup = Api(server.address, tenant.key)
    client, room = setup.client(), setup.room()
    setup.close()
    acknowledged, unanswered, lock = [], [], threading.Lock()
    stop = threading.Event()

    def caller(index: int) -> None:
        api = Api(server.address, tenant.key)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                request_id = str(uuid.uuid4())
                try:
                    api.session(client.id, room.id, request_id=request_id, hours=1,
                                start=1_950_000_000 + index * 10_000_000 + n * 3600)  # fmt: skip
                except grpc.RpcError:
                    with lock:
                        unanswered.append(request_id)  # maybe stored, maybe not: retry later
                    return
                with lock:
                    acknowledged.append(request_id)
        finally:
            api.close()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= CALLERS * 5, timeout=60, what="load before kill -9")
    server.process.kill()  # kill -9, mid-load
    for thread in threads:
        thread.join(30)
    stop.set()
    server.terminate()

    with psycopg.connect(tenant.url) as conn:
        stored = {r for (r,) in conn.execute(
            "SELECT create_request_id::text FROM sessions WHERE create_request_id IS NOT NULL"
        ).fetchall()}  # fmt: skip
    assert acknowledged
    assert set(acknowledged) <= stored  # nothing acknowledged was lost

    # a new server; the callers retry what was never answered, with the same request ids
    again = start_serve(tmp_path / "b", *args, master_url=api_server.master_url)
    api = Api(again.address, tenant.key)
    try:
        for n, request_id in enumerate(unanswered):  # (a slot of its own: the room is booked
            # once at a time; a retry of a stored booking returns it, whatever the slot)
            api.session(client.id, room.id, request_id=request_id, hours=1,
                        start=1_999_000_000 + n * 3600)  # fmt: skip
        with psycopg.connect(tenant.url) as conn:
            counts = conn.execute(
                "SELECT count(*), count(DISTINCT create_request_id) FROM sessions"
                " WHERE create_request_id IS NOT NULL"
            ).fetchone()
        assert counts is not None
        assert counts[0] == counts[1] == len(set(acknowledged) | set(unanswered))
    finally:
        api.close()
        again.terminate()
