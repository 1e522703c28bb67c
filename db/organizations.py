"""Organizations (studios, tenants) as operators see them: found by slug, listed with their
database and its server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from db.master_tables import organizations, tenant_databases

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["OrganizationInfo", "list_organizations", "organization_id"]


@dataclass(frozen=True)
class OrganizationInfo:
    slug: str
    name: str
    database_name: str
    server_url: str | None  # None: the master's own server
    is_active: bool
    created_at: datetime


async def organization_id(conn: AsyncConnection, slug: str) -> int | None:
    found: int | None = await conn.scalar(
        select(organizations.c.id).where(organizations.c.slug == slug)
    )
    return found


async def list_organizations(conn: AsyncConnection) -> list[OrganizationInfo]:
    query = (
        select(
            organizations.c.slug,
            organizations.c.name,
            tenant_databases.c.database_name,
            tenant_databases.c.server_url,
            organizations.c.is_active,
            organizations.c.created_at,
        )
        .join(tenant_databases, tenant_databases.c.organization_id == organizations.c.id)
        .order_by(organizations.c.id)
    )
    return [OrganizationInfo(*row) for row in (await conn.execute(query)).all()]
