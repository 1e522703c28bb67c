"""SQLAlchemy async engines over psycopg 3, built from libpq connection strings: the master
database's (keys, the catalogue) and the operator commands'. Tenant databases are reached
through db/tenant_pools.py instead, on the call path."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["STATEMENT_TIMEOUT_MS", "create_engine_for"]


STATEMENT_TIMEOUT_MS = 30_000  # no statement of the service runs longer, whatever the caller


def create_engine_for(
    conninfo: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 0,
    pool_timeout: float = 30.0,
    autocommit: bool = False,
) -> AsyncEngine:
    """An engine whose connections come from `conninfo` (URL or key=value form). Each
    connection caps its statements at STATEMENT_TIMEOUT_MS, set once when it opens.

    `autocommit=True`: connections stay in autocommit for their whole life (no switch per
    checkout); a statement is its own transaction unless the caller sends BEGIN, after
    which commit() and rollback() end that transaction as usual (psycopg sends COMMIT or
    ROLLBACK whenever one is open, and the pool rolls back any left open on return)."""

    given = conninfo_to_dict(conninfo).get("options") or ""
    options = f"{given} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()

    async def connect() -> psycopg.AsyncConnection[tuple[Any, ...]]:
        return await psycopg.AsyncConnection.connect(conninfo, options=options)

    return create_async_engine(
        "postgresql+psycopg://",
        async_creator=connect,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=False,
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
