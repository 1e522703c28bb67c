"""Where the databases are, and bringing them up to date before serving.

With STUDIO_DATABASE_URL unset, an embedded PostgreSQL runs from a project-local folder; the
master database is created if missing and migrated, and a demo tenant is provisioned once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from db.engines import create_engine_for
from db.local_postgres import LocalPostgres
from db.master_tables import organizations
from db.migrations.fleet import Fleet, FleetOptions
from db.migrations.runner import DatabaseReport, Status
from db.tenant_catalog import with_database
from db.tenants import create_database_if_missing, provision_tenant

__all__ = ["Databases", "DemoTenant", "ensure_demo_tenant", "migrate_all", "open_databases"]

log = logging.getLogger("studio.setup")
MASTER_DATABASE = "studio_master"
DEMO_SLUG = "demo"


@dataclass
class Databases:
    master_url: str
    embedded: LocalPostgres | None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


@dataclass(frozen=True)
class DemoTenant:
    slug: str
    key_file: Path
    created: bool


async def open_databases(database_url: str | None, data_dir: Path) -> Databases:
    """The master database URL, starting the embedded server when no URL is configured."""
    embedded = None
    if database_url is None:
        embedded = LocalPostgres(data_dir / "pgdata")
        await asyncio.to_thread(embedded.start)
        database_url = embedded.url(MASTER_DATABASE)
        log.info(
            "embedded PostgreSQL on 127.0.0.1:%s, data in %s", embedded.port, embedded.data_dir
        )
    databases = Databases(database_url, embedded)
    try:
        if await create_database_if_missing(database_url):
            log.info("created the master database")
    except BaseException:
        databases.close()  # not left running for nobody
        raise
    return databases


MIGRATED = frozenset({Status.APPLIED, Status.UP_TO_DATE})  # anything else is logged as an error


async def migrate_all(master_url: str) -> bool:
    """Apply pending migrations to the master and every tenant, logging each database as it
    finishes; False if the master failed."""

    def log_report(report: DatabaseReport) -> None:
        log.log(logging.INFO if report.status in MIGRATED else logging.ERROR, "migrate %s: %s %s",
                report.target, report.status, report.error or "")  # fmt: skip

    reports = await Fleet(master_url, FleetOptions(mode="up"), on_report=log_report).run()
    return reports[0].status in MIGRATED


async def ensure_demo_tenant(master_url: str, data_dir: Path) -> DemoTenant:
    """Provision the demo studio once; its admin key goes to a file only its owner can read."""
    key_file = data_dir / "demo-api-key"
    engine = create_engine_for(master_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(
                select(organizations.c.id).where(organizations.c.slug == DEMO_SLUG)
            )
    finally:
        await engine.dispose()
    if exists is not None:
        return DemoTenant(DEMO_SLUG, key_file, created=False)
    tenant = await provision_tenant(master_url, name="Demo Studio", slug=DEMO_SLUG)
    await asyncio.to_thread(_write_secret, key_file, tenant.api_key)
    return DemoTenant(DEMO_SLUG, key_file, created=True)


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")


def master_server_url(master_url: str) -> str:
    return with_database(master_url, "postgres")
