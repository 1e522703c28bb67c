"""A pool of psycopg connections to one tenant database, within the process's budget.

Why a pool of our own, in 150 lines: SQLAlchemy's asyncio pool costs about 110 us of CPU per
checkout and return (two greenlet spawns and its events), psycopg_pool about 25 us more than
this one, and psycopg_pool grows in background tasks of its own (four per pool: a thousand
studios, four thousand tasks), so a caller waiting for the process's budget could not be
told so. Here a connection is opened in the caller's task: waiting for the studio's own pool
ends in PoolExhausted, waiting for the process's budget in ConnectionBudgetExhausted (both
RESOURCE_EXHAUSTED, each with its reason). An idle pool holds no task.

A connection returned in a transaction is rolled back; one that is broken, was interrupted
mid-statement (a cancelled call), or is returned while other studios wait for a budget slot
is closed instead of kept, so its slot passes on. A broken one also closes the idle ones:
after a PostgreSQL restart they are all dead, and each would otherwise fail a call of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from db.connection_budget import ConnectionBudget
    from db.sql import Connection

__all__ = ["ConnectionPool", "PoolExhausted", "PoolTimeout", "Waits"]

_IN_TRANSACTION = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


@dataclass
class Waits:
    """Callers that waited for a connection and the seconds they waited, all together: plain
    numbers the event loop adds to, for the metrics (server/metrics.py) to read."""

    count: int = 0
    seconds: float = 0.0

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Count one wait and add its seconds, however it ends."""
        self.count += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds += time.monotonic() - started


class PoolTimeout(Exception):
    """No connection within the pool's timeout."""


class PoolExhausted(PoolTimeout):
    """Every connection of this database's pool stayed busy for the pool's timeout."""


class _BudgetedConnection(psycopg.AsyncConnection[Any]):
    """A connection that gives its budget slot back when it closes (or, if it never is,
    when it is garbage collected: a slot must never leak, or the process shrinks for good)."""

    _slot: weakref.finalize[Any, Any] | None = None

    def take_slot(self, budget: ConnectionBudget) -> None:
        self._slot = weakref.finalize(self, _give_back_from_gc, asyncio.get_running_loop(), budget)
        self._budget = budget

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self._slot is not None and self._slot.detach() is not None:
                self._budget.release()


def _give_back_from_gc(loop: asyncio.AbstractEventLoop, budget: ConnectionBudget) -> None:
    if not loop.is_closed():  # the collector may run in any thread
        loop.call_soon_threadsafe(budget.release)


class ConnectionPool:
    def __init__(
        self,
        conninfo: str,
        *,
        size: int,
        timeout: float,
        budget: ConnectionBudget,
        options: Mapping[str, Any],
        waits: Waits | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.size = size
        self.timeout = timeout
        self.budget = budget
        self.options = options  # psycopg connect() keyword arguments
        self.busy = 0  # checked out, or being opened for a caller
        self._open = 0  # connections open or being opened
        self._idle: deque[_BudgetedConnection] = deque()
        # Callers waiting for a connection; handed one, or None: "open one yourself".
        self._waiters: deque[asyncio.Future[_BudgetedConnection | None]] = deque()
        self._closed = False
        self.waits = waits if waits is not None else Waits()  # shared by a process's pools

    def connection(self) -> _Checkout:
        """`async with pool.connection() as conn`: a connection for the block."""
        return _Checkout(self)

    async def get(self) -> Connection:
        self.busy += 1
        try:
            if self._idle:
                return self._idle.pop()  # the most recently used: its cache is warm
            if self._open < self.size:
                return await self._new()
            return await self._wait()
        except BaseException:
            self.busy -= 1
            raise

    async def _new(self) -> _BudgetedConnection:
        self._open += 1
        try:
            await self.budget.acquire()
            try:
                conn = await _BudgetedConnection.connect(
                    self.conninfo, autocommit=True, row_factory=dict_row, **self.options
                )
            except BaseException:
                self.budget.release()
                raise
        except BaseException:
            self._open -= 1
            self._pass_on(None)  # our place is free again: a waiter may open one
            raise
        conn.take_slot(self.budget)
        return conn

    async def _wait(self) -> _BudgetedConnection:
        waiter: asyncio.Future[_BudgetedConnection | None]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                with self.waits.timed():
                    conn = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():  # handed something as we gave up
                self._pass_on(waiter.result())
            else:
                waiter.cancel()  # _pass_on skips it
            if isinstance(exc, TimeoutError):
                raise PoolExhausted(
                    f"all {self.size} connections of this studio's pool stayed busy for "
                    f"{self.timeout:g} s"
                ) from None
            raise
        return conn if conn is not None else await self._new()

    def _pass_on(self, conn: _BudgetedConnection | None) -> bool:
        """Hand `conn` (or a free place, None) to the first waiter; False if none waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    async def put(self, conn: Connection) -> None:
        assert isinstance(conn, _BudgetedConnection)
        self.busy -= 1
        status = conn.pgconn.transaction_status
        if status in _IN_TRANSACTION:
            with contextlib.suppress(psycopg.Error):  # broken: closed below
                await conn.rollback()
            status = conn.pgconn.transaction_status
        if status != TransactionStatus.IDLE or conn.closed:
            if conn.broken or conn.closed:
                await self._close_idle()
            await self._discard(conn)
        elif self._closed or self.budget.waiting:
            await self._discard(conn)  # its budget slot goes to whoever waits for one
        elif not self._pass_on(conn):
            self._idle.append(conn)

    async def _discard(self, conn: _BudgetedConnection) -> None:
        self._open -= 1
        try:
            await conn.close()
        finally:
            self._pass_on(None)

    async def _close_idle(self) -> None:
        while self._idle:
            await self._discard(self._idle.pop())

    async def close(self) -> None:
        """Close the idle connections now, and every other one when it is returned."""
        self._closed = True
        await self._close_idle()


class _Checkout:
    __slots__ = ("conn", "pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    async def __aenter__(self) -> Connection:
        self.conn = await self.pool.get()
        return self.conn

    async def __aexit__(self, *_exc: object) -> None:
        await self.pool.put(self.conn)
