"""A process-wide cap on open database connections, shared by many pools.

Every connection a budgeted pool opens takes a slot first and gives it back when it closes;
a pool that hands out a connection it already has takes nothing. When no slot is free, the
opener waits (up to `wait` seconds, then ConnectionBudgetExhausted) and `on_full` is told, so that
idle connections elsewhere can be closed to make room. A slot given back while someone waits
passes straight to the first waiter. All of it is O(1) and in memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from db.connection_pool import PoolTimeout, Waits

__all__ = ["ConnectionBudget", "ConnectionBudgetExhausted"]


class ConnectionBudgetExhausted(PoolTimeout):
    """No connection slot came free in time (a pool timeout, as far as callers can tell)."""


class ConnectionBudget:
    def __init__(
        self, limit: int, *, wait: float, on_full: Callable[[], None] = lambda: None
    ) -> None:
        self.limit = limit
        self.wait = wait  # seconds an opener waits for a slot
        self.on_full = on_full
        self.open = 0  # slots taken: connections open, or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._waiting = 0  # waiters that have not given up
        self.waits = Waits()  # openers that waited for a slot, for the metrics

    @property
    def waiting(self) -> int:
        """Openers waiting for a slot: a connection given back now is better closed."""
        return self._waiting

    async def acquire(self) -> None:
        if self.open < self.limit and not self._waiting:
            self.open += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._waiting += 1
        self.on_full()
        try:
            async with asyncio.timeout(self.wait):
                with self.waits.timed():
                    await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as we gave up: pass it on
            else:
                waiter.cancel()  # release() skips it
                self._waiting -= 1
            if isinstance(exc, TimeoutError):
                raise ConnectionBudgetExhausted(
                    f"no database connection free within {self.wait:g} s: this process holds "
                    f"its limit of {self.limit}"
                ) from None
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: `open` is unchanged
                self._waiting -= 1
                return
        self.open -= 1
