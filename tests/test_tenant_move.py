"""`studio tenants move`: a studio's database moves to another PostgreSQL server while a real
`studio serve` takes bookings for it, and nothing acknowledged is lost.

The source is the test server (the machine's PostgreSQL when it answers), the target a
throwaway cluster of the bundled PostgreSQL: two servers, often two major versions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import psycopg
import pytest

from db.copy_verification import Fingerprint, differences
from db.local_postgres import free_port
from db.migrations.fleet import run_one
from db.pg_client_tools import tools_for
from db.tenant_catalog import server_of, with_database
from db.tenants import provision_tenant
from tests.api import Api, failure
from tests.conftest import Databases
from tests.polling import wait_until
from tests.serving import STUDIO, ServerProcess, start_serve

START = 1_800_000_000
T = TypeVar("T")


@dataclass
class Studio:
    slug: str
    key: str
    database: str


@dataclass
class MoveSetup:
    master_url: str
    server: ServerProcess

    def studio(self, name: str) -> Studio:
        made = asyncio.run(provision_tenant(self.master_url, name=name))
        return Studio(made.slug, made.api_key, made.database_name)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "STUDIO_DATABASE_URL": self.master_url}
        return subprocess.run(
            [STUDIO, *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )

    def listed(self, slug: str) -> dict[str, object]:
        listing = self.run("tenants", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        rows = [json.loads(line) for line in listing.stdout.splitlines()]
        [row] = [r for r in rows if r["slug"] == slug]
        return row


@pytest.fixture
def setup(databases: Databases, tmp_path: Path) -> Iterator[MoveSetup]:
    """A master of its own and a `studio serve` that caches keys (and so where each studio
    lives) for an hour: the service must find a moved studio by itself, on the studio's next
    call, not when the cache runs out."""
    master_url = databases.create("move_master")
    asyncio.run(run_one(master_url, "master", mode="up"))
    server = start_serve(tmp_path / "serve", "--no-demo", "--no-http",
                         "--key-cache-seconds", "3600", master_url=master_url)  # fmt: skip
    try:
        yield MoveSetup(master_url, server)
    finally:
        server.terminate()


def _retrying(book: Callable[[], T], within: float = 60) -> T:
    """`book()`, again after the RetryInfo delay while it is answered UNAVAILABLE."""
    deadline = time.monotonic() + within
    while True:
        try:
            return book()
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(failure(error).retry_seconds or 0.5)


@dataclass
class Booker:
    """Books sessions into one room, one after another, each with a request id; retries a
    call answered UNAVAILABLE after the delay its RetryInfo gives, as a client should."""

    api: Api
    client_id: int
    room_id: int
    lane: int
    acknowledged: dict[str, int] = field(default_factory=dict)  # request id -> session id
    acked_at: list[float] = field(default_factory=list)
    unavailable: list[tuple[str, float | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def book(self, number: int) -> None:
        request_id = str(uuid.uuid4())
        start = START + (self.lane * 10_000 + number) * 7200
        while not self.stop.is_set():
            try:
                session = self.api.session(self.client_id, self.room_id, start=start,
                                           hours=1, request_id=request_id)  # fmt: skip
            except grpc.RpcError as error:
                if error.code() is not grpc.StatusCode.UNAVAILABLE:
                    self.errors.append(f"{error.code().name}: {error.details()}")
                    return
                said = failure(error)
                delay = said.retry_seconds
                self.unavailable.append((said.reason, delay))
                time.sleep(delay if delay is not None else 0.5)
                continue
            self.acknowledged[request_id] = session.id
            self.acked_at.append(time.monotonic())
            return

    def run(self) -> None:
        for number in itertools.count():
            if self.stop.is_set():
                return
            self.book(number)


def _booker(setup: MoveSetup, studio: Studio, lane: int) -> Booker:
    api = Api(setup.server.address, studio.key)
    return Booker(api, api.client(f"Client {lane}").id, api.room(f"Room {lane}").id, lane)


def _sessions_in(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT create_request_id, id FROM sessions").fetchall()
    return {str(request_id): int(session_id) for request_id, session_id in rows if request_id}


def _exists(server_url: str, database: str) -> bool:
    with psycopg.connect(server_url) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        return found.fetchone() is not None


def test_a_studio_moves_under_load_losing_no_acknowledged_booking(
    setup: MoveSetup, pg_url: str, second_server: str
) -> None:
    moving, other = setup.studio("Moving Studio"), setup.studio("Staying Studio")
    assert setup.listed(moving.slug)["server"] == server_of(pg_url)
    bookers = [_booker(setup, moving, lane) for lane in range(3)]
    bystander = _booker(setup, other, 9)
    threads = [threading.Thread(target=b.run) for b in [*bookers, bystander]]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(len(b.acknowledged) >= 3 for b in bookers), timeout=60,
                   what="bookings before the move")  # fmt: skip
        moved = setup.run("tenants", "move", moving.slug, "--to", second_server, "--json")
        assert moved.returncode == 0, moved.stderr
        before = {id(b): len(b.acknowledged) for b in bookers}
        # Writes resume on the copy: every lane books again after the move.
        wait_until(lambda: all(len(b.acknowledged) >= before[id(b)] + 3 for b in bookers),
                   timeout=60, what="bookings after the move")  # fmt: skip
    finally:
        for b in [*bookers, bystander]:
            b.stop.set()
        for thread in threads:
            thread.join(60)
        for b in [*bookers, bystander]:
            b.api.close()

    report = json.loads(moved.stdout)
    assert report["steps"] == ["checked", "held", "copied", "verified", "switched", "done"]
    assert report["target"] == server_of(second_server)
    assert [b.errors for b in bookers] == [[], [], []]
    reasons = [reason for b in bookers for reason, _delay in b.unavailable]
    # Writes were held: refused (TENANT_MOVING), or their sessions ended by the hold.
    assert reasons
    assert set(reasons) <= {"TENANT_MOVING", "DATABASE_UNAVAILABLE"}
    assert all(delay is not None and delay > 0 for b in bookers for _r, delay in b.unavailable)

    on_target = _sessions_in(with_database(second_server, moving.database))
    acknowledged = {k: v for b in bookers for k, v in b.acknowledged.items()}
    assert acknowledged.items() <= on_target.items()  # 0 acknowledged writes lost
    assert bystander.errors == []
    assert bystander.unavailable == []
    assert len(bystander.acknowledged) > 0

    acked_at = sorted(t for b in bookers for t in b.acked_at)
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(acked_at))
    print(f"\nmove: writes held {report['pause_seconds']:.3f} s (the command's figure, hold to"
          f" switch); longest gap between acknowledged bookings seen by callers"
          f" {gaps[-1]:.3f} s; {len(acknowledged)} bookings, {len(reasons)} UNAVAILABLE"
          f" answers retried ({reasons.count('TENANT_MOVING')} TENANT_MOVING);"
          f" pg_dump {report['pg_dump']};"
          f" seconds per step {report['step_seconds']}")  # fmt: skip

    listed = setup.listed(moving.slug)
    assert (listed["server"], listed["database"]) == (server_of(second_server), moving.database)
    assert listed["move"] == {"step": "done", "from": server_of(pg_url),
                              "to": server_of(second_server)}  # fmt: skip

    assert setup.run("tenants", "move", moving.slug, "--abort").returncode == 3  # switched
    dropped = setup.run("tenants", "move", moving.slug, "--drop-source", "--json")
    assert dropped.returncode == 0, dropped.stderr
    assert not _exists(pg_url, moving.database)
    assert setup.listed(moving.slug)["move"] is None
    api = Api(setup.server.address, moving.key)
    try:  # still served, from the target
        assert api.client("After the drop").id > 0
    finally:
        api.close()


def test_a_failed_move_leaves_the_studio_where_it_was_and_a_rerun_finishes_it(
    setup: MoveSetup, pg_url: str, second_server: str
) -> None:
    studio = setup.studio("Careful Studio")
    api = Api(setup.server.address, studio.key)
    try:
        client, room = api.client("Before"), api.room("Live")
        nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
        unreachable = setup.run("tenants", "move", studio.slug, "--to", nowhere)
        assert unreachable.returncode == 3
        assert "unreachable" in unreachable.stderr
        first, second, third = (str(uuid.uuid4()) for _ in range(3))
        _retrying(lambda: api.session(client.id, room.id, start=START, request_id=first))

        # A copy that cannot fit the pause it is allowed is stopped: writes come back.
        rushed = setup.run("tenants", "move", studio.slug, "--to", second_server,
                           "--max-pause", "0.001")  # fmt: skip
        assert rushed.returncode == 3, rushed.stdout
        assert setup.listed(studio.slug)["server"] == server_of(pg_url)
        assert setup.listed(studio.slug)["move"] == {"step": "checked", "from": server_of(pg_url),
                                                     "to": server_of(second_server)}  # fmt: skip
        # Writes came back (the hold ended the service's sessions: its next call retries).
        _retrying(lambda: api.session(client.id, room.id, start=START + 14400, request_id=second))
        refused = setup.run("tenants", "move", studio.slug, "--drop-source")
        assert refused.returncode == 3
        assert "has not switched" in refused.stderr
        assert _exists(pg_url, studio.database)

        resumed = setup.run("tenants", "move", studio.slug, "--to", second_server, "--json")
        assert resumed.returncode == 0, resumed.stderr
        report = json.loads(resumed.stdout)
        assert report["resumed_from"] == "checked"
        assert report["steps"] == ["held", "copied", "verified", "switched", "done"]
        on_target = _sessions_in(with_database(second_server, studio.database))
        assert {first, second} <= set(on_target)
        again = setup.run("tenants", "move", studio.slug, "--to", second_server)
        assert again.returncode == 0
        assert "already moved" in again.stdout
        # The service finds the studio on its new server.
        _retrying(lambda: api.session(client.id, room.id, start=START + 28800, request_id=third))
        assert third in _sessions_in(with_database(second_server, studio.database))
    finally:
        api.close()


def _step(master_url: str, slug: str) -> str | None:
    """The last step of the studio's move, as the master records it."""
    with psycopg.connect(master_url) as conn:
        row = conn.execute(
            "SELECT m.step FROM tenant_moves m JOIN organizations o ON o.id = m.organization_id"
            " WHERE o.slug = %s",
            (slug,),
        ).fetchone()
    return None if row is None else str(row[0])


