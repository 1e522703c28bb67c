"""The operator CLI as a new user meets it: where the master database is, naming keys as they
are listed, listing studios, piping JSON into `head`, and --help that explains."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from db.local_postgres import LocalPostgres, free_port
from db.migrations.fleet import run_one
from db.tenants import create_database_if_missing
from server.cli import build_parser
from server.database_setup import MASTER_DATABASE
from tests.conftest import ApiServer, Tenant
from tests.serving import STUDIO
from tests.test_cli_admin import refused_reason


def run_studio(
    *args: str,
    master_url: str | None = None,
    data_dir: Path | None = None,
    stdout: int = subprocess.PIPE,
) -> subprocess.CompletedProcess[str]:
    """`studio ARGS` with only the environment given here (no inherited STUDIO_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
    if master_url:
        env["STUDIO_DATABASE_URL"] = master_url
    if data_dir:
        env["STUDIO_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [STUDIO, *args], stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
        timeout=120, check=False,
    )  # fmt: skip


def json_lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines()]


def listed_form(master_url: str, tenant: str, key: str) -> str:
    """The key as `studio keys list` (human) prints it."""
    listed = run_studio("keys", "list", "--tenant", tenant, master_url=master_url)
    assert listed.returncode == 0, listed.stderr
    prefix = key.split("_")[1]
    [line] = [line for line in listed.stdout.splitlines() if prefix in line]
    [shown] = [word for word in line.split() if prefix in word]
    assert key not in listed.stdout
    return shown


# --- keys revoke: the key as listed, or whole ---------------------------------------------


@pytest.mark.parametrize("form", ["as listed", "prefix of --json", "whole key"])
def test_a_key_is_revoked_as_keys_list_shows_it_or_whole(
    api_server: ApiServer, studio: Tenant, form: str
) -> None:
    made = studio_cli(api_server, "keys", "create", "--tenant", studio.slug, "--json")
    key = str(json.loads(made.stdout)["api_key"])
    if form == "as listed":
        named = listed_form(api_server.master_url, studio.slug, key)
        assert named.startswith("sk_")
        assert key.startswith(named.rstrip("…."))
    elif form == "prefix of --json":
        listed = studio_cli(api_server, "keys", "list", "--tenant", studio.slug, "--json")
        prefixes = [str(row["prefix"]) for row in json_lines(listed.stdout)]
        [named] = [prefix for prefix in prefixes if key.startswith(f"sk_{prefix}_")]
    else:
        named = key
    api = api_server.api(key)
    try:
        api.client("Before revocation")  # the key works
        revoked = studio_cli(api_server, "keys", "revoke", named)
        assert "revoked sk_" in revoked.stdout
        assert refused_reason(api) == "API_KEY_REVOKED"
    finally:
        api.close()


def test_a_whole_key_with_a_wrong_secret_revokes_nothing(
    api_server: ApiServer, studio: Tenant
) -> None:
    key = api_server.new_key(studio, "member")
    forged = key[: len("sk_") + 12] + "_not-the-secret"
    result = run_studio("keys", "revoke", forged, master_url=api_server.master_url)
    assert result.returncode == 1
    assert result.stderr.startswith("studio keys revoke: no active key sk_")
    api = api_server.api(key)
    try:
        api.client("Still allowed")
    finally:
        api.close()


def test_keys_list_of_an_unknown_studio_is_an_error_like_keys_create(
    api_server: ApiServer,
) -> None:
    created = run_studio("keys", "create", "--tenant", "nope", master_url=api_server.master_url)
    listed = run_studio("keys", "list", "--tenant", "nope", master_url=api_server.master_url)
    assert created.returncode == listed.returncode == 1
    assert created.stderr == "studio keys create: no studio 'nope'\n"
    assert listed.stderr == "studio keys list: no studio 'nope'\n"
    assert listed.stdout == ""


# --- tenants list ----------------------------------------------------------------------------


