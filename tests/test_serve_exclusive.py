"""One server per port and per data directory: a second `studio serve` is refused in one line,
and the first keeps serving. Only the workers of one `--workers N` supervisor share a port."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health_pb2

from tests.conftest import Databases
from tests.serving import health, serve_refused, start_serve

SERVING = health_pb2.HealthCheckResponse.SERVING


def _assert_refused(code: int, output: str, expected: str) -> None:
    assert code != 0, output
    assert expected in output, output
    assert "Traceback" not in output
    assert "serving gRPC on" not in output
    [line] = [line for line in output.splitlines() if line.startswith("studio serve:")]
    assert expected in line


def test_a_second_server_on_a_port_in_use_is_refused_and_the_first_keeps_serving(
    databases: Databases, tmp_path: Path
) -> None:
    master_url = databases.create("port_master")
    first = start_serve(tmp_path / "first", "--no-demo", master_url=master_url)
    try:
        code, output = serve_refused(
            tmp_path / "second", "--no-demo", "--port", str(first.port), master_url=master_url
        )
        _assert_refused(code, output, f"port {first.port} is in use")
        for _ in range(4):  # new connections: all reach the first server, which answers
            assert health(first.address) == SERVING
        assert first.process.poll() is None
    finally:
        assert first.terminate() == 0


def test_a_port_held_by_a_workers_supervisor_is_refused_to_a_plain_server_and_a_second_one(
    databases: Databases, tmp_path: Path
) -> None:
    master_url = databases.create("port_workers")
    supervisor = start_serve(tmp_path / "sup", "--workers", "2", master_url=master_url)
    try:
        port = str(supervisor.port)
        for i, extra in enumerate([(), ("--workers", "2")]):
            code, output = serve_refused(
                tmp_path / f"other{i}", "--no-demo", "--port", port, *extra, master_url=master_url
            )
            _assert_refused(code, output, f"port {port} is in use")
        assert health(supervisor.address) == SERVING
    finally:
        assert supervisor.terminate() == 0


def test_a_second_server_on_the_same_data_directory_is_refused_with_the_holders_pid(
    databases: Databases, tmp_path: Path
) -> None:
    master_url = databases.create("datadir")
    first = start_serve(tmp_path, "--no-demo", master_url=master_url)
    try:
        code, output = serve_refused(tmp_path, "--no-demo", "--port", "0", master_url=master_url)
        _assert_refused(code, output, f"in use by another studio serve (pid {first.process.pid})")
        assert health(first.address) == SERVING
    finally:
        assert first.terminate() == 0
    # The lock goes with its process: the same directory serves again.
    again = start_serve(tmp_path, "--no-demo", master_url=master_url)
    assert again.terminate() == 0
