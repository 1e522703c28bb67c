"""A live progress line for long fan-outs on a terminal: a bar, counts by status, an ETA."""

from __future__ import annotations

import time
from collections import Counter
from typing import TextIO

__all__ = ["Progress"]

WIDTH = 30


class Progress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.total = 0
        self.done = 0
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()

    def start(self, total: int) -> None:
        self.total, self.started = total, time.monotonic()
        self._draw()

    def advance(self, status: str) -> None:
        self.done += 1
        self.counts[status] += 1
        self._draw()

    def print(self, text: str) -> None:
        """A line above the bar (e.g. a failure), without breaking the bar."""
        self.stream.write("\r\033[K" + text + "\n")
        self._draw()

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        total = max(self.total, 1)
        filled = WIDTH * self.done // total
        elapsed = time.monotonic() - self.started
        eta = "" if not self.done else f" ETA {elapsed / self.done * (total - self.done):.0f}s"
        counts = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        bar = "#" * filled + "." * (WIDTH - filled)
        self.stream.write(f"\r\033[K[{bar}] {self.done}/{self.total} {counts}{eta}")
        self.stream.flush()
