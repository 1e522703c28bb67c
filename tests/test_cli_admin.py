"""`studio tenants` and `studio keys`, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import time

import grpc

from studio.v1 import client_pb2
from tests.api import Api, failure
from tests.conftest import ApiServer
from tests.serving import STUDIO

KEY_CACHE_BOUND = 10.0  # seconds; the test server caches a key for 0.2 s


def refused_reason(api: Api, within: float = KEY_CACHE_BOUND) -> str:
    """Call until the server refuses the key (its cache expires), at most `within` seconds;
    the reason it gives."""
    deadline = time.monotonic() + within
    while True:
        try:
            api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
        except grpc.RpcError as error:
            return failure(error).reason
        assert time.monotonic() < deadline, f"the key still worked after {within} s"
        time.sleep(0.05)


def _studio(master_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STUDIO_DATABASE_URL": master_url}
    return subprocess.run(
        [STUDIO, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_tenant_made_from_the_command_line_can_book_at_once(api_server: ApiServer) -> None:
    made = _studio(api_server.master_url, "tenants", "create", "--name", "Abbey Road", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["tenant"] == "abbey-road"
    assert created["api_key"].startswith("sk_")

    api = api_server.api(created["api_key"])
    try:
        client = api.client("Paul")
        assert api.session(client.id, api.room().id).client_id == client.id
    finally:
        api.close()

    again = _studio(api_server.master_url, "tenants", "create", "--name", "Abbey Road")
    assert again.returncode == 3
    assert "already exists" in again.stderr


def test_keys_are_created_listed_by_prefix_only_and_revoked(api_server: ApiServer) -> None:
    tenant = api_server.new_tenant("keys")
    made = _studio(api_server.master_url, "keys", "create", "--tenant", tenant.slug,
                   "--role", "read_only", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["api_key"]
    prefix = key.split("_")[1]

    listed = _studio(api_server.master_url, "keys", "list", "--tenant", tenant.slug, "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {(r["prefix"], r["role"]) for r in rows} >= {(prefix, "read_only")}
    assert key not in listed.stdout  # only the public prefix is ever shown again

    api = api_server.api(key)
    try:
        api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
        assert _studio(api_server.master_url, "keys", "revoke", prefix).returncode == 0
        assert refused_reason(api) == "API_KEY_REVOKED"
    finally:
        api.close()
