"""Converting tenants the catalogue lists to roles of their own (`studio tenants isolate`).

Per tenant, in this order, each step safe to repeat: give its database to its role in one
transaction of the tenant's server (db/tenant_roles.py), record the role in the master, then
log in as the role to prove the service can. A tenant already isolated changes nothing; one
interrupted between the two transactions gets a new password on the next run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import psycopg

from db.tenant_catalog import (
    TenantLocation,
    admin_conninfo,
    describe_conninfo,
    record_tenant_role,
    tenant_conninfo,
)
from db.tenant_roles import (
    IsolationError,
    TenantRole,
    isolate_database,
    new_password,
    tenant_role_name,
)

__all__ = ["IsolationReport", "IsolationStatus", "isolate_tenant"]


class IsolationStatus(enum.StrEnum):
    ISOLATED = "isolated"  # converted by this run
    ALREADY_ISOLATED = "already-isolated"  # nothing to change
    FAILED = "failed"


@dataclass
class IsolationReport:
    tenant: str  # its slug
    database: str  # host:port/dbname
    role: str
    status: IsolationStatus
    changes: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "database": self.database,
            "role": self.role,
            "status": str(self.status),
            "changes": self.changes,
            "error": self.error,
        }


async def _log_in(conninfo: str) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo, connect_timeout=10) as conn:
        await conn.execute("SELECT 1")


async def isolate_tenant(
    master: psycopg.AsyncConnection[tuple[object, ...]], master_url: str, tenant: TenantLocation
) -> IsolationReport:
    """Make `tenant` reached as a role of its own; `master` is an autocommit connection."""
    role = TenantRole(
        tenant.role_name or tenant_role_name(tenant.database_name),
        tenant.role_password or new_password(),
    )
    admin_url = admin_conninfo(master_url, tenant)
    report = IsolationReport(
        tenant.slug, describe_conninfo(admin_url), role.name, IsolationStatus.ALREADY_ISOLATED
    )
    try:
        async with await psycopg.AsyncConnection.connect(
            admin_url, autocommit=True, connect_timeout=10
        ) as conn:
            report.changes = await isolate_database(
                conn, tenant.database_name, role, set_password=tenant.role_password is None
            )
        if (tenant.role_name, tenant.role_password) != (role.name, role.password):
            await record_tenant_role(master, tenant.organization_id, role.name, role.password)
            report.changes.append("recorded the role in the catalogue")
        await _log_in(
            tenant_conninfo(master_url, replace(tenant, role_name=role.name,
                                                role_password=role.password))
        )  # fmt: skip
    except (psycopg.Error, IsolationError) as exc:
        report.status = IsolationStatus.FAILED
        report.error = str(exc).strip()
        return report
    if report.changes:
        report.status = IsolationStatus.ISOLATED
    return report
