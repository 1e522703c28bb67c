"""One bounded connection pool per tenant database, made on first use and closed when idle.

The original leaked a pool per tenant. Here each tenant gets at most `pool_size` connections,
the engine is created once (creating it does no I/O, so concurrent first calls cannot race),
`close_idle` disposes the engines of tenants that have not been used for `idle_seconds`, and
when a new tenant's pool would take the process over `max_connections`, the least recently
used idle pools are closed first, so one process never holds more than about that many.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from db.engines import create_engine_for
from db.tenant_catalog import TenantLocation, tenant_conninfo

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["TenantEngines"]


def _pooled(engine: AsyncEngine) -> int:
    pool = engine.sync_engine.pool
    return int(pool.checkedin() + pool.checkedout())  # type: ignore[attr-defined]


@dataclass
class _Entry:
    engine: AsyncEngine
    last_used: float


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
        self.max_connections = max_connections
        self._entries: dict[tuple[str | None, str, str | None], _Entry] = {}
        self._evicting: asyncio.Task[None] | None = None

    def get(self, tenant: TenantLocation) -> AsyncEngine:
        # The role too: a tenant converted to its own role gets a pool that logs in as it.
        key = (tenant.server_url, tenant.database_name, tenant.role_name)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None:
            engine = create_engine_for(
                tenant_conninfo(self.master_url, tenant),
                pool_size=self.pool_size,
                pool_timeout=self.pool_timeout,
                autocommit=True,  # the pipeline sends BEGIN for calls that need a transaction
            )
            entry = self._entries[key] = _Entry(engine, now)
            busy = self._evicting is not None and not self._evicting.done()
            if not busy and self.open_connections() + self.pool_size > self.max_connections:
                self._evicting = asyncio.get_running_loop().create_task(self._evict(key))
        entry.last_used = now
        return entry.engine

    def open_connections(self) -> int:
        """Connections this process holds to tenant databases, in use or idle in a pool."""
        return sum(_pooled(e.engine) for e in self._entries.values())

    async def _evict(self, keep: tuple[str | None, str, str | None]) -> None:
        """Close least recently used pools with nothing checked out, to make room."""
        open_now = self.open_connections()  # counted once, then kept up to date as we close
        for key, entry in sorted(self._entries.items(), key=lambda item: item[1].last_used):
            if open_now + self.pool_size <= self.max_connections:
                return
            busy = entry.engine.sync_engine.pool.checkedout() > 0  # type: ignore[attr-defined]
            # (close_idle may have taken it meanwhile: we await between pools)
            if key == keep or busy or key not in self._entries:
                continue
            del self._entries[key]
            open_now -= _pooled(entry.engine)
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
