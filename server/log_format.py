"""Log records as JSON lines: one object a line, for jq and log shippers.

Every line has "ts" (RFC 3339 in UTC, to the millisecond: "2026-12-03T08:01:02.345Z"),
"level" and "logger". A record whose message is a dict (the per-call line of
server/pipeline.py) puts its fields at the top level; any other record has its text in "msg".
A traceback goes in "exc", as one string: the line stays one line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["JsonFormatter"]

# One encoder for every record, compact; a value JSON has no type for is written as its str().
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # The date and time to the second, for the second last seen: a busy server logs many
        # lines a second, and strftime is the dearest part of a line otherwise.
        self._second: tuple[int, str] = (-1, "")

    def timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second  # one read: another thread may replace it meanwhile
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        ts, level, name = self.timestamp(record), record.levelname, record.name
        fields: dict[str, Any]
        if isinstance(record.msg, dict) and not record.args:
            fields = {"ts": ts, "level": level, "logger": name, **record.msg}
        else:
            fields = {"ts": ts, "level": level, "logger": name, "msg": record.getMessage()}
        if record.exc_info:
            if not record.exc_text:  # logging's own cache: other handlers reuse it
                record.exc_text = self.formatException(record.exc_info)
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return _encode(fields)
