"""The TypeScript client's own suite (node's test runner), against this session's server.

It runs whenever `node` is on PATH; without node it is reported as skipped, never as passed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ApiServer

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clients" / "typescript"
NO_NODE = shutil.which("node") is None or shutil.which("npm") is None
# Under CI a missing node is a failure (the test runs and fails), never a silent skip.
needs_node = pytest.mark.skipif(
    NO_NODE and os.environ.get("CI", "").lower() not in {"1", "true", "yes"},
    reason="node is not on PATH: the TypeScript client suite did NOT run",
)


@needs_node
def test_the_typescript_client_walks_the_mission(api_server: ApiServer) -> None:
    tenant = api_server.new_tenant("typescript")
    env = {
        **os.environ,
        "STUDIO_BASE_URL": f"http://{api_server.address}",
        "STUDIO_HTTP_URL": api_server.http_url,
        "STUDIO_API_KEY": tenant.key,
        "STUDIO_READ_ONLY_KEY": api_server.new_key(tenant, "read_only"),
    }
    if not (PACKAGE / "node_modules").exists():  # `python3 dev.py test` installs it already
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=PACKAGE, check=True, capture_output=True)  # fmt: skip
    result = subprocess.run(
        ["npm", "test", "--silent"], cwd=PACKAGE, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    print(result.stdout[-4000:], result.stderr[-4000:])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    passed = re.search(r"\N{INFORMATION SOURCE} pass (\d+)", result.stdout)
    failed = re.search(r"\N{INFORMATION SOURCE} fail (\d+)", result.stdout)
    assert passed is not None
    assert failed is not None
    assert (int(passed.group(1)), int(failed.group(1))) == (11, 0)


def test_the_readme_typescript_snippet_is_the_one_the_suite_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-typescript -->\s*```ts\n(.*?)```", readme, re.DOTALL)
    assert block, "the README lost its TypeScript snippet"
    assert block.group(1) == (PACKAGE / "examples" / "quickstart.ts").read_text()
