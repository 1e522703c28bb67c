"""The migration runner on one tenant database, as the migration tests drive it, and the
built-in tenant versions, so that a test adding a file of its own names the next one (a new
built-in migration changes no test)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from db.migrations.files import load_migrations, migrations_dir
from db.migrations.fleet import run_one
from db.migrations.runner import DatabaseReport

__all__ = ["LATEST", "TENANT_VERSIONS", "CopyMigrations", "migrate_up", "next_file"]

CopyMigrations = Callable[..., Path]  # the tenant_migrations fixture: a folder of copies

TENANT_VERSIONS = [f.version for f in load_migrations(migrations_dir("tenant"))[0]]
LATEST = TENANT_VERSIONS[-1]  # the version a freshly provisioned studio is at


def next_file(name: str, step: int = 1) -> str:
    """The file name of a test's own migration, `step` versions after the built-in ones."""
    return f"{LATEST + step:04d}_{name}.sql"


async def migrate_up(url: str, folder: Path | None = None, **kwargs: object) -> DatabaseReport:
    return await run_one(url, "tenant", mode="up", directory=folder, **kwargs)  # type: ignore[arg-type]
