"""Two `studio serve` replicas (one master database, real sockets) behind a real Envoy on the
example config of deploy/envoy/: calls balanced per call, and a replica stopped with SIGTERM
under a load of bookings leaves Envoy's rotation through its health status, with no booking
lost, none made twice, and no error a caller could have been spared by a retry."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.descriptor_pb2 import MethodOptions
from google.protobuf.timestamp_pb2 import Timestamp

from db.migrations.fleet import run_one
from db.tenant_catalog import with_database
from db.tenants import provision_tenant
from server.routers import ROUTERS
from studio.v1 import client_pb2, room_pb2, session_pb2
from tests.api import Api
from tests.call_log import call_lines
from tests.conftest import Databases
from tests.envoy_proxy import CONFIG, EnvoyProcess, start_envoy
from tests.serving import ServerProcess, remove_relocated_cluster, start_serve, wait_until

# A create that carries a request_id is idempotent (the server books it once, whatever the
# number of tries): the caller says so, and Envoy then retries it as it retries queries.
IDEMPOTENT_WRITE = (("x-studio-idempotent", "true"),)
DRAIN_SECONDS = 5.0  # on SIGTERM: NOT_SERVING but serving; Envoy checks every 0.5 s
CALLERS = 4
BASE_TIME = 1_900_000_000  # each booking an hour of its own from here: no two overlap
MAX_BOOKINGS_PER_CALLER = 2000  # bounds the load whatever happens


@dataclass
class Cluster:
    envoy: EnvoyProcess
    replicas: list[ServerProcess]
    key: str
    tenant_url: str  # the studio's database, to count rows behind the API's back
    drain_seconds: float


@pytest.fixture
def cluster(
    databases: Databases, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    """`request.param`: the replicas' --drain-seconds (DRAIN_SECONDS if not parametrized)."""
    drain_seconds = getattr(request, "param", DRAIN_SECONDS)
    master_url = databases.create("envoy_master")
    asyncio.run(run_one(master_url, "master", mode="up"))
    tenant = asyncio.run(provision_tenant(master_url, name="behind envoy"))
    replicas: list[ServerProcess] = []
    envoy = None
    try:
        options = ("--no-demo", "--no-http", "--skip-migrations")
        for name in ("a", "b"):
            drain = ("--drain-seconds", str(drain_seconds))
            replicas.append(start_serve(tmp_path / name, *options, *drain, master_url=master_url))
        envoy_dir = tmp_path / "envoy"
        envoy_dir.mkdir()
        envoy = start_envoy(
            envoy_dir, REPLICA_A_PORT=replicas[0].port, REPLICA_B_PORT=replicas[1].port
        )
        tenant_url = with_database(master_url, tenant.database_name)
        yield Cluster(envoy, replicas, tenant.api_key, tenant_url, drain_seconds)
    finally:
        if envoy is not None:
            envoy.stop()
        for replica in replicas:
            replica.terminate()
        for name in ("a", "b"):
            remove_relocated_cluster(tmp_path / name)


def _served(replica: ServerProcess, method: str) -> int:
    return sum(1 for line in call_lines(replica.output) if line["method"].endswith(method))


def test_calls_on_one_connection_reach_both_replicas(cluster: Cluster) -> None:
    """One client channel is one HTTP/2 connection to Envoy; its calls still go to both
    replicas, round robin: balanced per call, not per connection."""
    api = Api(cluster.envoy.address, cluster.key)
    try:
        room = api.room()
        for _ in range(20):
            api.rooms.GetRoom(room_pb2.GetRoomRequest(id=room.id), timeout=10)
    finally:
        api.close()
    a, b = cluster.replicas
    wait_until(lambda: _served(a, "/GetRoom") + _served(b, "/GetRoom") == 20, "20 calls logged")
    assert _served(a, "/GetRoom") >= 5
    assert _served(b, "/GetRoom") >= 5