def test_tenants_list_shows_every_studio_with_its_database(
    api_server: ApiServer, studio: Tenant
) -> None:
    result = studio_cli(api_server, "tenants", "list", "--json")
    by_slug = {row["slug"]: row for row in json_lines(result.stdout)}
    row = by_slug[studio.slug]
    master = conninfo_to_dict(api_server.master_url)
    assert row == {
        "slug": studio.slug,
        "name": row["name"],
        "database": conninfo_to_dict(studio.url)["dbname"],
        "server": f"{master['host']}:{master['port']}",
        "active": True,
        "created_at": row["created_at"],
        "move": None,  # not being moved (studio tenants move)
    }
    assert str(row["name"]).startswith("shared")
    assert datetime.fromisoformat(str(row["created_at"])).tzinfo is not None

    human = studio_cli(api_server, "tenants", "list")
    [line] = [line for line in human.stdout.splitlines() if line.startswith(studio.slug + " ")]
    assert str(row["database"]) in line
    assert "active" in line


def studio_cli(api_server: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_studio(*args, master_url=api_server.master_url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result


# --- a reader that goes away ---------------------------------------------------------------


def closed_reader() -> int:
    """The write end of a pipe whose reader is already gone: every write fails (EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def run_into_closed_pipe(*args: str, master_url: str) -> subprocess.CompletedProcess[str]:
    write_end = closed_reader()
    try:
        return run_studio(*args, master_url=master_url, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "command",
    [("keys", "list", "--json"), ("tenants", "list", "--json"), ("keys", "list")],
)
def test_output_into_a_closed_pipe_ends_quietly(
    api_server: ApiServer, studio: Tenant, command: tuple[str, ...]
) -> None:
    result = run_into_closed_pipe(*command, master_url=api_server.master_url)
    assert result.stderr == ""  # no BrokenPipeError, no "Exception ignored"
    assert result.returncode == 0


def test_keys_create_into_a_closed_pipe_still_creates_exactly_one_key(
    api_server: ApiServer,
) -> None:
    tenant = api_server.new_tenant("pipe")

    def keys() -> list[dict[str, object]]:
        return json_lines(studio_cli(api_server, "keys", "list", "--tenant", tenant.slug,
                                     "--json").stdout)  # fmt: skip

    before = len(keys())
    result = run_into_closed_pipe("keys", "create", "--tenant", tenant.slug, "--json",
                                  master_url=api_server.master_url)  # fmt: skip
    assert result.stderr == ""
    assert result.returncode == 0
    assert len(keys()) == before + 1


def test_migrate_status_json_into_a_closed_pipe_still_reports_its_exit_code(
    fresh_db: str,
) -> None:
    result = run_into_closed_pipe("migrate", "status", "--database-url", fresh_db, "--json",
                                  master_url=fresh_db)  # fmt: skip
    assert result.stderr == ""
    assert result.returncode == 6  # pending, as when the output is read


def test_json_lines_piped_into_head_end_cleanly(api_server: ApiServer) -> None:
    tenant = api_server.new_tenant("head")
    with psycopg.connect(api_server.master_url) as conn:  # more lines than a pipe holds
        conn.execute(
            "INSERT INTO api_keys (organization_id, key_prefix, key_sha256, role)"
            " SELECT o.id, substr(md5(i::text || o.id::text), 1, 12),"
            "        sha256(i::text::bytea), 'read_only'"
            " FROM organizations o, generate_series(1, 6000) i WHERE o.slug = %s",
            (tenant.slug,),
        )
    env = {**os.environ, "STUDIO_DATABASE_URL": api_server.master_url}
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c",
         f"'{STUDIO}' keys list --tenant {tenant.slug} --json | head -1"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.stderr == ""
    assert result.returncode == 0
    [line] = json_lines(result.stdout)
    assert line["tenant"] == tenant.slug


# --- no master database ----------------------------------------------------------------------

EVERY_COMMAND_BUT_SERVE = [
    ("tenants", "create", "--name", "Nowhere"),
    ("tenants", "list"),
    ("keys", "create", "--tenant", "demo"),
    ("keys", "list"),
    ("keys", "revoke", "sk_0123456789ab_…"),
    ("migrate", "status"),
    ("migrate", "up"),
    ("tenants", "isolate", "--all"),
]


@pytest.mark.parametrize("command", EVERY_COMMAND_BUT_SERVE, ids=" ".join)
def test_no_master_database_is_one_line_and_creates_no_cluster(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = run_studio(*command, "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"studio {' '.join(command[:2])}: no master database")
    assert "STUDIO_DATABASE_URL" in line
    assert f"studio serve --data-dir {tmp_path}" in line
    assert list(tmp_path.iterdir()) == []  # no cluster made


def test_studio_data_dir_is_read_like_data_dir(tmp_path: Path) -> None:
    result = run_studio("keys", "list", data_dir=tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path} holds no embedded PostgreSQL" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """A data directory the `postgres` OS user can always reach. Not under tmp_path: every
    pytest session that starts on this machine resets /tmp/pytest-of-<user> to mode 0700,
    which would lock a cluster there out of its own files."""
    path = Path(tempfile.mkdtemp(prefix="studio-cli-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_stopped_embedded_cluster_is_not_started_behind_serve(cluster_dir: Path) -> None:
    cluster = LocalPostgres(cluster_dir / "pgdata", durable=False)
    cluster.init()
    for command in (("keys", "list"), ("migrate", "status")):
        result = run_studio(*command, "--data-dir", str(cluster_dir))
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert "is not running: start `studio serve --data-dir" in line
    assert cluster.running_port() is None


def test_a_running_embedded_cluster_is_used_and_left_running(cluster_dir: Path) -> None:
    cluster = LocalPostgres(cluster_dir / "pgdata", durable=False)
    port = cluster.start()
    try:
        master_url = cluster.url(MASTER_DATABASE)
        asyncio.run(create_database_if_missing(master_url))
        asyncio.run(run_one(master_url, "master", mode="up"))

        made = run_studio("tenants", "create", "--name", "Embedded", "--json",
                          "--data-dir", str(cluster_dir))  # fmt: skip
        assert made.returncode == 0, made.stderr
        listed = run_studio("tenants", "list", "--json", data_dir=cluster_dir)  # STUDIO_DATA_DIR
        assert [row["slug"] for row in json_lines(listed.stdout)] == ["embedded"]
        status = run_studio("migrate", "status", "--json", "--data-dir", str(cluster_dir))
        assert status.returncode == 0, status.stdout + status.stderr
        assert [r.get("target") for r in json_lines(status.stdout)[:-1]] == [
            "master",
            "tenant embedded",
        ]
        assert cluster.running_port() == port  # still running for `studio serve`
    finally:
        cluster.stop("immediate")


def test_an_unreachable_master_is_one_line_not_a_traceback() -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/studio_master"
    for command in (("keys", "list"), ("tenants", "list"), ("keys", "revoke", "0123456789ab")):
        result = run_studio(*command, master_url=nowhere)
        assert result.returncode == 3
        [line] = result.stderr.splitlines()
        assert line.startswith(f"studio {' '.join(command[:2])}: the master database 127.0.0.1:")
        assert "Traceback" not in result.stderr


def test_a_master_never_migrated_says_so(fresh_db: str) -> None:
    result = run_studio("tenants", "list", master_url=fresh_db)
    assert result.returncode == 3
    [line] = result.stderr.splitlines()
    assert "`studio migrate up`" in line


# --- --help --------------------------------------------------------------------------------


def parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command and sub-command path, with its parser, from the parser itself."""
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[(*path, name)] = sub
                    walk(sub, (*path, name))

    walk(build_parser(), ())
    return found


def defaults_of(parser: argparse.ArgumentParser) -> list[str]:
    return [
        str(a.default) for a in parser._actions
        if a.option_strings and a.default not in (None, False, "", argparse.SUPPRESS)
    ]  # fmt: skip


@pytest.mark.parametrize("path", parsers(), ids=" ".join)
def test_help_shows_defaults_environment_and_roles(path: tuple[str, ...]) -> None:
    result = run_studio(*path, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for default in defaults_of(parsers()[path]):
        assert f"(default: {default})" in text
    for word in ("STUDIO_DATABASE_URL", "STUDIO_DATA_DIR", "admin", "member", "read_only"):
        assert word in text
    if path[-1] in {"create", "list", "revoke", "isolate", "move", "status", "up", "baseline",
                    "repair"}:  # fmt: skip
        assert "--data-dir" in text


def test_every_command_is_covered() -> None:
    assert {" ".join(p) for p in parsers()} >= {
        "serve", "migrate status", "migrate up", "migrate baseline", "migrate repair",
        "tenants create", "tenants list", "tenants isolate", "tenants move", "keys create",
        "keys list", "keys revoke",
    }  # fmt: skip
