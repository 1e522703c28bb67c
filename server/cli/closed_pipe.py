"""Standard output whose reader may go away (`studio keys list --json | head -1`).

Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError: in the middle of a
command (a traceback, and a fleet migration stopped half way) or at exit, when the buffer is
flushed ("Exception ignored ... BrokenPipeError", exit 120). Instead, the first such write
points the file descriptor at /dev/null: the command runs to its end, the rest of its output
is dropped, and it exits with its own code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO, cast

__all__ = ["ClosedPipeTolerant"]


class ClosedPipeTolerant:
    """Wraps a text stream; every other attribute (isatty, fileno, ...) is the stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    @classmethod
    @contextlib.contextmanager
    def on_stdout(cls) -> Iterator[None]:
        """sys.stdout is tolerant while the block runs, and flushed before it ends."""
        original = sys.stdout
        tolerant = cls(original)
        sys.stdout = cast("TextIO", tolerant)
        try:
            yield
        finally:
            tolerant.flush()
            sys.stdout = original

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()
            self._stream.flush()  # what was still buffered now goes to /dev/null

    def _reader_gone(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)
