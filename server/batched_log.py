"""A logging handler that writes in batches from a thread of its own.

One log line per call is a lot of small writes. Writing each in the event loop would stall
every call whenever the disk or the pipe is slow; handing each to a writer thread (logging's
QueueListener) wakes that thread once per call, and the two threads trade the GIL for every
line. Here a record is formatted where it is logged and appended to a buffer; the writer
wakes every `interval` seconds (or when the buffer is large) and writes all pending lines at
once. A crash loses at most the last `interval` of lines; a normal exit flushes them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TextIO

__all__ = ["BatchedStreamHandler"]

FLUSH_AT_LINES = 5000  # wake the writer early when this many lines are pending
# Lines pending past this (the stream blocks: a full pipe nobody reads) are dropped and
# counted rather than kept without bound: about 30 MB of lines.
MAX_PENDING_LINES = 100_000


class BatchedStreamHandler(logging.Handler):
    def __init__(self, stream: TextIO, *, interval: float = 0.05) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self._pending: deque[str] = deque()  # append and popleft are thread-safe
        # One drain at a time (the writer thread's, or a flush from another thread), so lines
        # leave in the order they came. Not the handler's own lock: emit() holds that, and a
        # call must never wait for a slow write.
        self._draining = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.dropped = 0  # lines lost: not formatted, past MAX_PENDING_LINES, or not written
        self._counting = threading.Lock()  # taken only when a line is dropped
        self._writer = threading.Thread(target=self._write_loop, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 (logging's contract: report, never raise)
            self._drop(1)
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """Queue a line formatted elsewhere (a child process's log line), in order with ours."""
        if len(self._pending) >= MAX_PENDING_LINES:
            self._drop(1)
            return
        self._pending.append(line + "\n")
        if len(self._pending) >= FLUSH_AT_LINES:
            self._wake.set()

    def _write_loop(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write every pending line now."""
        with self._draining:
            lines = []
            try:
                while True:
                    lines.append(self._pending.popleft())
            except IndexError:
                pass
            if not lines:
                return
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # the stream is gone (a closed pipe): nothing to do
                self._drop(len(lines))

    def _drop(self, lines: int) -> None:
        with self._counting:
            self.dropped += lines

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._writer.join(timeout=5)
        self.flush()
        super().close()
