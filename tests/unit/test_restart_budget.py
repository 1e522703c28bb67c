"""The --workers supervisor's restart budget: a few crashes are repaired, a crash loop ends."""

from __future__ import annotations

from server.cli._workers import RestartBudget


def test_restarts_within_the_budget_are_allowed_and_one_more_is_not() -> None:
    budget = RestartBudget(allowed=3, window=60.0)
    assert [budget.take(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert budget.take(3.0) is False


def test_restarts_older_than_the_window_no_longer_count() -> None:
    budget = RestartBudget(allowed=2, window=10.0)
    assert budget.take(0.0)
    assert budget.take(5.0)
    assert budget.take(10.5)  # the one at 0.0 has left the window
    assert not budget.take(11.0)  # 5.0 and 10.5 are still in it
    assert budget.take(100.0)
