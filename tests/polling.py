"""Waiting for a condition with a bound, instead of sleeping a fixed time and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], *, timeout: float, what: str) -> None:
    """Return as soon as `condition()` is true; fail the test if it is not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.02)
