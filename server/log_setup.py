"""Logging for `studio serve`: JSON lines on stderr, and nothing else there.

Our records are formatted by `JsonFormatter` and written in batches (server/batched_log.py).
Others write to the stderr file descriptor too: grpc's C core ("E1203 08:14:23.808 ...
add_port.cc:83] Failed to add port"), PostgreSQL's tools, a traceback printed directly.
Each such line would break `jq`, so file descriptor 2 becomes a pipe, read by a thread that
turns every line into a record of the logger "stderr". Lines that are already ours (the
workers of `serve --workers N` inherit the pipe) pass through as they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

from server.batched_log import BatchedStreamHandler
from server.log_format import JsonFormatter

__all__ = ["json_logging"]

stray = logging.getLogger("stderr")
OUR_LINE = '{"ts":'  # how every line of JsonFormatter starts
# grpc's C core (absl) starts a line with its level's letter and the date: "E1203 08:14:23..."
ABSL_LEVEL = re.compile(r"([EWIF])\d{4} ")
ABSL_LEVELS = {"E": logging.ERROR, "W": logging.WARNING, "I": logging.INFO, "F": logging.CRITICAL}
RELAY_DRAIN_SECONDS = 2.0


@contextlib.contextmanager
def json_logging() -> Iterator[BatchedStreamHandler]:
    """Route every log record, warning and stray stderr line to stderr as JSON lines."""
    # Records carry no caller, thread or process fields: nothing prints them.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup per record (logging's documented switch)
    sys.stderr.flush()
    real_stderr = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="backslashreplace")
    writer = BatchedStreamHandler(real_stderr)
    writer.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[writer], force=True)
    logging.captureWarnings(True)
    previous_hook, threading.excepthook = threading.excepthook, _log_thread_error
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)  # children inherit it: their stray lines are relayed too
    os.close(write_end)
    relay = threading.Thread(
        target=_relay, args=(read_end, writer), name="stderr-relay", daemon=True
    )
    relay.start()
    try:
        yield writer
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr.fileno(), 2)  # closes our write end of the pipe: the relay ends
        relay.join(RELAY_DRAIN_SECONDS)
        threading.excepthook = previous_hook
        logging.captureWarnings(False)
        logging.getLogger().removeHandler(writer)
        writer.close()
        real_stderr.close()


def _relay(read_end: int, writer: BatchedStreamHandler) -> None:
    with open(read_end, "rb") as pipe:
        for raw in pipe:
            line = raw.decode("utf-8", "backslashreplace").rstrip()
            if line.startswith(OUR_LINE):
                writer.write_line(line)
            elif line:
                level = ABSL_LEVEL.match(line)
                stray.log(ABSL_LEVELS[level.group(1)] if level else logging.WARNING, line)


def _log_thread_error(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread else "?"
    logging.getLogger("studio.thread").critical(
        "unexpected error in thread %s", name, exc_info=args.exc_value
    )
