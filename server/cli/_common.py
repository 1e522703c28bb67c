"""What several sub-commands share: where the databases and the local data are."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from db.local_postgres import LocalPostgres
from server.database_setup import MASTER_DATABASE

__all__ = [
    "EXIT_CONFIG",
    "NoMasterDatabase",
    "add_data_dir_option",
    "configured_database_url",
    "data_dir_of",
    "default_data_dir",
    "master_database_url",
]

EXIT_CONFIG = 1


class NoMasterDatabase(Exception):
    """Nothing to connect to; the message says what to do (one line)."""


def configured_database_url() -> str | None:
    """STUDIO_DATABASE_URL: the master database. Unset means the embedded default."""
    return os.environ.get("STUDIO_DATABASE_URL") or None


def default_data_dir() -> Path:
    """Project-local state (embedded PostgreSQL, demo key); STUDIO_DATA_DIR moves it."""
    return Path(os.environ.get("STUDIO_DATA_DIR") or ".studio").resolve()


def add_data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where `studio serve` keeps the embedded PostgreSQL, used when "
        "STUDIO_DATABASE_URL is unset (default: $STUDIO_DATA_DIR or ./.studio)",
    )


def data_dir_of(args: argparse.Namespace) -> Path:
    given: Path | None = getattr(args, "data_dir", None)
    return given.resolve() if given else default_data_dir()


def master_database_url(data_dir: Path) -> str:
    """STUDIO_DATABASE_URL, else the embedded PostgreSQL of `data_dir` while it runs.

    Only `studio serve` creates, starts and stops the embedded server: a command that started
    it would race a `serve` starting meanwhile (which would adopt it, then lose it when the
    command stops it), and one that created it would hide a mistyped --data-dir.
    """
    url = configured_database_url()
    if url is not None:
        return url
    pgdata = data_dir / "pgdata"
    serve = f"`studio serve --data-dir {data_dir}`"
    if not (pgdata / "PG_VERSION").exists():
        raise NoMasterDatabase(
            f"no master database: STUDIO_DATABASE_URL is unset and {data_dir} holds no "
            f"embedded PostgreSQL; set STUDIO_DATABASE_URL, or run {serve} to create one"
        )
    embedded = LocalPostgres(pgdata)
    port = embedded.running_port()
    if port is None:
        raise NoMasterDatabase(
            f"the embedded PostgreSQL in {pgdata} is not running: start {serve} first "
            "(or set STUDIO_DATABASE_URL)"
        )
    embedded.port = port
    return embedded.url(MASTER_DATABASE)
