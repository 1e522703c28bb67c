"""`studio serve --metrics-port`: what a Prometheus scrape shows after real calls, over gRPC
and over the HTTP port, from one process and from the workers of `--workers 2` in one scrape;
a busy metrics port is refused like the other ports."""

from __future__ import annotations

import asyncio
import shutil
import socket
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from db.tenant_catalog import with_database
from db.tenants import provision_tenant
from studio.v1 import client_pb2, session_pb2
from tests.api import Api, failure
from tests.conftest import Databases
from tests.connect_api import post_json
from tests.polling import wait_until
from tests.row_lock import RowLock, lock_waiters
from tests.serving import ServerProcess, children_of, serve_refused, start_serve

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CLIENTS = "studio.v1.ClientService"


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(server: ServerProcess) -> Samples:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for_sample(
    server: ServerProcess, what: str, expected: dict[str, float], timeout: float = 10
) -> Samples:
    """Scrape until these (unlabelled) values, copied into the metrics once a second, are as
    expected; the last scrape."""
    found: Samples = {}

    def matches() -> bool:
        nonlocal found
        found = scrape(server)
        return all(value(found, name) == want for name, want in expected.items())

    wait_until(matches, timeout=timeout, what=what)
    return found


def method(name: str, service: str = CLIENTS, **more: str) -> dict[str, str]:
    return {"grpc_type": "unary", "grpc_service": service, "grpc_method": name, **more}


@pytest.fixture(scope="module")
def served(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, str]]:
    """A server with metrics (a key cached for longer than the test), and its demo key."""
    data_dir = tmp_path_factory.mktemp("metrics")
    process = start_serve(
        data_dir, "--metrics-port", "0", "--key-cache-seconds", "600",
        master_url=databases.create("metrics"),
    )  # fmt: skip
    try:
        yield process, (data_dir / "demo-api-key").read_text().strip()
    finally:
        assert process.terminate() == 0


def test_a_scrape_counts_calls_by_method_and_code_over_grpc_and_http(
    served: tuple[ServerProcess, str],
) -> None:
    server, key = served
    assert any(line.startswith("serving metrics on 127.0.0.1:") for line in server.output)
    api = Api(server.address, key)
    try:
        for name in ("Ada", "Grace"):
            api.clients.CreateClient(
                client_pb2.CreateClientRequest(client=client_pb2.Client(name=name)), timeout=10
            )
        with pytest.raises(grpc.RpcError) as missing:
            api.clients.GetClient(client_pb2.GetClientRequest(id=424_242), timeout=10)
        assert failure(missing.value).code is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as invalid:
            api.clients.CreateClient(client_pb2.CreateClientRequest(), timeout=10)
        assert failure(invalid.value).code is grpc.StatusCode.INVALID_ARGUMENT
        unknown = api.channel.unary_unary("/studio.v1.NoSuchService/Nothing")
        with pytest.raises(grpc.RpcError):
            unknown(b"", timeout=10)
    finally:
        api.close()
    # The same procedure over Connect (the HTTP port): the same series.
    answer = post_json(server.http_url, f"/{CLIENTS}/ListClients", {}, key=key)
    assert answer.status == 200

    got = scrape(server)
    handled = "grpc_server_handled_total"
    assert value(got, handled, **method("CreateClient", grpc_code="OK")) == 2
    assert value(got, handled, **method("CreateClient", grpc_code="INVALID_ARGUMENT")) == 1
    assert value(got, handled, **method("GetClient", grpc_code="NOT_FOUND")) == 1
    assert value(got, handled, **method("ListClients", grpc_code="OK")) == 1
    assert value(got, handled, **method("unknown", "unknown", grpc_code="UNIMPLEMENTED")) == 1
    assert value(got, "grpc_server_started_total", **method("CreateClient")) == 3
    assert value(got, "grpc_server_handling_seconds_count", **method("CreateClient")) == 3
    assert (
        value(got, "grpc_server_handling_seconds_bucket", **method("CreateClient"), le="+Inf") == 3
    )
    # Sampled each second: the key looked up once, then cached (the unknown method is not
    # authenticated), no call in flight any more, and the pool of the demo studio.
    settled = {"studio_api_key_cache_hits_total": 4, "grpc_server_calls_in_flight": 0}
    got = wait_for_sample(server, "the key cache hits reach the metrics", settled)
    assert value(got, "studio_api_key_cache_misses_total") == 1
    assert value(got, "studio_tenant_pools_open") == 1
    assert value(got, "studio_db_connections_in_use") == 0
    assert value(got, "studio_db_connections_open") >= 1
    assert value(got, "studio_db_connection_waits_total", limit="studio") == 0
    assert value(got, "studio_log_lines_dropped_total") == 0


POOL_SIZE = 5  # a studio's connections in one process (server/app.py)


