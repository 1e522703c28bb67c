"""`studio serve`: the first README command, on the embedded default and on a given URL."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from db.tenant_catalog import with_database
from tests.conftest import Databases
from tests.migrating import LATEST
from tests.serving import children_of, remove_relocated_cluster, start_serve


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        return int(response.status)


def _reflected_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [response] = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        return {s.name for s in response.list_services_response.service}


def _demo_key(data_dir: Path) -> str:
    key_file = data_dir / "demo-api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    return key_file.read_text().strip()


def test_serve_on_a_configured_database_migrates_it_and_provisions_a_demo_once(
    databases: Databases, tmp_path: Path
) -> None:
    master_url = databases.create("serve_master")  # exists, empty
    server = start_serve(tmp_path, master_url=master_url)
    try:
        assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
        assert "grpc.health.v1.Health" in _reflected_services(server.address)
    finally:
        assert server.terminate() == 0
    key = _demo_key(tmp_path)
    assert key.startswith("sk_")
    assert "(created)" in "".join(server.output)

    with psycopg.connect(master_url) as conn:
        [(slug, database)] = conn.execute(
            "SELECT o.slug, t.database_name FROM organizations o"
            " JOIN tenant_databases t ON t.organization_id = o.id"
        ).fetchall()
        # the key itself is nowhere in the master database, only its hash
        assert conn.execute(
            "SELECT count(*) FROM api_keys WHERE key_sha256 = sha256(%s::bytea)",
            (key.encode(),),
        ).fetchone() == (1,)
    assert slug == "demo"
    with psycopg.connect(with_database(master_url, database)) as conn:
        assert conn.execute("SELECT max(version) FROM studio_migrate.history").fetchone() == (
            LATEST,
        )

    again = start_serve(tmp_path, master_url=master_url)
    assert again.terminate() == 0
    assert "(exists)" in "".join(again.output)
    assert _demo_key(tmp_path) == key


def test_serve_without_a_database_url_runs_embedded_postgres_that_survives_a_restart(
    tmp_path: Path,
) -> None:
    server = start_serve(tmp_path)
    try:
        assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert server.terminate() == 0
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()
    key = _demo_key(tmp_path)

    restarted = start_serve(tmp_path)
    try:
        assert _health(restarted.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        code = restarted.terminate()
        remove_relocated_cluster(tmp_path)
    assert code == 0
    output = "".join(restarted.output)
    assert "(exists)" in output  # the same data: the demo studio was found, not made again
    assert _demo_key(tmp_path) == key


def test_serve_with_workers_runs_that_many_processes_on_one_port(
    databases: Databases, tmp_path: Path
) -> None:
    server = start_serve(tmp_path, "--workers", "2", master_url=databases.create("workers"))
    try:
        assert "(2 workers)" in "".join(server.output)
        assert len(children_of(server.process.pid)) == 2
        for _ in range(4):  # new connections, spread by the kernel; each answers
            assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert server.terminate() == 0
