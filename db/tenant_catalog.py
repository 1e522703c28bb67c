"""Where tenants live: reading the master's catalogue and building connection strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg.conninfo import conninfo_to_dict, make_conninfo

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "TenantLocation",
    "describe_conninfo",
    "list_tenants",
    "server_of",
    "tenant_conninfo",
    "with_database",
]


@dataclass(frozen=True)
class TenantLocation:
    organization_id: int
    slug: str
    server_url: str | None
    database_name: str


def tenant_conninfo(master_url: str, location: TenantLocation) -> str:
    """A tenant's database on its own server, or on the master's when server_url is NULL."""
    return make_conninfo(location.server_url or master_url, dbname=location.database_name)


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
        "SELECT o.id, o.slug, t.server_url, t.database_name"
        " FROM tenant_databases t JOIN organizations o ON o.id = t.organization_id"
        " ORDER BY o.id"
    )
    return [
        TenantLocation(int(str(i)), str(s), None if u is None else str(u), str(d))
        for i, s, u, d in await cur.fetchall()
    ]