@dataclass
class Load:
    """Callers booking sessions through Envoy until told to stop; each booking a new request
    id and an hour of its own in the one room."""

    client_id: int
    room_id: int
    slots: Iterator[int] = field(default_factory=itertools.count)
    acknowledged: dict[str, int] = field(default_factory=dict)  # request id -> session id
    errors: list[str] = field(default_factory=list)
    booked: Counter[int] = field(default_factory=Counter)  # per caller
    stop: threading.Event = field(default_factory=threading.Event)

    def request(self) -> session_pb2.CreateSessionRequest:
        start = BASE_TIME + next(self.slots) * 3600
        return session_pb2.CreateSessionRequest(
            session=session_pb2.Session(
                client_id=self.client_id, room_id=self.room_id, title="Load",
                start_time=Timestamp(seconds=start), end_time=Timestamp(seconds=start + 3600),
            ),
            request_id=str(uuid.uuid4()),
        )  # fmt: skip

    def book(self, caller: int, api: Api) -> None:
        for _ in range(MAX_BOOKINGS_PER_CALLER):
            if self.stop.is_set():
                return
            request = self.request()
            try:
                response = _create(api, request)
            except grpc.RpcError as error:
                self.errors.append(f"{error.code().name}: {error.details()}")  # type: ignore[attr-defined]
                continue
            self.acknowledged[request.request_id] = response.id
            self.booked[caller] += 1

    def book_twice_at_once(self, apis: list[Api], times: int) -> None:
        """The same booking (one request id) sent at once on two connections, so mostly to
        both replicas: one session, the same for both."""
        with ThreadPoolExecutor(2) as pool:
            for _ in range(times):
                request = self.request()
                first, second = pool.map(_create, apis[:2], [request, request])
                assert first.id == second.id
                self.acknowledged[request.request_id] = first.id


def _create(api: Api, request: session_pb2.CreateSessionRequest) -> session_pb2.Session:
    return api.sessions.CreateSession(request, timeout=30, metadata=IDEMPOTENT_WRITE).session


