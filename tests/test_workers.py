"""`studio serve --workers N`: a worker that dies is replaced while the others keep answering,
and SIGTERM to the supervisor still ends everything cleanly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from grpc_health.v1 import health_pb2

from server.cli._workers import RestartBudget
from tests.conftest import Databases
from tests.serving import children_of, health, process_gone, start_serve, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_a_killed_worker_is_replaced_while_calls_keep_succeeding(
    databases: Databases, tmp_path: Path
) -> None:
    server = start_serve(tmp_path, "--workers", "2", master_url=databases.create("workers"))
    try:
        first = children_of(server.process.pid)
        assert len(first) == 2
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # Reaped, not only a zombie: the leader thread is one while the others still exit
        # with the socket open, and connections the kernel gave it then are reset.
        wait_until(lambda: not Path(f"/proc/{victim}").exists(), "the killed worker is reaped")
        answered = 0

        def replaced() -> bool:
            nonlocal answered
            assert health(server.address) == SERVING  # every call meanwhile succeeds
            answered += 1
            workers = children_of(server.process.pid)
            return len(workers) == 2 and victim not in workers

        wait_until(replaced, "a new worker replaces the killed one")
        now = children_of(server.process.pid)
        assert len(now - first) == 1
        for _ in range(4):
            assert health(server.address) == SERVING
        assert answered >= 1
        assert f"worker pid {victim} exited" in "".join(server.output)
    finally:
        assert server.terminate() == 0
    assert all(process_gone(pid) for pid in first | now), "a worker outlived its supervisor"


def test_a_worker_that_keeps_dying_ends_the_supervisor_with_exit_3(
    databases: Databases, tmp_path: Path
) -> None:
    server = start_serve(tmp_path, "--workers", "2", master_url=databases.create("crashloop"))
    seen: set[int] = set()
    try:
        for _ in range(RestartBudget().allowed + 1):  # one death more than the budget
            workers = children_of(server.process.pid)
            seen |= workers
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)

            def replaced_or_ended(victim: int = victim) -> bool:
                now = children_of(server.process.pid)
                return server.process.poll() is not None or (len(now) == 2 and victim not in now)

            wait_until(replaced_or_ended, "the supervisor replaces the worker or gives up")
        assert server.process.wait(30) == 3
    finally:
        server.terminate()
    assert "restarts within 60s: giving up" in "".join(server.output)
    assert all(process_gone(pid) for pid in seen), "a worker outlived its supervisor"
