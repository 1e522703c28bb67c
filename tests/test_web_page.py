"""A real page in a real browser: clients/typescript/examples/web (React, TanStack Query and
connect-query over the Connect protocol), bundled with esbuild, served from an origin of its
own, driven in headless Chromium (Debian's, through playwright-core) against a real
`studio serve` and PostgreSQL. The screenshot is kept in test-artifacts/.

It runs whenever node and chromium are there; without them it is reported as skipped, never
as passed (under CI=true a missing one fails: `python3 dev.py test` installs chromium there).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from db.migrations.fleet import run_one
from tests.call_log import wait_for_call
from tests.conftest import ApiServer, Databases
from tests.serving import start_serve

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clients" / "typescript"
PAGE_DIR = PACKAGE / "examples" / "web"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
MISSING = [n for n, found in (("node", shutil.which("node")), ("chromium", CHROMIUM)) if not found]
needs_browser = pytest.mark.skipif(
    bool(MISSING) and not IN_CI,
    reason=f"{' and '.join(MISSING)} not on PATH: the browser test did NOT run",
)
INVALID_ARGUMENT = 3  # connect-es Code.InvalidArgument


@pytest.fixture
def page_origin() -> Iterator[str]:
    """The built page, served by a static file server of its own (another origin than the
    API's, as a web UI is): its URL."""
    assert not MISSING, f"{MISSING} missing, and CI must run the browser test"
    if not (PACKAGE / "node_modules").exists():  # `python3 dev.py test` installs it already
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=PACKAGE, check=True, capture_output=True)  # fmt: skip
    subprocess.run(["npm", "run", "--silent", "build:web"], cwd=PACKAGE, check=True, timeout=120)
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
         "--directory", str(PAGE_DIR)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 41234 (...) ..."
        assert line.startswith("Serving HTTP on"), line
        yield f"http://127.0.0.1:{line.split()[5]}"
    finally:
        server.terminate()
        server.wait(10)
        assert server.stdout is not None
        server.stdout.close()