def _fill(url: str, sessions: int) -> None:
    """Enough sessions that copying them takes a while (seconds, not milliseconds)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO clients (name) VALUES ('Bulk')")
        conn.execute("INSERT INTO rooms (name) VALUES ('Bulk')")
        conn.execute(
            "INSERT INTO sessions (client_id, room_id, title, start_time, end_time)"
            " SELECT 1, 1, 'Take ' || n, timestamptz '2030-01-01' + n * interval '2 hours',"
            " timestamptz '2030-01-01' + n * interval '2 hours' + interval '1 hour'"
            " FROM generate_series(1, %s) n",
            (sessions,),
        )


def test_a_move_killed_while_holding_keeps_writes_held_until_it_is_run_again(
    setup: MoveSetup, pg_url: str, second_server: str
) -> None:
    studio = setup.studio("Interrupted Studio")
    _fill(with_database(pg_url, studio.database), 100_000)
    env = {**os.environ, "STUDIO_DATABASE_URL": setup.master_url}
    # Its own process group: killed with its pg_dump and pg_restore, as a lost machine is.
    mover = subprocess.Popen(
        [STUDIO, "tenants", "move", studio.slug, "--to", second_server],
        env=env, start_new_session=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _step(setup.master_url, studio.slug) in {"held", "copied"},
                   timeout=120, what="the move holding writes")  # fmt: skip
    finally:
        os.killpg(mover.pid, signal.SIGKILL)
        mover.wait(30)
    killed_at = _step(setup.master_url, studio.slug)
    assert setup.listed(studio.slug)["server"] == server_of(pg_url)
    api = Api(setup.server.address, studio.key)
    try:
        with pytest.raises(grpc.RpcError) as refused:  # its first call: a read-only session
            api.client("While held")
        held = failure(refused.value)
        assert (held.code, held.reason) == (grpc.StatusCode.UNAVAILABLE, "TENANT_MOVING")
        assert failure(refused.value).retry_seconds
        resumed = setup.run("tenants", "move", studio.slug, "--to", second_server, "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["resumed_from"] == killed_at
        assert _retrying(lambda: api.client("After the move")).id > 0
        with psycopg.connect(with_database(second_server, studio.database)) as conn:
            counted = conn.execute("SELECT count(*) FROM sessions").fetchone()
        assert counted == (100_000,)
    finally:
        api.close()


def _write_past_the_hold(url: str, stop: threading.Event) -> None:
    """A superuser's script that ignores the hold (it turns its sessions writable again):
    rows keep arriving in the source while the move copies it."""
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SET default_transaction_read_only = off")
                while not stop.is_set():
                    conn.execute("INSERT INTO clients (name) VALUES ('Behind its back')")
                    time.sleep(0.005)
        except psycopg.OperationalError:  # ended by the hold: back at once
            continue


def test_a_copy_that_differs_from_its_source_is_never_switched_to(
    setup: MoveSetup, pg_url: str, second_server: str
) -> None:
    studio = setup.studio("Busy Studio")
    source = with_database(pg_url, studio.database)
    stop = threading.Event()
    writer = threading.Thread(target=_write_past_the_hold, args=(source, stop))
    writer.start()
    try:
        differs = setup.run("tenants", "move", studio.slug, "--to", second_server)
    finally:
        stop.set()
        writer.join(30)
    assert differs.returncode == 3
    assert "the copy differs from the source: public.clients:" in differs.stderr
    assert setup.listed(studio.slug)["server"] == server_of(pg_url)
    api = Api(setup.server.address, studio.key)
    try:  # served where it was, writes included
        assert _retrying(lambda: api.client("After the mismatch")).id > 0
    finally:
        api.close()
    moved = setup.run("tenants", "move", studio.slug, "--to", second_server)
    assert moved.returncode == 0, moved.stderr
    with psycopg.connect(with_database(second_server, studio.database)) as conn:
        copied = conn.execute("SELECT count(*) FROM clients").fetchone()
    assert copied is not None
    assert copied[0] > 1


def test_an_aborted_move_gives_the_source_back_and_drops_the_copy(
    setup: MoveSetup, pg_url: str, second_server: str
) -> None:
    studio = setup.studio("Undecided Studio")
    rushed = setup.run("tenants", "move", studio.slug, "--to", second_server,
                       "--max-pause", "0.001")  # fmt: skip
    assert rushed.returncode == 3
    aborted = setup.run("tenants", "move", studio.slug, "--abort")
    assert aborted.returncode == 0, aborted.stderr
    assert setup.listed(studio.slug)["move"] is None
    assert not _exists(second_server, studio.database)
    assert _exists(pg_url, studio.database)


def test_the_copy_is_checked_table_by_table_and_by_its_history() -> None:
    source = Fingerprint({"public.sessions": 10, "public.rooms": 2}, "abc")
    assert differences(source, source) == []
    copy = Fingerprint({"public.sessions": 9, "public.clients": 1}, "abd")
    assert differences(source, copy) == [
        "public.clients: None rows in the source, 1 in the copy",
        "public.rooms: 2 rows in the source, None in the copy",
        "public.sessions: 10 rows in the source, 9 in the copy",
        "studio_migrate.history differs (its checksum)",
    ]


def test_the_tools_chosen_are_as_new_as_both_servers() -> None:
    assert tools_for(15, 18).major >= 18
    assert tools_for(15).major >= 15
