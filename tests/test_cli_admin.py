"""`studio tenants` and `studio keys`, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import time

import grpc
import pytest

from studio.v1 import client_pb2
from tests.api import failure
from tests.conftest import ApiServer
from tests.serving import STUDIO


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
        time.sleep(0.5)  # the server caches a key for 0.2 s in these tests
        with pytest.raises(grpc.RpcError) as raised:
            api.clients.ListClients(client_pb2.ListClientsRequest(), timeout=10)
        assert failure(raised.value).reason == "API_KEY_REVOKED"
    finally:
        api.close()
