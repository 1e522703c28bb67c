"""Where tenants live: reading the master's catalogue and building connection strings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from psycopg.conninfo import conninfo_to_dict, make_conninfo

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "TenantLocation",
    "admin_conninfo",
    "describe_conninfo",
    "list_tenants",
    "record_tenant_role",
    "server_of",
    "service_conninfo",
    "set_pooled_url",
    "tenant_conninfo",
    "with_database",
]


@dataclass(frozen=True)
class TenantLocation:
    organization_id: int
    slug: str
    server_url: str | None
    database_name: str
    # The tenant's own role, which owns its database; None: a tenant made before tenant
    # roles, reached as the user of server_url (or of the master URL).
    role_name: str | None = None
    role_password: str | None = field(default=None, repr=False)  # a secret
    # A pooler in front of the server (PgBouncer, transaction mode) the service connects
    # through; None: the service connects to server_url as the runner does.
    pooled_url: str | None = None


def tenant_conninfo(master_url: str, location: TenantLocation) -> str:
    """A tenant's database on its own server, or on the master's when server_url is NULL,
    as the tenant's own role when it has one (never with the server user's password).
    Always the server itself: what the runner and operator commands need (a session)."""
    return _as_tenant(location.server_url or master_url, location)


def service_conninfo(master_url: str, location: TenantLocation) -> str:
    """Where the service reaches a tenant: through its pooler when the catalogue names one
    (as the tenant's role, whose password the pooler checks), else as tenant_conninfo."""
    if location.pooled_url is None:
        return tenant_conninfo(master_url, location)
    return _as_tenant(location.pooled_url, location)


def _as_tenant(base_url: str, location: TenantLocation) -> str:
    params = conninfo_to_dict(base_url)
    params["dbname"] = location.database_name
    if location.role_name is not None:
        params.pop("password", None)
        params["user"] = location.role_name
        if location.role_password is not None:
            params["password"] = location.role_password
    return make_conninfo("", **params)


def admin_conninfo(master_url: str, location: TenantLocation) -> str:
    """A tenant's database as the user of its server URL: for changing its roles, not for
    serving it."""
    return with_database(location.server_url or master_url, location.database_name)


def with_database(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


def server_of(conninfo: str) -> str:
    """host:port of the server a connection string points at."""
    params = conninfo_to_dict(conninfo)
    return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"


def describe_conninfo(conninfo: str) -> str:
    """host:port/dbname, for reports and logs (never the password)."""
    return f"{server_of(conninfo)}/{conninfo_to_dict(conninfo).get('dbname', '')}"


async def list_tenants(master: AsyncConnection[tuple[object, ...]]) -> list[TenantLocation]:
    cur = await master.execute(
        "SELECT o.id, o.slug, t.server_url, t.database_name, t.role_name, t.role_password,"
        " t.pooled_url FROM tenant_databases t JOIN organizations o ON o.id = t.organization_id"
        " ORDER BY o.id"
    )
    return [
        TenantLocation(int(str(i)), str(s), _text(u), str(d), _text(r), _text(p), _text(q))
        for i, s, u, d, r, p, q in await cur.fetchall()
    ]


def _text(value: object) -> str | None:
    return None if value is None else str(value)


async def record_tenant_role(
    master: AsyncConnection[tuple[object, ...]],
    organization_id: int,
    role_name: str,
    role_password: str,
) -> None:
    """Reach the tenant as `role_name` from now on (servers pick it up within their key
    cache time: a tenant's pool is keyed by its role too)."""
    await master.execute(
        "UPDATE tenant_databases SET role_name = %s, role_password = %s WHERE organization_id = %s",
        (role_name, role_password, organization_id),
    )


async def set_pooled_url(
    master: AsyncConnection[tuple[object, ...]],
    master_url: str,
    pooled_url: str | None,
    *,
    slug: str | None = None,
    server: str | None = None,
) -> list[TenantLocation]:
    """Serve one studio (`slug`), or every studio on `server` (host:port), through
    `pooled_url` (None: directly again); the tenants it changed. Servers pick the change up
    within their key cache time (a tenant's pool is keyed by its pooled URL too)."""
    tenants = [
        t
        for t in await list_tenants(master)
        if t.slug == slug or server_of(t.server_url or master_url) == server
    ]
    if tenants:
        await master.execute(
            "UPDATE tenant_databases SET pooled_url = %s WHERE organization_id = ANY(%s)",
            (pooled_url, [t.organization_id for t in tenants]),
        )
    return tenants
