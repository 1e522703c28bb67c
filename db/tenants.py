"""Provisioning an organization: its own database and role, migrated, and a first admin key.

The steps cannot share one transaction (CREATE DATABASE refuses to run inside one), so they are
ordered to be undoable: create the database, give it a role of its own (db/tenant_roles.py) and
migrate it as that role, then register the organization, its database, its role and its key in
one master transaction. If anything fails, the new database and role are dropped again, and
nothing is left behind in the master.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import insert, select

from db.api_keys import create_key
from db.engines import create_engine_for
from db.master_tables import organizations, tenant_databases
from db.migrations.fleet import run_one
from db.migrations.runner import Status
from db.tenant_catalog import TenantLocation, tenant_conninfo, with_database
from db.tenant_roles import (
    IsolationError,
    TenantRole,
    drop_role,
    isolate_database,
    new_password,
    tenant_role_name,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "ProvisionError",
    "ProvisionedTenant",
    "create_database_if_missing",
    "provision_tenant",
    "register_tenant",
    "slugify",
    "tenant_database_name",
]

MAX_IDENTIFIER = 63


class ProvisionError(Exception):
    """The organization could not be provisioned; nothing was left behind."""


@dataclass(frozen=True)
class ProvisionedTenant:
    organization_id: int
    slug: str
    database_name: str
    server_url: str | None
    api_key: str
    role_name: str  # the role the service reaches the database with, its owner


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def tenant_database_name(master_url: str, slug: str) -> str:
    """`<master database>_t_<slug>`: tenants of different masters never share a name."""
    master_db = conninfo_to_dict(master_url).get("dbname") or "studio"
    name = f"{master_db}_t_{slug.replace('-', '_')}"
    if len(name) > MAX_IDENTIFIER:
        raise ProvisionError(f"slug {slug!r} is too long for a database name ({name})")
    return name


async def create_database_if_missing(url: str) -> bool:
    """Create the database `url` names, connecting to its server's `postgres` database."""
    dbname = conninfo_to_dict(url).get("dbname")
    if not dbname:
        raise ProvisionError(f"no database name in {url!r}")
    async with await psycopg.AsyncConnection.connect(
        with_database(url, "postgres"), autocommit=True
    ) as conn:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        if await cur.fetchone():
            return False
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(dbname))))
        return True


async def _drop_database(url: str, role_name: str) -> None:
    """The database, then its role (a role cannot go while it owns a database)."""
    dbname = str(conninfo_to_dict(url)["dbname"])
    async with await psycopg.AsyncConnection.connect(
        with_database(url, "postgres"), autocommit=True
    ) as conn:
        await conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        await drop_role(conn, role_name)


async def _give_own_role(admin_url: str, database_name: str) -> TenantRole:
    role = TenantRole(tenant_role_name(database_name), new_password())
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        await isolate_database(conn, database_name, role, set_password=True)
    return role


async def register_tenant(
    master: AsyncConnection,
    *,
    name: str,
    slug: str,
    database_name: str,
    server_url: str | None = None,
    role: TenantRole | None = None,
) -> int:
    """Record an organization and where its (existing, migrated) database lives; its id.
    Without `role` it is reached as the server's user until `studio tenants isolate`."""
    org_id = await master.scalar(
        insert(organizations).values(name=name, slug=slug).returning(organizations.c.id)
    )
    assert org_id is not None
    await master.execute(
        insert(tenant_databases).values(
            organization_id=org_id,
            server_url=server_url,
            database_name=database_name,
            role_name=None if role is None else role.name,
            role_password=None if role is None else role.password,
        )
    )
    return int(org_id)


async def provision_tenant(
    master_url: str, *, name: str, slug: str | None = None, server_url: str | None = None
) -> ProvisionedTenant:
    slug = slug or slugify(name)
    if not slug:
        raise ProvisionError(f"cannot make a slug from {name!r}; pass one")
    database_name = tenant_database_name(master_url, slug)
    master = create_engine_for(master_url, pool_size=1)
    try:
        async with master.connect() as conn:
            taken = await conn.scalar(
                select(organizations.c.id).where(organizations.c.slug == slug)
            )
        if taken is not None:
            raise ProvisionError(f"an organization with slug {slug!r} already exists")
        admin_url = with_database(server_url or master_url, database_name)
        if not await create_database_if_missing(admin_url):
            raise ProvisionError(f"database {database_name} already exists; refusing to reuse it")
        try:
            role = await _give_own_role(admin_url, database_name)
            # Migrated as its role, as every later `studio migrate up` does: it owns it all.
            location = TenantLocation(0, slug, server_url, database_name, role.name, role.password)
            report = await run_one(
                tenant_conninfo(master_url, location), "tenant", mode="up", target=f"tenant {slug}"
            )
            if report.status not in {Status.APPLIED, Status.UP_TO_DATE}:
                raise ProvisionError(f"migrating the new database failed: {report.as_dict()}")
            async with master.begin() as conn:
                org_id = await register_tenant(
                    conn, name=name, slug=slug, database_name=database_name,
                    server_url=server_url, role=role,
                )  # fmt: skip
                api_key = await create_key(conn, organization_id=org_id, role="admin", name="admin")
        except IsolationError as exc:
            await _drop_database(admin_url, tenant_role_name(database_name))
            raise ProvisionError(str(exc)) from exc
        except BaseException:
            await _drop_database(admin_url, tenant_role_name(database_name))
            raise
    finally:
        await master.dispose()
    return ProvisionedTenant(org_id, slug, database_name, server_url, api_key, role.name)