@needs_browser
def test_a_page_curl_grpcurl_and_node_book_link_and_unlink_on_one_server(
    databases: Databases, tmp_path: Path, page_origin: str
) -> None:
    master_url = databases.create("web_master")
    asyncio.run(run_one(master_url, "master", mode="up"))
    server = start_serve(tmp_path / "serve", "--no-demo", "--cors-origin", page_origin,
                         master_url=master_url)  # fmt: skip
    try:
        api = ApiServer(master_url, server)
        studio = api.new_tenant("web")
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "web-booking.png"
        screenshot.unlink(missing_ok=True)
        page_url = f"{page_origin}/index.html?api={server.http_url}&key={studio.key}"
        result = subprocess.run(
            ["node", "test/web/drive.mjs"], cwd=PACKAGE, capture_output=True, text=True,
            timeout=180, check=False,
            env={**os.environ, "CHROMIUM": str(CHROMIUM), "PAGE_URL": page_url,
                 "SCREENSHOT": str(screenshot)},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        seen = json.loads(result.stdout.strip().splitlines()[-1])

        assert seen["pageErrors"] == []
        assert seen["booked"] == "Session 1 booked into project 1"
        assert seen["projectSessionsAfterBooking"] == "The project has 1 session(s)"
        assert seen["unlinked"] == "Session 1 is standalone now"
        assert seen["projectSessionsAfterUnlinking"] == "The project has 0 session(s)"
        # the field violations the server returned, as the page shows them
        assert (seen["error"]["code"], seen["error"]["reason"]) == (
            str(INVALID_ARGUMENT), "INVALID_ARGUMENT",
        )  # fmt: skip
        violations = {(v["field"], v["reason"]) for v in seen["violations"]}
        assert ("session.room_id", "REQUIRED") in violations
        assert ("session.end_time", "AFTER_START_TIME") in violations
        assert not seen["failureShown"]  # the valid calls all succeeded
        # over the Connect protocol from the browser: mutations POSTed, the query a GET
        calls = {(c["method"], c["path"], c["status"]) for c in seen["calls"]}
        assert ("POST", "/studio.v1.SessionService/CreateSession", 200) in calls
        assert ("POST", "/studio.v1.SessionService/UpdateSession", 200) in calls
        assert ("GET", "/studio.v1.SessionService/ListSessions", 200) in calls
        assert ("POST", "/studio.v1.SessionService/CreateSession", 400) in calls

        # what PostgreSQL holds, and what the server logged, agree with the page
        with psycopg.connect(studio.url) as conn:
            row = conn.execute("SELECT title, project_id FROM sessions WHERE id = 1").fetchone()
        assert row == ("Drums", None)
        entry = wait_for_call(server, lambda e: e["method"].endswith("/UpdateSession"))
        assert (entry["code"], entry["tenant"]) == ("OK", studio.slug)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # CORS: only the page's origin is let in
        assert _preflight(server.http_url, page_origin) == page_origin
        assert _preflight(server.http_url, "http://elsewhere.example") is None

        # The same session through the other clients, against this one server: grpcurl links
        # it (gRPC, through reflection), curl unlinks it (Connect JSON over HTTP/1.1), the Node
        # TypeScript client links and unlinks it (gRPC).
        assert _grpcurl_link(server.address, studio.key) == "1"
        assert "projectId" not in _curl_unlink(server.http_url, studio.key)
        assert _node_link_then_unlink(server.address, studio.key) == {
            "linked": "1", "unlinked": "undefined",
        }  # fmt: skip
        with psycopg.connect(studio.url) as conn:
            row = conn.execute("SELECT project_id, version FROM sessions WHERE id = 1").fetchone()
        assert row == (None, 6)  # created, then 5 updates: page, grpcurl, curl, node twice
    finally:
        assert server.terminate() == 0


UNLINK = '{"session": {"id": "1"}, "updateMask": "projectId"}'
# grpcurl 1.8's JSON takes a FieldMask as the message it is, not as the string
LINK = '{"session": {"id": "1", "projectId": "1"}, "updateMask": {"paths": ["project_id"]}}'


def _grpcurl_link(address: str, key: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "grpcurl"), "-plaintext", "-H",
         f"authorization: Bearer {key}", "-d", LINK, address,
         "studio.v1.SessionService/UpdateSession"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["session"]["project_id"])  # grpcurl: proto names


def _curl_unlink(http_url: str, key: str) -> dict[str, object]:
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", f"authorization: Bearer {key}",
         "-H", "content-type: application/json", "-d", UNLINK,
         f"{http_url}/studio.v1.SessionService/UpdateSession"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    session: dict[str, object] = json.loads(result.stdout)["session"]
    return session


NODE_LINK_THEN_UNLINK = """
import { createStudioClient } from "./dist/clients/typescript/src/index.js";
const studio = createStudioClient({ baseUrl: process.env.BASE_URL, apiKey: process.env.KEY });
const mask = { paths: ["project_id"] };
const link = { session: { id: 1n, projectId: 1n }, updateMask: mask };
const linked = await studio.sessions.updateSession(link);
const unlinked = await studio.sessions.updateSession({ session: { id: 1n }, updateMask: mask });
console.log(JSON.stringify({ linked: String(linked.session?.projectId),
                             unlinked: String(unlinked.session?.projectId) }));
"""


def _node_link_then_unlink(address: str, key: str) -> dict[str, str]:
    subprocess.run(["npm", "run", "--silent", "build"], cwd=PACKAGE, check=True, timeout=300)
    result = subprocess.run(
        ["node", "--input-type=module", "-e", NODE_LINK_THEN_UNLINK], cwd=PACKAGE,
        env={**os.environ, "BASE_URL": f"http://{address}", "KEY": key},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer: dict[str, str] = json.loads(result.stdout)
    return answer


def _preflight(http_url: str, origin: str) -> str | None:
    """access-control-allow-origin of a browser's preflight for a Connect POST."""
    request = urllib.request.Request(  # noqa: S310 (our own server, on loopback)
        f"{http_url}/studio.v1.SessionService/CreateSession", method="OPTIONS",
        headers={"origin": origin, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization,content-type"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.headers.get("access-control-allow-origin")
    except urllib.error.HTTPError as error:
        return error.headers.get("access-control-allow-origin")
