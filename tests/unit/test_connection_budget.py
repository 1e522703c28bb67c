"""The process-wide connection budget, without a database."""

from __future__ import annotations

import asyncio

import pytest

from db.connection_budget import ConnectionBudget, ConnectionBudgetExhausted
from db.connection_pool import PoolTimeout


async def test_slots_are_taken_up_to_the_limit_then_openers_wait_and_the_pools_are_told() -> None:
    told: list[int] = []
    budget = ConnectionBudget(2, wait=5, on_full=lambda: told.append(1))
    await budget.acquire()
    await budget.acquire()
    assert (budget.open, told) == (2, [])
    third = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    assert (budget.waiting, told) == (1, [1])
    budget.release()  # handed straight to the waiter
    await third
    assert (budget.open, budget.waiting) == (2, 0)
    budget.release()
    budget.release()
    assert budget.open == 0


async def test_no_slot_in_time_is_a_pool_timeout() -> None:
    budget = ConnectionBudget(1, wait=0.05)
    await budget.acquire()
    with pytest.raises(ConnectionBudgetExhausted) as raised:
        await budget.acquire()
    assert isinstance(raised.value, PoolTimeout)  # a pool timeout, as far as callers can tell
    assert (budget.open, budget.waiting) == (1, 0)
    budget.release()
    await budget.acquire()  # the slot that came back is free again


async def test_a_waiter_that_gives_up_never_keeps_a_slot() -> None:
    budget = ConnectionBudget(1, wait=5)
    await budget.acquire()
    gone = asyncio.create_task(budget.acquire())
    stays = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    budget.release()  # skips the cancelled waiter
    await stays
    assert (budget.open, budget.waiting) == (1, 0)


async def test_a_slot_handed_over_as_its_waiter_is_cancelled_passes_on() -> None:
    budget = ConnectionBudget(1, wait=5)
    await budget.acquire()
    unlucky = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    budget.release()  # handed to `unlucky`, which is cancelled before it runs
    unlucky.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    assert (budget.open, budget.waiting) == (0, 0)
