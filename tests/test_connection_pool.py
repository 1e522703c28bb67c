"""The tenant connection pool against a real PostgreSQL: what it hands out is always usable,
and every connection it opens comes back to the budget, whatever happened to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from db.connection_budget import ConnectionBudget, ConnectionBudgetExhausted
from db.connection_pool import ConnectionPool, PoolExhausted

SIZE = 2


@pytest.fixture
async def budget() -> ConnectionBudget:
    return ConnectionBudget(SIZE, wait=0.2)


@pytest.fixture
async def pool(fresh_db: str, budget: ConnectionBudget) -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(fresh_db, size=SIZE, timeout=0.2, budget=budget, options={})
    try:
        yield pool
    finally:
        await pool.close()


async def _backend(pool: ConnectionPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
        assert row is not None
        return int(row["pid"])


async def test_a_connection_comes_back_and_is_reused(pool: ConnectionPool) -> None:
    first = await _backend(pool)
    assert await _backend(pool) == first
    assert pool.busy == 0


async def test_a_transaction_left_open_is_rolled_back_on_return(
    pool: ConnectionPool, fresh_db: str
) -> None:
    async with pool.connection() as conn:
        await conn.execute("BEGIN")
        await conn.execute("CREATE TABLE left_open (id int)")
    async with pool.connection() as conn:  # the same connection, usable, nothing committed
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
        row = await (await conn.execute("SELECT to_regclass('left_open') AS t")).fetchone()
        assert row == {"t": None}


async def test_a_killed_backend_costs_one_call_and_takes_the_idle_ones_along(
    pool: ConnectionPool, fresh_db: str, budget: ConnectionBudget
) -> None:
    async with pool.connection() as a, pool.connection() as b:  # two idle ones afterwards
        pids = [await _pid(a), await _pid(b)]
    with psycopg.connect(fresh_db, autocommit=True) as admin:  # as a PostgreSQL restart would
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    with pytest.raises(psycopg.errors.AdminShutdown):  # UNAVAILABLE, to a caller
        await _backend(pool)
    assert await _backend(pool) not in pids  # the other dead one was closed too
    assert budget.open == 1


async def test_every_connection_busy_past_the_timeout_is_pool_exhausted(
    pool: ConnectionPool,
) -> None:
    async with pool.connection(), pool.connection():
        with pytest.raises(PoolExhausted):
            await _backend(pool)
    assert pool.busy == 0
    await _backend(pool)  # and the pool serves again


async def _pid(conn: psycopg.AsyncConnection[dict[str, int]]) -> int:
    row = await (await conn.execute("SELECT pg_backend_pid() AS p")).fetchone()
    assert row is not None
    return row["p"]


async def test_a_waiter_is_handed_a_returned_connection(
    pool: ConnectionPool, budget: ConnectionBudget
) -> None:
    async with pool.connection() as a, pool.connection() as b:
        pids = {await _pid(a), await _pid(b)}
        waiting = asyncio.create_task(_backend(pool))
        await asyncio.sleep(0)  # it runs up to its wait: the pool is at its size
        assert not waiting.done()
    assert await waiting in pids  # handed one of those, no third connection opened
    assert budget.open == SIZE
    assert pool.busy == 0


def _sleeping(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
            " AND state = 'active'"
        ).fetchone()
    return bool(row and row[0])


async def test_a_cancelled_statement_stops_in_postgresql_and_loses_no_slot(
    pool: ConnectionPool, budget: ConnectionBudget, fresh_db: str
) -> None:
    async def long() -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(long())
    deadline = asyncio.get_running_loop().time() + 10
    while not _sleeping(fresh_db):  # until PostgreSQL runs it
        assert asyncio.get_running_loop().time() < deadline, "the statement never started"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.busy == 0
    assert not _sleeping(fresh_db)  # cancelled in PostgreSQL too
    assert budget.open <= 1  # kept (psycopg left it usable) or closed: never leaked
    await _backend(pool)
    assert budget.open == 1


async def test_the_budget_bounds_pools_together(fresh_db: str, budget: ConnectionBudget) -> None:
    one = ConnectionPool(fresh_db, size=SIZE, timeout=1, budget=budget, options={})
    two = ConnectionPool(fresh_db, size=SIZE, timeout=1, budget=budget, options={})
    try:
        async with one.connection(), one.connection():
            with pytest.raises(ConnectionBudgetExhausted):
                await _backend(two)
        assert two.busy == 0
        await one.close()  # its connections go, and their slots
        await _backend(two)
    finally:
        await one.close()
        await two.close()