def test_calls_waiting_on_a_lock_show_in_flight_and_the_one_past_the_pool_counts_a_wait(
    databases: Databases, tmp_path: Path
) -> None:
    master_url = databases.create("metrics_waits")
    server = start_serve(tmp_path, "--no-demo", "--metrics-port", "0", master_url=master_url)
    api = None
    try:
        tenant = asyncio.run(provision_tenant(master_url, name="Waiting Room"))
        api = Api(server.address, tenant.api_key)
        session = api.session(api.client().id, api.room().id)
        update = session_pb2.UpdateSessionRequest(
            session=session_pb2.Session(id=session.id, title="Waiting")
        )
        tenant_url = with_database(master_url, tenant.database_name)
        calls = POOL_SIZE + 1
        updates = method("UpdateSession", "studio.v1.SessionService")
        with RowLock(tenant_url, session.id) as row_lock, ThreadPoolExecutor(calls) as pool:
            stuck = [pool.submit(api.sessions.UpdateSession, update, timeout=30)
                     for _ in range(calls)]  # fmt: skip
            wait_until(lambda: lock_waiters(tenant_url) == POOL_SIZE, timeout=10,
                       what="the studio's connections all wait for the row")  # fmt: skip
            wait_for_sample(
                server, "the calls in flight and the connections in use are shown",
                {"grpc_server_calls_in_flight": calls, "studio_db_connections_in_use": POOL_SIZE},
                timeout=3,
            )  # fmt: skip
            row_lock.release()
            assert all(f.result().session.title == "Waiting" for f in stuck)

        def waited() -> bool:
            got = scrape(server)
            return (
                value(got, "studio_db_connection_waits_total", limit="studio") == 1
                and value(got, "studio_db_connection_wait_seconds_total", limit="studio") > 0
                and value(got, "grpc_server_calls_in_flight") == 0
            )

        wait_until(waited, timeout=10, what="the call past the pool counted as a wait")
        got = scrape(server)
        assert value(got, "grpc_server_handled_total", **updates, grpc_code="OK") == calls
        assert value(got, "studio_db_connection_waits_total", limit="process") == 0
    finally:
        if api is not None:
            api.close()
        assert server.terminate() == 0


def _worker_files(worker: int) -> Path:
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    found = next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    return Path(found.split(b"=", 1)[1].decode())


def _calls_of(directory: Path, pid: int, into: Path) -> float:
    """The ListClients calls one worker counted, read from its own files alone."""
    into.mkdir()
    for file in directory.glob(f"*_{pid}.db"):
        shutil.copy(file, into / file.name)
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in MultiProcessCollector(None, str(into)).collect()  # type: ignore[no-untyped-call]
        for s in family.samples
    }
    return value(samples, "grpc_server_started_total", **method("ListClients"))


def test_one_scrape_of_a_supervisor_sums_its_workers(databases: Databases, tmp_path: Path) -> None:
    server = start_serve(
        tmp_path / "data", "--workers", "2", "--metrics-port", "0",
        master_url=databases.create("metrics_workers"),
    )  # fmt: skip
    try:
        workers = sorted(children_of(server.process.pid))
        assert len(workers) == 2
        directory = _worker_files(workers[0])
        key = (tmp_path / "data" / "demo-api-key").read_text().strip()
        per_worker: list[float] = []
        calls = 0
        while calls < 200:  # HTTP/1.1 from urllib: a new connection each, spread by the kernel
            for _ in range(10):
                answer = post_json(server.http_url, f"/{CLIENTS}/ListClients", {}, key=key)
                assert answer.status == 200
            calls += 10
            per_worker = [
                _calls_of(directory, pid, tmp_path / f"w{pid}-{calls}") for pid in workers
            ]
            if all(per_worker):
                break
        assert all(per_worker), f"the calls did not reach both workers: {per_worker}"
        assert sum(per_worker) == calls
        got = scrape(server)
        assert value(got, "grpc_server_started_total", **method("ListClients")) == calls
        assert (
            value(got, "grpc_server_handled_total", **method("ListClients", grpc_code="OK"))
            == calls
        )
        settled = {"studio_tenant_pools_open": 2, "grpc_server_calls_in_flight": 0}
        wait_for_sample(server, "each worker's pool of the demo studio is summed", settled)
    finally:
        assert server.terminate() == 0
    assert not directory.exists(), "the workers' metrics directory outlived the supervisor"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_metrics_port_is_refused(databases: Databases, tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = serve_refused(
            tmp_path, "--port", "0", "--workers", workers, "--metrics-port", str(port),
            master_url=databases.create(f"metrics_busy_{workers}"),
        )  # fmt: skip
    assert code == 3
    assert f"studio serve: port {port} is in use" in output
    assert "serving gRPC on" not in output
