"""The migration runner on one tenant database, as the migration tests drive it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from db.migrations.fleet import run_one
from db.migrations.runner import DatabaseReport

__all__ = ["CopyMigrations", "migrate_up"]

CopyMigrations = Callable[..., Path]  # the tenant_migrations fixture: a folder of copies


async def migrate_up(url: str, folder: Path | None = None, **kwargs: object) -> DatabaseReport:
    return await run_one(url, "tenant", mode="up", directory=folder, **kwargs)  # type: ignore[arg-type]
