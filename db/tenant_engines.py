"""One bounded connection pool per tenant database, made on first use and closed when idle,
all within one budget of connections for the process.

The original leaked a pool per tenant. Here each tenant gets at most `pool_size` connections,
the engine is created once (creating it does no I/O, so concurrent first calls cannot race),
and `close_idle` disposes the engines of tenants that have not been used for `idle_seconds`.
Every connection any tenant pool opens takes a slot of one ConnectionBudget of
`max_connections` first (db/connection_budget.py), so the process never holds more, however
many tenants are busy at once. When the budget is full, a connection returned to its pool is
closed rather than kept idle, and the least recently used pools with nothing checked out are
closed, each freeing its slots for whoever waits; a call that gets no slot within
`pool_timeout` fails with ConnectionBudgetExhausted (a pool timeout: RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from db.connection_budget import ConnectionBudget
from db.engines import create_engine_for
from db.tenant_catalog import TenantLocation, tenant_conninfo

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["TenantEngines"]


@dataclass
class _Entry:
    engine: AsyncEngine
    last_used: float


def _checked_out(engine: AsyncEngine) -> int:
    return int(engine.sync_engine.pool.checkedout())  # type: ignore[attr-defined]


class TenantEngines:
    def __init__(
        self,
        master_url: str,
        *,
        pool_size: int = 5,
        pool_timeout: float = 5.0,
        idle_seconds: float = 300.0,
        max_connections: int = 200,
    ) -> None:
        self.master_url = master_url
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        self.idle_seconds = idle_seconds
        self.budget = ConnectionBudget(max_connections, wait=pool_timeout, on_full=self._make_room)
        # Least recently used first: `connect` moves a tenant to the end.
        self._entries: dict[tuple[str | None, str, str | None], _Entry] = {}
        self._evicting: asyncio.Task[None] | None = None

    def connect(self, tenant: TenantLocation) -> AsyncConnection:
        """A connection to the tenant's database, checked out of its pool on `async with`.
        Enter it at once: the pool counts it as busy (so it is not closed under the
        caller) from then on."""
        # The role too: a tenant converted to its own role gets a pool that logs in as it.
        key = (tenant.server_url, tenant.database_name, tenant.role_name)
        entry = self._entries.pop(key, None)
        now = time.monotonic()
        if entry is None:
            engine = create_engine_for(
                tenant_conninfo(self.master_url, tenant),
                pool_size=self.pool_size,
                pool_timeout=self.pool_timeout,
                autocommit=True,  # the pipeline sends BEGIN for calls that need a transaction
                budget=self.budget,
            )
            entry = _Entry(engine, now)
        entry.last_used = now
        self._entries[key] = entry
        return entry.engine.connect()

    def _make_room(self) -> None:
        if self._evicting is None or self._evicting.done():
            self._evicting = asyncio.get_running_loop().create_task(self._evict())

    async def _evict(self) -> None:
        """Close the least recently used pools that have nothing checked out, while callers
        wait for a slot; closing a pool's connections hands their slots to those callers."""
        for key, entry in list(self._entries.items()):
            if not self.budget.waiting:
                return
            # (close_idle or `connect` may have taken it meanwhile: we await between pools)
            if self._entries.get(key) is not entry or _checked_out(entry.engine):
                continue
            del self._entries[key]
            await entry.engine.dispose()

    def __len__(self) -> int:
        return len(self._entries)

    async def close_idle(self) -> int:
        """Dispose the pools of tenants idle for longer than idle_seconds; how many."""
        cutoff = time.monotonic() - self.idle_seconds
        idle = [key for key, entry in self._entries.items() if entry.last_used < cutoff]
        closed = 0
        for key in idle:
            entry = self._entries.pop(key, None)  # eviction may have taken it meanwhile
            if entry is not None:
                await entry.engine.dispose()
                closed += 1
        return closed

    async def close_all(self) -> None:
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.engine.dispose()
