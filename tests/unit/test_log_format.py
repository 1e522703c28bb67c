"""The JSON log line: one object a line, a UTC timestamp with its zone, fields at the top."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.log_format import JsonFormatter


def _record(msg: object, *args: object, exc: bool = False) -> logging.LogRecord:
    return logging.LogRecord(
        "studio.test", logging.WARNING, __file__, 1, msg, args or None,
        sys.exc_info() if exc else None,
    )  # fmt: skip


def test_a_line_has_an_rfc3339_utc_timestamp_the_level_the_logger_and_the_message() -> None:
    record = _record("migrated %d tenants", 3)
    record.created, record.msecs = 1_796_284_862.345, 345.0  # 2026-12-03T08:01:02.345Z
    line = JsonFormatter().format(record)
    assert json.loads(line) == {
        "ts": "2026-12-03T08:01:02.345Z",
        "level": "WARNING",
        "logger": "studio.test",
        "msg": "migrated 3 tenants",
    }
    assert "\n" not in line
    when = datetime.fromisoformat(json.loads(line)["ts"])
    assert when == datetime(2026, 12, 3, 8, 1, 2, 345000, tzinfo=UTC)


def test_the_second_is_not_reused_across_seconds() -> None:
    formatter = JsonFormatter()
    stamps = []
    for created, msecs in ((1_796_284_862.999, 999.0), (1_796_284_863.001, 1.0)):
        record = _record("x")
        record.created, record.msecs = created, msecs
        stamps.append(json.loads(formatter.format(record))["ts"])
    assert stamps == ["2026-12-03T08:01:02.999Z", "2026-12-03T08:01:03.001Z"]


def test_a_dict_message_puts_its_fields_at_the_top_level() -> None:
    fields = {"method": "/studio.v1.ClientService/GetClient", "code": "NOT_FOUND", "ms": 1.5,
              "tenant": None, "request_id": "r1", "path": Path("/x")}  # fmt: skip
    entry = json.loads(JsonFormatter().format(_record(fields)))
    assert entry.pop("ts")
    assert entry == {
        "level": "WARNING", "logger": "studio.test", **fields, "path": "/x",  # str() of it
    }  # fmt: skip


def test_a_traceback_is_one_field_of_the_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        line = JsonFormatter().format(_record("unexpected", exc=True))
    assert len(line.splitlines()) == 1
    entry = json.loads(line)
    assert entry["msg"] == "unexpected"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert entry["exc"].endswith("ValueError: boom")


@pytest.mark.parametrize("text", ['quote " and \\ backslash', "newline\nand tab\t", "é ✓ \x00"])
def test_any_text_stays_one_valid_line(text: str) -> None:
    line = JsonFormatter().format(_record(text))
    assert len(line.splitlines()) == 1
    assert json.loads(line)["msg"] == text
