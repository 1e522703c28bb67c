"""Limits failed authentications per client address, so keys cannot be guessed at line rate.

A token bucket per peer address: each failed authentication takes a token; tokens come back at
`per_second`. A peer with no token left is *throttled*: its failures are answered
RESOURCE_EXHAUSTED (`refusal`) instead of UNAUTHENTICATED, and cost no token. Throttling never
refuses a valid key: behind a load balancer every caller has the same address, and one
guesser must not lock the others out (the pipeline still verifies a throttled peer's keys).
Successful calls cost nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from server.errors import ResourceExhausted

__all__ = ["FailedAuthThrottle", "peer_host"]

MAX_TRACKED_PEERS = 100_000


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> 'ipv4:127.0.0.1' (the port changes per connection)."""
    host, _, port = peer.rpartition(":")
    return host if port.isdigit() and host else peer


class FailedAuthThrottle:
    def __init__(
        self,
        *,
        per_second: float = 5.0,
        burst: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        # peer -> (tokens, at); in order of last failure, oldest first
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, peer: str, now: float) -> float:
        tokens, at = self._buckets.get(peer, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.per_second)

    def throttled(self, peer: str) -> bool:
        """The peer has used up its failures (one dict lookup for a peer that never failed)."""
        return peer in self._buckets and self._tokens(peer, self._clock()) < 1

    def refusal(self, peer: str) -> ResourceExhausted:
        """What a throttled peer's failed authentication gets: when to try again."""
        wait = (1 - self._tokens(peer, self._clock())) / self.per_second
        return ResourceExhausted(
            "TOO_MANY_FAILED_AUTHENTICATIONS",
            "too many failed authentications from this address; slow down",
            metadata={"retryAfterSeconds": f"{max(wait, 0.1):.1f}"},
        )

    def failed(self, peer: str) -> None:
        now = self._clock()
        tokens = self._tokens(peer, now) - 1
        # Re-inserted at the end: the first entry is the peer whose last failure is oldest,
        # the one to forget when too many are tracked (its bucket is the most refilled).
        # Forgetting everyone at once would hand every guesser a fresh burst.
        self._buckets.pop(peer, None)
        if len(self._buckets) >= MAX_TRACKED_PEERS:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[peer] = (tokens, now)
