"""The `serve --workers N` supervisor: N single-process servers on one port, each restarted
if it dies, within a budget, so that a crash loop ends in a non-zero exit an orchestrator sees.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence

__all__ = ["RestartBudget", "supervise"]

log = logging.getLogger("studio.serve")
READY = b"serving gRPC on"
START_TIMEOUT_SECONDS = 120.0
RESTARTS_ALLOWED = 5  # within RESTART_WINDOW_SECONDS; one more and the supervisor gives up
RESTART_WINDOW_SECONDS = 60.0
PR_SET_PDEATHSIG = 1


def _worker_signals() -> None:
    """In the worker, before exec: a SIGTERM when the supervisor dies, kill -9 included, so
    that no worker outlives it holding the port. A terminal's SIGINT and SIGHUP reach the
    whole process group: they are the supervisor's to act on (it stops the workers), not
    a worker's exit for the supervisor to replace."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class _Workers:
    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        self.command = command
        self.env = env
        self.running: list[asyncio.subprocess.Process] = []

    async def start_one(self) -> bool:
        """Start a worker and wait until it listens; False if it did not."""
        worker = await asyncio.create_subprocess_exec(
            *self.command, env=self.env, stdout=asyncio.subprocess.PIPE,
            preexec_fn=_worker_signals,
        )  # fmt: skip
        self.running.append(worker)
        assert worker.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                # "serving HTTP on" comes first; "serving gRPC on" once it serves both.
                while line := await worker.stdout.readline():
                    if line.startswith(READY):
                        return True
        except TimeoutError:
            pass
        return False

    async def stop_all(self) -> list[int]:
        for worker in self.running:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        return [await worker.wait() for worker in self.running]


async def supervise(
    command: Sequence[str],
    env: dict[str, str],
    count: int,
    stop: asyncio.Event,
    on_ready: Callable[[], None],
    *,
    on_exit: Callable[[int], None] | None = None,
) -> bool:
    """Run `count` workers until `stop` is set; True if all ended cleanly, False if one could
    not start or they kept crashing. `on_exit` is told the pid of each worker that ended."""
    workers = _Workers(command, env)
    failed = False
    for _ in range(count):
        if not await workers.start_one():
            log.error("a worker did not start; stopping")
            failed = True
            break
    if not failed:
        on_ready()
        failed = await _keep_running(workers, stop, on_exit or _ignore)
    codes = await workers.stop_all()
    return not failed and all(code == 0 for code in codes)


def _ignore(_pid: int) -> None:
    pass


class RestartBudget:
    """At most `allowed` restarts within any `window` seconds: past that, a worker that keeps
    dying is a crash loop, and restarting it again would only hide it."""

    def __init__(
        self, allowed: int = RESTARTS_ALLOWED, window: float = RESTART_WINDOW_SECONDS
    ) -> None:
        self.allowed = allowed
        self.window = window
        self._times: deque[float] = deque()

    def take(self, now: float) -> bool:
        """Record a restart at `now`; False if it would exceed the budget."""
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        if len(self._times) >= self.allowed:
            return False
        self._times.append(now)
        return True


async def _keep_running(
    workers: _Workers, stop: asyncio.Event, on_exit: Callable[[int], None]
) -> bool:
    """Replace workers that exit until `stop` is set; True if they died too often."""
    budget = RestartBudget()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            exits = {asyncio.ensure_future(w.wait()): w for w in workers.running}
            done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
            for waiter in exits:
                waiter.cancel()
            if stopping in done or stop.is_set():
                return False
            for waiter in done:
                dead = exits[waiter]
                workers.running.remove(dead)
                on_exit(dead.pid)
                if not budget.take(time.monotonic()):
                    log.error(
                        "worker pid %d exited (code %s); %d restarts within %.0fs: giving up",
                        dead.pid, dead.returncode, budget.allowed, budget.window,
                    )  # fmt: skip
                    return True
                log.warning(
                    "worker pid %d exited (code %s); starting another", dead.pid, dead.returncode
                )
                if not await workers.start_one():
                    log.error("the replacement worker did not start; stopping")
                    return True
    finally:
        stopping.cancel()
