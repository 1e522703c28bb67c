"""One bounded connection pool per tenant database, made on first use and closed when idle,
all within one budget of connections for the process.

The original leaked a pool per tenant. Here each tenant gets at most `pool_size` connections,
the pool is created once (creating it does no I/O, so concurrent first calls cannot race),
and `close_idle` closes the pools of tenants that have not been used for `idle_seconds`.
Every connection any tenant pool opens takes a slot of one ConnectionBudget of
`max_connections` first (db/connection_budget.py), so the process never holds more, however
many tenants are busy at once. When the budget is full, a connection returned to its pool is
closed rather than kept idle, and the least recently used pools with nothing checked out are
closed, each freeing its slots for whoever waits; a call that gets no slot within
`pool_timeout` fails with ConnectionBudgetExhausted, one that finds its studio's connections
all busy for as long with PoolExhausted (both RESOURCE_EXHAUSTED).

Connections are psycopg's, in autocommit, with dict rows (db/sql.py runs the statements on
them); each caps its statements at STATEMENT_TIMEOUT_MS, set once when it opens. A tenant
served through a pooler (its catalogue entry's pooled_url: PgBouncer in transaction mode)
gets connections that carry no session state: no `options` startup parameter (PgBouncer
refuses it), the cap coming from the tenant role's own default instead (ALTER ROLE ... SET,
db/tenant_roles.py: no round trip per call), and no prepared statements (PgBouncer 1.18
would hand a statement prepared on one server connection to a call on another).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.conninfo import conninfo_to_dict

from db.connection_budget import ConnectionBudget
from db.connection_pool import ConnectionPool, Waits
from db.engines import STATEMENT_TIMEOUT_MS
from db.tenant_catalog import TenantLocation, service_conninfo

if TYPE_CHECKING:
    from db.connection_pool import _Checkout

__all__ = ["TenantPools"]


@dataclass
class _Entry:
    pool: ConnectionPool
    last_used: float


class TenantPools:
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
        self._entries: dict[tuple[str | None, str, str | None, str | None], _Entry] = {}
        self._evicting: asyncio.Task[None] | None = None
        self.pool_waits = Waits()  # callers that found their studio's pool all busy

    def connect(self, tenant: TenantLocation) -> _Checkout:
        """A connection to the tenant's database, checked out of its pool on `async with`.
        Enter it at once: the pool counts it as busy (so it is not closed under the
        caller) from then on."""
        # The role too: a tenant converted to its own role gets a pool that logs in as it;
        # and the pooler: one put behind (or taken from behind) PgBouncer gets a new pool.
        key = (tenant.server_url, tenant.database_name, tenant.role_name, tenant.pooled_url)
        entry = self._entries.pop(key, None)
        now = time.monotonic()
        if entry is None:
            entry = _Entry(self._new_pool(tenant), now)
        entry.last_used = now
        self._entries[key] = entry
        return entry.pool.connection()

    def _new_pool(self, tenant: TenantLocation) -> ConnectionPool:
        conninfo = service_conninfo(self.master_url, tenant)
        return ConnectionPool(
            conninfo,
            size=self.pool_size,
            timeout=self.pool_timeout,
            budget=self.budget,
            options=_connect_options(conninfo, pooled=tenant.pooled_url is not None),
            waits=self.pool_waits,
        )

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
            if self._entries.get(key) is not entry or entry.pool.busy:
                continue
            del self._entries[key]
            await entry.pool.close()

    def __len__(self) -> int:
        return len(self._entries)

    def in_use(self) -> int:
        """Connections checked out (or being opened for a caller), all studios together. A
        pool's `busy` counts its waiters too, who wait only when all `size` are taken."""
        return sum(min(entry.pool.busy, entry.pool.size) for entry in self._entries.values())

    async def close_idle(self) -> int:
        """Close the pools of tenants idle for longer than idle_seconds; how many."""
        cutoff = time.monotonic() - self.idle_seconds
        idle = [key for key, entry in self._entries.items() if entry.last_used < cutoff]
        closed = 0
        for key in idle:
            entry = self._entries.pop(key, None)  # eviction may have taken it meanwhile
            if entry is not None:
                await entry.pool.close()
                closed += 1
        return closed

    async def close_all(self) -> None:
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.pool.close()


def _connect_options(conninfo: str, *, pooled: bool) -> dict[str, Any]:
    """psycopg connect() arguments: straight to PostgreSQL, the statement cap as a startup
    option and prepared statements after a few uses; through a pooler, neither."""
    if pooled:
        return {"prepare_threshold": None}
    given = conninfo_to_dict(conninfo).get("options") or ""
    return {"options": f"{given} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()}
