"""One bounded connection pool per tenant database, made on first use and closed when idle.

The original leaked a pool per tenant. Here each tenant gets at most `pool_size` connections,
the engine is created once (creating it does no I/O, so concurrent first calls cannot race),
and `close_idle` disposes the engines of tenants that have not been used for `idle_seconds`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from db.engines import create_engine_for
from db.tenant_catalog import TenantLocation, tenant_conninfo

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["TenantEngines"]


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
    ) -> None:
        self.master_url = master_url
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        self.idle_seconds = idle_seconds
        self._entries: dict[tuple[str | None, str], _Entry] = {}

    def get(self, tenant: TenantLocation) -> AsyncEngine:
        key = (tenant.server_url, tenant.database_name)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None:
            engine = create_engine_for(
                tenant_conninfo(self.master_url, tenant),
                pool_size=self.pool_size,
                pool_timeout=self.pool_timeout,
            )
            entry = self._entries[key] = _Entry(engine, now)
        entry.last_used = now
        return entry.engine

    def __len__(self) -> int:
        return len(self._entries)

    async def close_idle(self) -> int:
        """Dispose the pools of tenants idle for longer than idle_seconds; how many."""
        cutoff = time.monotonic() - self.idle_seconds
        idle = [key for key, entry in self._entries.items() if entry.last_used < cutoff]
        for key in idle:
            await self._entries.pop(key).engine.dispose()
        return len(idle)

    async def close_all(self) -> None:
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.engine.dispose()
