"""The README's walkthrough, run as written against a fresh server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import Databases
from tests.serving import start_serve

ROOT = Path(__file__).resolve().parents[1]


def _walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-api-walkthrough -->\s*```sh\n(.*?)```", readme, flags=re.DOTALL)
    assert block, "the README lost its walkthrough"
    return block.group(1)


def _json_values(text: str) -> list[dict[str, object]]:
    decoder, values, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        value, index = decoder.raw_decode(text, index)
        values.append(value)
    return values


def test_the_readme_books_unlinks_tracks_an_hour_and_sums_up_the_album(
    databases: Databases, tmp_path: Path
) -> None:
    server = start_serve(tmp_path, master_url=databases.create("readme_master"))
    try:
        env = {**os.environ, "PORT": str(server.port), "STUDIO_DATA_DIR": str(tmp_path)}
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _walkthrough()],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        server.terminate()
    assert result.returncode == 0, result.stderr
    outputs = _json_values(result.stdout)
    _client, _room, project, booked, listed, unlinked, got, relinked = outputs[:8]
    task_type, logged, summary = outputs[8:]
    assert booked["session"]["projectId"] == project["project"]["id"] == "1"  # type: ignore[index]
    assert [s["id"] for s in listed["sessions"]] == ["1"]  # type: ignore[index]
    assert "projectId" not in unlinked["session"]  # type: ignore[operator]
    assert "projectId" not in got["session"]  # type: ignore[operator]
    assert got["session"]["title"] == "Drums"  # type: ignore[index]
    assert relinked["session"]["projectId"] == "1"  # type: ignore[index]
    assert task_type["taskType"]["hourlyRate"] == "60.00"  # type: ignore[index]
    entry = logged["timeEntry"]  # type: ignore[index]
    assert (entry["durationMinutes"], entry["billableAmount"]) == (60, "60.00")  # type: ignore[index]
    rollup = summary["summary"]  # type: ignore[index]
    assert rollup["sessions"]["bookedHours"] == "4.00"  # type: ignore[index]
    assert (rollup["time"]["minutes"], rollup["time"]["billableAmount"]) == ("60", "60.00")  # type: ignore[index]
    assert rollup["amounts"]["total"] == "60.00"  # type: ignore[index]
    [error] = _json_values(result.stderr)  # the last call's, readable as it is
    assert error["code"] == "not_found"
    assert '"reason": "SESSION_NOT_FOUND"' in result.stderr


def test_the_readme_python_snippet_books_and_unlinks(databases: Databases, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-python -->\s*```python\n(.*?)```", readme, flags=re.DOTALL)
    assert block, "the README lost its Python snippet"
    server = start_serve(tmp_path, master_url=databases.create("readme_py_master"))
    try:
        env = {**os.environ, "PORT": str(server.port), "STUDIO_DATA_DIR": str(tmp_path)}
        result = subprocess.run(
            [sys.executable, "-c", block.group(1)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        server.terminate()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "linked: True after unlink: False"


def test_the_readme_books_unlinks_and_fails_over_connect_with_curl(
    databases: Databases, tmp_path: Path
) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-connect-walkthrough -->\s*```sh\n(.*?)```", readme, re.DOTALL)
    assert block, "the README lost its Connect walkthrough"
    server = start_serve(tmp_path, master_url=databases.create("readme_connect_master"))
    try:
        env = {**os.environ, "HTTP_PORT": str(server.http_port), "STUDIO_DATA_DIR": str(tmp_path)}
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.group(1)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        server.terminate()
    assert result.returncode == 0, result.stderr
    _client, _room, project, booked, unlinked, listed, error = _json_values(result.stdout)
    assert booked["session"]["projectId"] == project["project"]["id"] == "1"  # type: ignore[index]
    assert "projectId" not in unlinked["session"]  # type: ignore[operator]
    assert unlinked["session"]["title"] == "Drums"  # type: ignore[index]
    assert listed == {}  # the project has no session left
    assert (error["code"], error["message"]) == ("not_found", "session 42 does not exist")
    [debug] = [d["debug"] for d in error["details"] if "debug" in d]  # type: ignore[attr-defined]
    assert debug["reason"] == "SESSION_NOT_FOUND"
    assert debug["metadata"]["sessionId"] == "42"


def test_the_readme_web_snippet_is_the_page_the_browser_test_drives() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-web -->\s*```tsx\n(.*?)```", readme, re.DOTALL)
    assert block, "the README lost its connect-query snippet"
    page = (ROOT / "clients" / "typescript" / "examples" / "web" / "app.tsx").read_text()
    assert block.group(1) in page
