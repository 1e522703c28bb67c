"""The failed-authentication throttle and the batched key lookups, without I/O."""

from __future__ import annotations

import asyncio

import pytest

from db.api_keys import KeyRecord
from db.tenant_catalog import TenantLocation
from server import auth_throttle
from server.auth import BatchedLookup
from server.auth_throttle import FailedAuthThrottle, peer_host


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: Clock, *, per_second: float = 2.0, burst: int = 3) -> FailedAuthThrottle:
    return FailedAuthThrottle(per_second=per_second, burst=burst, clock=clock)


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:5555", "ipv4:127.0.0.1"),
        ("ipv6:[::1]:40000", "ipv6:[::1]"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
        ("unix:", "unix:"),
    ],
)
def test_the_peer_is_its_host_without_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_a_burst_of_failures_is_allowed_then_the_peer_is_throttled() -> None:
    clock = Clock()
    throttle = _throttle(clock)
    for _ in range(3):
        assert not throttle.throttled("a")
        throttle.failed("a")
    assert throttle.throttled("a")
    assert not throttle.throttled("b")  # other addresses are untouched


def test_tokens_come_back_at_the_rate_and_the_refusal_says_when() -> None:
    clock = Clock()
    throttle = _throttle(clock, per_second=2.0)
    for _ in range(3):
        throttle.failed("a")
    refusal = throttle.refusal("a")
    assert refusal.reason == "TOO_MANY_FAILED_AUTHENTICATIONS"
    assert refusal.metadata == {"retryAfterSeconds": "0.5"}  # one token at 2 a second
    clock.now += 0.25
    assert throttle.throttled("a")
    assert throttle.refusal("a").metadata == {"retryAfterSeconds": "0.2"}
    clock.now += 0.25
    assert not throttle.throttled("a")  # one more failure allowed
    throttle.failed("a")
    assert throttle.throttled("a")
    clock.now += 100
    assert not throttle.throttled("a")  # refilled, but never past the burst:
    for _ in range(3):
        throttle.failed("a")
    assert throttle.throttled("a")


def test_forgetting_peers_forgets_the_oldest_failure_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth_throttle, "MAX_TRACKED_PEERS", 3)
    clock = Clock()
    throttle = _throttle(clock, burst=1)
    for peer in ("old", "guesser", "other"):
        throttle.failed(peer)
    throttle.failed("guesser")  # fails again: now the most recent
    throttle.failed("new")  # one too many tracked: "old" is forgotten, not everyone
    assert [p for p in ("old", "guesser", "other", "new") if throttle.throttled(p)] == [
        "guesser",
        "other",
        "new",
    ]


def _record(slug: str) -> KeyRecord:
    return KeyRecord(b"x" * 32, "admin", False, True, TenantLocation(1, slug, None, slug))


async def test_lookups_asked_for_together_cost_one_query() -> None:
    queries: list[list[str]] = []

    async def query(prefixes: list[str]) -> dict[str, KeyRecord]:
        queries.append(sorted(prefixes))
        return {"real": _record("real")}

    lookup = BatchedLookup(query, interval=0.05)
    asked = ["real", *(f"guess{i}" for i in range(200)), "real"]
    found = await asyncio.gather(*(lookup.find(prefix) for prefix in asked))
    assert found[0] == found[-1] == _record("real")
    assert found[1:-1] == [None] * 200
    assert queries == [sorted(set(asked))]


async def test_batched_lookups_are_spaced_by_the_interval_and_share_failures() -> None:
    loop = asyncio.get_running_loop()
    started: list[float] = []

    async def query(prefixes: list[str]) -> dict[str, KeyRecord]:
        started.append(loop.time())
        if "broken" in prefixes:
            raise OSError("master unreachable")
        return {}

    lookup = BatchedLookup(query, interval=0.2)
    assert await lookup.find("first") is None
    assert await lookup.find("second") is None  # waits for the interval since the first
    assert started[1] - started[0] >= 0.19
    results = await asyncio.gather(
        lookup.find("broken"), lookup.find("too"), return_exceptions=True
    )
    assert all(isinstance(r, OSError) for r in results)
    assert len(started) == 3


async def test_a_cancelled_caller_does_not_cancel_the_lookup_of_the_others() -> None:
    release = asyncio.Event()

    async def query(prefixes: list[str]) -> dict[str, KeyRecord]:
        await release.wait()
        return {p: _record(p) for p in prefixes}

    lookup = BatchedLookup(query, interval=0.0)
    impatient = asyncio.create_task(lookup.find("shared"))
    patient = asyncio.create_task(lookup.find("shared"))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    assert await patient == _record("shared")
    with pytest.raises(asyncio.CancelledError):
        await impatient
