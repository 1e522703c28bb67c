"""`studio serve --drain-seconds`: on SIGTERM the server leaves a load balancer's rotation
(health NOT_SERVING) while it still serves calls, so that the balancer stops sending calls
before any is refused; then it drains and exits as before."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health_pb2

from studio.v1 import room_pb2
from tests.api import Api
from tests.conftest import Databases
from tests.serving import health, remove_relocated_cluster, start_serve, wait_until

# Far longer than the few calls below take: they all happen inside the delay.
DRAIN_SECONDS = 8


def test_after_sigterm_health_says_not_serving_while_calls_are_still_served(
    databases: Databases, tmp_path: Path
) -> None:
    server = start_serve(
        tmp_path, "--no-http", "--drain-seconds", str(DRAIN_SECONDS),
        master_url=databases.create("drain_master"),
    )  # fmt: skip
    api = Api(server.address, (tmp_path / "demo-api-key").read_text().strip())
    try:
        api.room("Studio A")
        server.process.terminate()  # SIGTERM
        wait_until(
            lambda: health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING,
            "health says NOT_SERVING",
        )
        # out of rotation, and still serving: a call that a balancer sent just before it
        # noticed is answered, not refused
        rooms = api.rooms.ListRooms(room_pb2.ListRoomsRequest(), timeout=10).rooms
        assert [room.name for room in rooms] == ["Studio A"]
        assert server.process.poll() is None
    finally:
        api.close()
        code = server.terminate()
        remove_relocated_cluster(tmp_path)
    assert code == 0
    assert f"still serving for {DRAIN_SECONDS:.1f}s" in "".join(server.output)
