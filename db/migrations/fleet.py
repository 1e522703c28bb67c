"""Migrating the master database and then every tenant it lists.

The master goes first and alone: if it fails, no tenant is touched. Each tenant is then run on
its own connection; one tenant's failure is reported and never stops the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psycopg

from db.migrations.files import Kind, load_migrations, migrations_dir
from db.migrations.runner import DatabaseReport, Mode, Status, run_database
from db.tenant_catalog import describe_conninfo, list_tenants, tenant_conninfo

__all__ = ["run_fleet", "run_one"]


async def run_one(
    conninfo: str,
    kind: Kind,
    *,
    mode: Mode,
    directory: Path | None = None,
    target: str | None = None,
    lock_wait: float = 60.0,
    baseline_version: int | None = None,
) -> DatabaseReport:
    files, problems = load_migrations(directory or migrations_dir(kind))
    return await run_database(
        conninfo,
        files,
        target=target or f"{kind} {describe_conninfo(conninfo)}",
        mode=mode,
        file_problems=problems,
        lock_wait=lock_wait,
        baseline_version=baseline_version,
    )


async def run_fleet(
    master_url: str, *, mode: Mode, lock_wait: float = 60.0
) -> AsyncIterator[DatabaseReport]:
    """Yield the master's report, then one per tenant, as each finishes."""
    master = await run_one(master_url, "master", mode=mode, target="master", lock_wait=lock_wait)
    yield master
    if master.status not in {Status.UP_TO_DATE, Status.APPLIED, Status.PENDING}:
        return
    async with await psycopg.AsyncConnection.connect(master_url, autocommit=True) as conn:
        try:
            tenants = await list_tenants(conn)
        except psycopg.errors.UndefinedTable:
            return  # `status` on a master never migrated: it lists no tenants yet
    files, problems = load_migrations(migrations_dir("tenant"))
    for tenant in tenants:
        yield await run_database(
            tenant_conninfo(master_url, tenant),
            files,
            target=f"tenant {tenant.slug}",
            mode=mode,
            file_problems=problems,
            lock_wait=lock_wait,
        )
