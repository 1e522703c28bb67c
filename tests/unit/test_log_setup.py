"""What reaches stderr while `studio serve` logs: JSON lines only, whoever wrote them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WRITERS = r"""
import logging, os, subprocess, sys, threading, warnings
from server.log_setup import json_logging

with json_logging():
    logging.getLogger("studio.test").info("ours")
    # a worker's line (workers of `serve --workers N` write to the supervisor's stderr)
    os.write(2, b'{"ts":"2026-12-03T08:00:00.000Z","level":"INFO","logger":"studio.call"}\n')
    os.write(2, b"E1203 08:14:23.808696   23378 add_port.cc:83] Failed to add port\n")  # grpc's
    print("printed to sys.stderr", file=sys.stderr)
    warnings.warn("a warning", stacklevel=1)
    worker = threading.Thread(target=lambda: 1 / 0, name="doomed")
    worker.start()
    worker.join()
    subprocess.run(["sh", "-c", "echo from a child process >&2"], check=True)
"""


def test_every_line_on_stderr_is_json_whoever_wrote_it() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WRITERS], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    by_text = {entry.get("msg", entry["logger"]): entry for entry in entries}
    assert len(entries) == len(by_text) == 7, entries
    assert by_text["ours"]["logger"] == "studio.test"
    assert by_text["studio.call"]["ts"] == "2026-12-03T08:00:00.000Z"  # passed as it was
    grpc_line = next(e for e in entries if "add_port.cc" in e.get("msg", ""))
    assert (grpc_line["logger"], grpc_line["level"]) == ("stderr", "ERROR")
    assert by_text["printed to sys.stderr"]["logger"] == "stderr"
    assert by_text["from a child process"]["logger"] == "stderr"
    warning = next(e for e in entries if e["logger"] == "py.warnings")
    assert "a warning" in warning["msg"]
    crash = by_text["unexpected error in thread doomed"]
    assert (crash["logger"], crash["level"]) == ("studio.thread", "CRITICAL")
    assert crash["exc"].endswith("ZeroDivisionError: division by zero")
