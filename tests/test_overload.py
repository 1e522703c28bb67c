"""Too much at once: calls beyond the limit are refused at once, and the server recovers."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from studio.v1 import client_pb2, session_pb2
from tests.api import Api, failure
from tests.call_log import wait_for_call
from tests.conftest import ApiServer
from tests.row_lock import RowLock, lock_waiters
from tests.serving import start_serve

LIMIT = 4


def test_calls_beyond_the_limit_get_resource_exhausted_at_once_and_the_server_recovers(
    api_server: ApiServer, tmp_path: Path
) -> None:
    tenant = api_server.new_tenant("overload")
    server = start_serve(tmp_path, "--no-demo", "--skip-migrations",
                         "--max-concurrent-calls", str(LIMIT),
                         master_url=api_server.master_url)  # fmt: skip
    api = None
    try:
        api = Api(server.address, tenant.key)
        session = api.session(api.client().id, api.room().id)
        update = session_pb2.UpdateSessionRequest(
            session=session_pb2.Session(id=session.id, title="Waiting")
        )
        with RowLock(tenant.url, session.id) as row_lock, ThreadPoolExecutor(LIMIT) as pool:
            stuck = [
                pool.submit(api.sessions.UpdateSession, update, timeout=30) for _ in range(LIMIT)
            ]
            deadline = time.monotonic() + 10
            while lock_waiters(tenant.url) < LIMIT:  # all LIMIT calls in flight, waiting
                assert time.monotonic() < deadline
                time.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                api.clients.ListClients(
                    client_pb2.ListClientsRequest(),
                    metadata=[("x-request-id", "one-too-many")],
                    timeout=10,
                )
            assert time.monotonic() - started < 1.0  # refused, not queued
            refused = failure(raised.value)  # with ErrorInfo, whose domain this checks
            assert (refused.code, refused.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS"
            )  # fmt: skip
            assert refused.metadata["maxConcurrentCalls"] == str(LIMIT)
            entry = wait_for_call(server, lambda e: e["request_id"] == "one-too-many")
            assert (entry["code"], entry["reason"]) == ("RESOURCE_EXHAUSTED", "TOO_MANY_CALLS")
            rss_before = _rss_mb(server.process.pid)
            with ThreadPoolExecutor(32) as flood:  # far more than it can serve, at once
                codes = list(flood.map(lambda _: _code_of(api), range(500)))
            assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert _rss_mb(server.process.pid) - rss_before < 50  # memory stays bounded
            row_lock.release()
            assert all(f.result().session.title == "Waiting" for f in stuck)
        # load is gone: calls are served again
        assert api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10).clients
    finally:
        if api is not None:
            api.close()
        server.terminate()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _code_of(api: Api) -> grpc.StatusCode:
    try:
        api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_an_oversized_message_is_resource_exhausted_with_error_info_and_logged(
    api_server: ApiServer,
) -> None:
    tenant = api_server.new_tenant("huge")
    api = api_server.api(tenant.key)
    try:
        huge = client_pb2.Client(name="x", notes="n" * (5 * 1024 * 1024))
        with pytest.raises(grpc.RpcError) as raised:
            api.clients.CreateClient(
                client_pb2.CreateClientRequest(client=huge),
                metadata=[("x-request-id", "too-large")],
                timeout=10,
            )
        got = failure(raised.value)  # with ErrorInfo, whose domain this checks
        assert (got.code, got.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
        assert got.metadata["limitBytes"] == str(4 * 1024 * 1024)  # the README's 4 MiB
        entry = wait_for_call(api_server.server, lambda e: e["request_id"] == "too-large")
        assert (entry["method"], entry["code"], entry["reason"]) == (
            "/studio.v1.ClientService/CreateClient", "RESOURCE_EXHAUSTED", "MESSAGE_TOO_LARGE"
        )  # fmt: skip
        # Past grpc's own ceiling (4 times as much), grpc refuses it before our code runs.
        larger = client_pb2.Client(name="x", notes="n" * (17 * 1024 * 1024))
        with pytest.raises(grpc.RpcError) as raised:
            api.clients.CreateClient(client_pb2.CreateClientRequest(client=larger), timeout=10)
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not api.clients.ListClients(client_pb2.ListClientsRequest()).clients
    finally:
        api.close()


def _answer(api: Api) -> tuple[grpc.StatusCode, str]:
    try:
        api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
    except grpc.RpcError as error:
        return error.code(), failure(error).reason
    return grpc.StatusCode.OK, ""


THROTTLED = (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_FAILED_AUTHENTICATIONS")


def test_a_guessing_address_is_throttled_but_its_valid_keys_still_get_in(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """Behind a load balancer every caller has its address: one guesser must not lock out
    the customers. From one address, a burst of 50 failures is allowed, then failures are
    RESOURCE_EXHAUSTED, while a valid key from the same address is served at once (a key
    never used on this server, then again from the cache)."""
    tenant = api_server.new_tenant("guessing")
    forged = tenant.key[:-4] + ("aaaa" if not tenant.key.endswith("aaaa") else "bbbb")
    server = start_serve(tmp_path, "--no-demo", "--skip-migrations",
                         "--auth-failures-per-second", "0.5",
                         master_url=api_server.master_url)  # fmt: skip
    callers = {
        name: Api(server.address, key)
        for name, key in {
            "guesser": "sk_000000000000_guess",
            "owner": tenant.key,
            "forger": forged,
            "unknown": "sk_123456789abc_never-issued",
        }.items()
    }
    guesser, owner = callers["guesser"], callers["owner"]
    try:
        answers = [_answer(guesser) for _ in range(50)]
        assert answers == [(grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY")] * 50
        deadline = time.monotonic() + 10  # a token may have come back meanwhile
        while (answer := _answer(guesser)) != THROTTLED:
            assert time.monotonic() < deadline, answer
        with pytest.raises(grpc.RpcError) as raised:
            guesser.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
        assert float(failure(raised.value).metadata["retryAfterSeconds"]) > 0

        started = time.monotonic()
        assert _answer(owner) == (grpc.StatusCode.OK, "")  # first use: looked up
        assert _answer(owner) == (grpc.StatusCode.OK, "")  # from the cache
        assert time.monotonic() - started < 1.5  # not after a token came back (2 s)

        for name in ("guesser", "forger", "unknown"):  # failures stay throttled
            assert _answer(callers[name]) == THROTTLED, name
        with ThreadPoolExecutor(16) as pool:  # many prefixes at once: no lookup each
            guesses = [Api(server.address, f"sk_{i:012x}_guess") for i in range(64)]
            try:
                assert set(pool.map(_answer, guesses)) == {THROTTLED}
            finally:
                for api in guesses:
                    api.close()
        assert _answer(owner) == (grpc.StatusCode.OK, "")

        deadline = time.monotonic() + 10  # tokens come back at 0.5 a second
        while (answer := _answer(guesser)) == THROTTLED:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert answer == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY")
    finally:
        for api in callers.values():
            api.close()
        server.terminate()
