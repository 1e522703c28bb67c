"""Provisioning an organization: its own database and role, migrated, and a first admin key.

The steps cannot share one transaction (CREATE DATABASE refuses to run inside one), so they are
ordered to be undoable: create the database as a copy of the server's migrated template
(db/tenant_templates.py), give it a role of its own (db/tenant_roles.py), run the files the
template does not hold as that role, then register the organization, its database, its role
and its key in one master transaction. If anything fails, the new database and role are dropped
again, and nothing is left behind in the master. `provision_tenants` does many at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import func, insert, select
from sqlalchemy.exc import DBAPIError

from db.api_keys import create_key
from db.engines import create_engine_for
from db.master_tables import organizations, tenant_databases
from db.migrations.files import MigrationFile, load_migrations, migrations_dir
from db.migrations.fleet import placeholder_values, run_one
from db.migrations.runner import Status
from db.tenant_catalog import TenantLocation, server_of, tenant_conninfo, with_database
from db.tenant_roles import (
    IsolationError,
    TenantRole,
    drop_role,
    ensure_tenant_role,
    isolate_database,
    new_password,
    tenant_role_name,
)
from db.tenant_templates import (
    Template,
    TemplateError,
    copy_template,
    ensure_template,
    finish_copy,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "ProvisionError",
    "ProvisionedTenant",
    "TenantSpec",
    "create_database_if_missing",
    "provision_tenant",
    "provision_tenants",
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


async def register_tenant(
    master: AsyncConnection,
    *,
    name: str,
    slug: str,
    database_name: str,
    server_url: str | None = None,
    role: TenantRole | None = None,
    organization_id: int | None = None,
    pooled_url: str | None = None,
) -> int:
    """Record an organization and where its (existing, migrated) database lives; its id
    (`organization_id`, when it was reserved with `reserve_organization_id`). Without `role`
    it is reached as the server's user until `studio tenants isolate`."""
    values: dict[str, object] = {"name": name, "slug": slug}
    if organization_id is not None:
        values["id"] = organization_id
    org_id = await master.scalar(
        insert(organizations).values(**values).returning(organizations.c.id)
    )
    assert org_id is not None
    await master.execute(
        insert(tenant_databases).values(
            organization_id=org_id,
            server_url=server_url,
            database_name=database_name,
            role_name=None if role is None else role.name,
            role_password=None if role is None else role.password,
            pooled_url=pooled_url,
        )
    )
    return int(org_id)


@dataclass(frozen=True)
class TenantSpec:
    """One studio to provision: `studio tenants create` flags, or a line of --from-file."""

    name: str
    slug: str | None = None
    server_url: str | None = None
    pooled_url: str | None = None  # a pooler in front of server_url the service goes through


@dataclass
class _Provisioning:
    """What a batch shares: the master, the tenant files, each server's template."""

    master_url: str
    master: AsyncEngine
    files: list[MigrationFile]
    problems: list[str]
    templates: dict[str, asyncio.Task[Template | None]] = field(default_factory=dict)
    # Idle connections to each server's postgres database, reused across studios: a new
    # connection costs a password exchange (SCRAM) each time.
    idle: dict[str, list[psycopg.AsyncConnection[tuple[object, ...]]]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def admin(
        self, server_url: str
    ) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        idle = self.idle.setdefault(server_of(server_url), [])
        conn = (
            idle.pop()
            if idle
            else await psycopg.AsyncConnection.connect(
                with_database(server_url, "postgres"), autocommit=True
            )
        )
        try:
            yield conn
        except BaseException:
            await conn.close()
            raise
        idle.append(conn)

    async def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                await conn.close()

    def template(self, server_url: str) -> asyncio.Task[Template | None]:
        """The server's template, built once per batch (and per set of files on the server)."""
        server = server_of(server_url)
        if server not in self.templates:
            self.templates[server] = asyncio.ensure_future(
                ensure_template(server_url, self.master_url, self.files)
            )
        return self.templates[server]


async def _reserve(master: AsyncEngine, slug: str) -> int:
    """The organization's id, before it exists: placeholders (${tenant_id}) need it while
    its database is migrated, before it is registered."""
    async with master.connect() as conn:
        taken = await conn.scalar(select(organizations.c.id).where(organizations.c.slug == slug))
        if taken is not None:
            raise ProvisionError(f"an organization with slug {slug!r} already exists")
        reserved = await conn.scalar(
            select(func.nextval(func.pg_get_serial_sequence("organizations", "id")))
        )
        await conn.commit()
    assert reserved is not None
    return int(reserved)


async def _create_database(
    batch: _Provisioning, admin_url: str, database_name: str, role: TenantRole
) -> Template | None:
    """The new database, owned by its new role: a copy of the server's template, or empty
    when there is none. Refuses a database that exists (before making anything)."""
    template = await batch.template(admin_url)
    async with batch.admin(admin_url) as conn:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database_name,))
        if await cur.fetchone():
            raise ProvisionError(f"database {database_name} already exists; refusing to reuse it")
        try:
            await ensure_tenant_role(conn, role, database_name, set_password=True)
            if template is None:
                await conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database_name), sql.Identifier(role.name)
                    )
                )
            else:
                await copy_template(conn, template, database_name, role)
        except IsolationError as exc:
            raise ProvisionError(str(exc)) from exc
        except BaseException:
            await drop_role(conn, role.name)
            raise
    return template


