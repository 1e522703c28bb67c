"""Reading the server's log as an operator's tools do: one JSON object a line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tests.serving import ServerProcess

LogLine = dict[str, Any]


def call_lines(output: list[str]) -> list[LogLine]:
    """The per-call lines among a server's output (its stdout lines are plain text)."""
    lines = []
    for line in list(output):  # a copy: the reader thread appends meanwhile
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["logger"] == "studio.call" and "method" in entry:
                lines.append(entry)
    return lines


def wait_for_call(
    server: ServerProcess, matches: Callable[[LogLine], bool], timeout: float = 10
) -> LogLine:
    """The one call line that `matches`, once the server has written it (in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [entry for entry in call_lines(server.output) if matches(entry)]
        if found:
            [entry] = found
            return entry
        assert time.monotonic() < deadline, "the server logged no such call"
        time.sleep(0.02)