@pytest.mark.parametrize(
    "cluster", [DRAIN_SECONDS, 0.0], indirect=True, ids=["drain-delay", "no-drain-delay"]
)
def test_a_replica_stopped_under_load_loses_no_booking(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    envoy = cluster.envoy
    drained, other = cluster.replicas
    api = Api(envoy.address, cluster.key)
    load_channels = [Api(envoy.address, cluster.key) for _ in range(CALLERS)]
    try:
        client = api.clients.CreateClient(
            client_pb2.CreateClientRequest(
                client=client_pb2.Client(name="Ada"), request_id=str(uuid.uuid4())
            ),
            timeout=10,
            metadata=IDEMPOTENT_WRITE,
        ).client
        room = api.rooms.CreateRoom(
            room_pb2.CreateRoomRequest(room=room_pb2.Room(name="A"), request_id=str(uuid.uuid4())),
            timeout=10,
            metadata=IDEMPOTENT_WRITE,
        ).room
        load = Load(client.id, room.id)
        callers = [  # each its own channel: its own connection to Envoy
            threading.Thread(target=load.book, args=(n, channel), name=f"caller {n}")
            for n, channel in enumerate(load_channels)
        ]
        load.book_twice_at_once(load_channels, 10)
        for caller in callers:
            caller.start()
        try:
            wait_until(lambda: len(load.acknowledged) >= 40, "40 bookings before the SIGTERM")
            drained.process.terminate()  # SIGTERM; the load goes on
            signalled = time.monotonic()
            drained_port = drained.port
            wait_until(
                lambda: "failed_active_hc" in envoy.health_flags()[drained_port],
                "envoy takes the replica out of rotation",
            )
            noticed = time.monotonic() - signalled  # printed, not asserted
            # ... through its health status: it still runs, and still serves (drain delay)
            left_rotation_alive = drained.process.poll() is None
            assert drained.process.wait(60) == 0
            after_exit = dict(load.booked)
            wait_until(
                lambda: all(load.booked[n] >= after_exit.get(n, 0) + 10 for n in range(CALLERS)),
                "every caller books 10 more once the replica has gone",
            )
        finally:
            load.stop.set()
            for caller in callers:
                caller.join(60)
        assert load.errors == [], "callers saw errors that Envoy could have retried"
        if cluster.drain_seconds:  # (without, it may exit before the next health check)
            assert left_rotation_alive, "Envoy saw the replica fail only once it had exited"
        assert envoy.health_flags()[other.port] == {"healthy"}

        acknowledged = load.acknowledged
        # None lost, none twice: each acknowledged request id is one row, and nothing else.
        with psycopg.connect(cluster.tenant_url) as conn:
            rows = dict(conn.execute("SELECT create_request_id::text, id FROM sessions").fetchall())
            [(count, distinct)] = conn.execute(
                "SELECT count(*), count(DISTINCT create_request_id) FROM sessions"
            ).fetchall()
        assert count == distinct == len(acknowledged)
        assert rows == acknowledged
        # ... and the API answers each, through Envoy (the other replica alone now)
        for session_id in acknowledged.values():
            api.sessions.GetSession(session_pb2.GetSessionRequest(id=session_id), timeout=10)
        listed = _list_all(api)
        assert sorted(listed) == sorted(acknowledged.values())
        # A retried create books nothing: the same request id answers the same session.
        for request_id, session_id in itertools.islice(acknowledged.items(), 20):
            retry = session_pb2.CreateSessionRequest(
                session=_session_of(api, session_id), request_id=request_id
            )
            assert _create(api, retry).id == session_id
        with psycopg.connect(cluster.tenant_url) as conn:
            assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (count,)

        by_replica = [_served(r, "/CreateSession") for r in cluster.replicas]
        refused = sum(
            1 for line in call_lines(drained.output) if line.get("reason") == "SHUTTING_DOWN"
        )
        assert by_replica[0] > 0
        assert by_replica[1] > 0
        with capsys.disabled():
            print(
                f"\nenvoy: {len(acknowledged)} bookings acknowledged by {CALLERS} callers, 0"
                f" lost, 0 twice, 0 caller errors; served by the drained replica"
                f" {by_replica[0]}, by the other {by_replica[1]}; refused while shutting down"
                f" {refused}; Envoy retries {envoy.counter('cluster.studio.upstream_rq_retry')};"
                f" out of rotation {noticed:.2f}s after the SIGTERM"
                f" (--drain-seconds {cluster.drain_seconds:g})"
            )
    finally:
        api.close()
        for channel in load_channels:
            channel.close()


def _session_of(api: Api, session_id: int) -> session_pb2.Session:
    return api.sessions.GetSession(session_pb2.GetSessionRequest(id=session_id), timeout=10).session


def _list_all(api: Api) -> list[int]:
    ids: list[int] = []
    token = ""
    while True:
        page = api.sessions.ListSessions(
            session_pb2.ListSessionsRequest(page_size=100, page_token=token), timeout=10
        )
        ids.extend(s.id for s in page.sessions)
        token = page.next_page_token
        if not token:
            return ids


def _methods() -> dict[str, tuple[int, bool]]:
    """Every method the server serves, as a gRPC path: the idempotency level its proto gives,
    and whether its request has a request_id (an idempotency key)."""
    return {
        f"/{router.service.full_name}/{method.name}": (
            method.GetOptions().idempotency_level,
            "request_id" in method.input_type.fields_by_name,
        )
        for router in ROUTERS
        for method in router.service.methods
    }


def test_the_retried_routes_are_exactly_the_idempotent_methods() -> None:
    """The config retries a reset or UNAVAILABLE call by its path only where the protos say
    the method has no side effects, or (when the caller says it sent one) where the request
    has a request_id: a new method cannot slip into either by its name alone."""
    queries, writes = (
        re.compile(pattern.replace("\\\\", "\\"))
        for pattern in re.findall(r'safe_regex: \{ regex: "([^"]+)" \}', CONFIG.read_text())
    )
    methods = _methods()
    assert {path for path in methods if queries.fullmatch(path)} == {
        path for path, (level, _) in methods.items() if level == MethodOptions.NO_SIDE_EFFECTS
    }
    assert {path for path in methods if writes.fullmatch(path)} == {
        path for path, (_, request_id) in methods.items() if request_id
    }