async def _own_copy(
    admin_url: str, database_name: str, template: Template | None, role: TenantRole
) -> None:
    """Everything in the new database to its role (which owns the database already), and its
    history to the role."""
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        if template is None:
            await isolate_database(conn, database_name, role, set_password=False)
        else:
            await finish_copy(conn, template, role.name)


async def _provision(batch: _Provisioning, spec: TenantSpec) -> ProvisionedTenant:
    slug = spec.slug or slugify(spec.name)
    if not slug:
        raise ProvisionError(f"cannot make a slug from {spec.name!r}; pass one")
    database_name = tenant_database_name(batch.master_url, slug)
    org_id = await _reserve(batch.master, slug)
    admin_url = with_database(spec.server_url or batch.master_url, database_name)
    role = TenantRole(tenant_role_name(database_name), new_password())
    template = await _create_database(batch, admin_url, database_name, role)
    try:
        await _own_copy(admin_url, database_name, template, role)
        held = set(template.versions) if template else set()
        if any(f.version not in held for f in batch.files) or batch.problems:
            # Migrated as its role, as every later `studio migrate up` does: it owns it all.
            location = TenantLocation(
                org_id, slug, spec.server_url, database_name, role.name, role.password
            )
            report = await run_one(
                tenant_conninfo(batch.master_url, location), "tenant", mode="up",
                target=f"tenant {slug}", placeholders=placeholder_values(location),
                files=(batch.files, batch.problems),
            )  # fmt: skip
            if report.status not in {Status.APPLIED, Status.UP_TO_DATE}:
                raise ProvisionError(f"migrating the new database failed: {report.as_dict()}")
        async with batch.master.begin() as conn:
            await register_tenant(
                conn, name=spec.name, slug=slug, database_name=database_name,
                server_url=spec.server_url, role=role, organization_id=org_id,
                pooled_url=spec.pooled_url,
            )  # fmt: skip
            api_key = await create_key(conn, organization_id=org_id, role="admin", name="admin")
    except IsolationError as exc:
        await _drop_database(admin_url, tenant_role_name(database_name))
        raise ProvisionError(str(exc)) from exc
    except BaseException:
        await _drop_database(admin_url, tenant_role_name(database_name))
        raise
    return ProvisionedTenant(org_id, slug, database_name, spec.server_url, api_key, role.name)


async def provision_tenants(
    master_url: str,
    specs: list[TenantSpec],
    *,
    concurrency: int = 4,
    on_done: Callable[[TenantSpec, ProvisionedTenant | ProvisionError], None] | None = None,
    tenant_dir: Path | None = None,
) -> list[ProvisionedTenant | ProvisionError]:
    """Provision each studio (`concurrency` at once), in the order given; one that fails is
    its ProvisionError in the list (and left nothing behind), the others go on.
    `tenant_dir`: tenant files other than the built-in ones."""
    master = create_engine_for(master_url, pool_size=concurrency)
    files, problems = load_migrations(tenant_dir or migrations_dir("tenant"))
    batch = _Provisioning(master_url, master, files, problems)
    slots = asyncio.Semaphore(concurrency)

    async def one(spec: TenantSpec) -> ProvisionedTenant | ProvisionError:
        async with slots:
            try:
                result: ProvisionedTenant | ProvisionError = await _provision(batch, spec)
            except ProvisionError as exc:
                result = exc
            except TemplateError as exc:
                result = ProvisionError(str(exc))
            except (psycopg.Error, DBAPIError) as exc:
                said = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                result = ProvisionError(said[0] if said else type(exc).__name__)
        if on_done is not None:
            on_done(spec, result)
        return result

    try:
        return list(await asyncio.gather(*(one(spec) for spec in specs)))
    finally:
        await batch.close()
        await master.dispose()


async def provision_tenant(
    master_url: str,
    *,
    name: str,
    slug: str | None = None,
    server_url: str | None = None,
    pooled_url: str | None = None,
) -> ProvisionedTenant:
    spec = TenantSpec(name, slug, server_url, pooled_url)
    [result] = await provision_tenants(master_url, [spec])
    if isinstance(result, ProvisionError):
        raise result
    return result
