"""Limits failed authentications per client address, so keys cannot be guessed at line rate.

A token bucket per peer address: each failed authentication takes a token; tokens come back at
`per_second`. A peer with no token left gets RESOURCE_EXHAUSTED before its key is even looked
at, until the bucket refills. Successful calls cost nothing.
"""

from __future__ import annotations

import time

from server.errors import ResourceExhausted

__all__ = ["FailedAuthThrottle", "peer_host"]

MAX_TRACKED_PEERS = 100_000


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> 'ipv4:127.0.0.1' (the port changes per connection)."""
    host, _, port = peer.rpartition(":")
    return host if port.isdigit() and host else peer


class FailedAuthThrottle:
    def __init__(self, *, per_second: float = 5.0, burst: int = 50) -> None:
        self.per_second = per_second
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, at)

    def _tokens(self, peer: str, now: float) -> float:
        tokens, at = self._buckets.get(peer, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.per_second)

    def check(self, peer: str) -> None:
        """Refuse a peer that has used up its failures."""
        if peer in self._buckets and self._tokens(peer, time.monotonic()) < 1:
            raise ResourceExhausted(
                "TOO_MANY_FAILED_AUTHENTICATIONS",
                "too many failed authentications from this address; slow down",
                metadata={"retryAfterSeconds": f"{1 / self.per_second:.1f}"},
            )

    def failed(self, peer: str) -> None:
        now = time.monotonic()
        if len(self._buckets) >= MAX_TRACKED_PEERS:
            self._buckets.clear()
        self._buckets[peer] = (self._tokens(peer, now) - 1, now)
