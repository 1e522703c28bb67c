"""SQLAlchemy async engines over psycopg 3, built from libpq connection strings."""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from sqlalchemy.pool import ConnectionPoolEntry

    from db.connection_budget import ConnectionBudget

__all__ = ["create_engine_for"]


STATEMENT_TIMEOUT_MS = 30_000  # no statement of the service runs longer, whatever the caller


class _BudgetedConnection(psycopg.AsyncConnection[tuple[Any, ...]]):
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


def create_engine_for(
    conninfo: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 0,
    pool_timeout: float = 30.0,
    autocommit: bool = False,
    budget: ConnectionBudget | None = None,
) -> AsyncEngine:
    """An engine whose connections come from `conninfo` (URL or key=value form). Each
    connection caps its statements at STATEMENT_TIMEOUT_MS, set once when it opens.

    `autocommit=True`: connections stay in autocommit for their whole life (no switch per
    checkout); a statement is its own transaction unless the caller sends BEGIN, after
    which commit() and rollback() end that transaction as usual (psycopg sends COMMIT or
    ROLLBACK whenever one is open, and the pool rolls back any left open on return).

    `budget`: each connection the pool opens takes a slot of it first (or waits for one),
    and gives it back when it closes. A connection returned to the pool
    while others wait for a slot is closed instead of kept idle, so the slot passes on."""

    given = conninfo_to_dict(conninfo).get("options") or ""
    options = f"{given} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()

    async def connect() -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if budget is None:
            return await psycopg.AsyncConnection.connect(conninfo, options=options)
        await budget.acquire()
        try:
            conn = await _BudgetedConnection.connect(conninfo, options=options)
        except BaseException:
            budget.release()
            raise
        conn.take_slot(budget)
        return conn

    engine = create_async_engine(
        "postgresql+psycopg://",
        async_creator=connect,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=False,
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    if budget is not None:

        def hand_over(dbapi_connection: object, record: ConnectionPoolEntry) -> None:
            # Returned (always inside SQLAlchemy's greenlet: we only use the async API).
            if budget.waiting and dbapi_connection is not None:
                record.invalidate()  # closes it, and its slot goes to the first waiter

        # The pool's listeners carry over to the pool that replaces it on dispose().
        event.listen(engine.sync_engine, "checkin", hand_over)
    return engine
