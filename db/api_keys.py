"""API keys: made random, shown once, stored as a hash, looked up by a public prefix."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select, update

from db.master_tables import api_keys, organizations, tenant_databases
from db.tenant_catalog import TenantLocation

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "ApiKeyInfo",
    "KeyRecord",
    "NewApiKey",
    "create_key",
    "find_key",
    "list_keys",
    "new_api_key",
    "parse_prefix",
    "revoke_key",
]

KEY_PREFIX = "sk_"


@dataclass(frozen=True)
class NewApiKey:
    plaintext: str  # shown once to whoever asked for the key, never stored
    prefix: str
    sha256: bytes


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    organization_slug: str
    name: str
    prefix: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class KeyRecord:
    """What authenticating a key needs: its hash, its role, and the studio it opens."""

    key_sha256: bytes
    role: str
    revoked: bool
    active_organization: bool
    tenant: TenantLocation


def parse_prefix(plaintext: str) -> str | None:
    """The public prefix of a well-formed key, else None."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    prefix, sep, secret = plaintext[len(KEY_PREFIX) :].partition("_")
    if not sep or len(prefix) != 12 or not secret:
        return None
    return prefix


async def find_key(conn: AsyncConnection, prefix: str) -> KeyRecord | None:
    row = (
        await conn.execute(
            select(
                api_keys.c.key_sha256,
                api_keys.c.role,
                api_keys.c.revoked_at.is_not(None),
                organizations.c.is_active,
                organizations.c.id,
                organizations.c.slug,
                tenant_databases.c.server_url,
                tenant_databases.c.database_name,
                tenant_databases.c.role_name,
                tenant_databases.c.role_password,
            )
            .join(organizations, organizations.c.id == api_keys.c.organization_id)
            .join(tenant_databases, tenant_databases.c.organization_id == organizations.c.id)
            .where(api_keys.c.key_prefix == prefix)
        )
    ).first()
    if row is None:
        return None
    sha, role, revoked, active, org_id, slug, server_url, database_name, *tenant_role = row
    return KeyRecord(
        bytes(sha), role, bool(revoked), bool(active),
        TenantLocation(org_id, slug, server_url, database_name, *tenant_role),
    )  # fmt: skip


def new_api_key() -> NewApiKey:
    """`sk_<12 hex prefix>_<256-bit secret>`; the prefix finds the row, the hash checks it."""
    prefix = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return NewApiKey(plaintext, prefix, hashlib.sha256(plaintext.encode()).digest())


async def create_key(
    conn: AsyncConnection, *, organization_id: int, role: str, name: str = ""
) -> str:
    key = new_api_key()
    await conn.execute(
        insert(api_keys).values(
            organization_id=organization_id,
            name=name,
            key_prefix=key.prefix,
            key_sha256=key.sha256,
            role=role,
        )
    )
    return key.plaintext


async def list_keys(conn: AsyncConnection, *, slug: str | None = None) -> list[ApiKeyInfo]:
    query = (
        select(
            api_keys.c.id,
            organizations.c.slug,
            api_keys.c.name,
            api_keys.c.key_prefix,
            api_keys.c.role,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
        )
        .join(organizations, organizations.c.id == api_keys.c.organization_id)
        .order_by(api_keys.c.id)
    )
    if slug is not None:
        query = query.where(organizations.c.slug == slug)
    return [ApiKeyInfo(*row) for row in (await conn.execute(query)).all()]


async def revoke_key(conn: AsyncConnection, *, prefix: str) -> bool:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.key_prefix == prefix, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return bool(result.rowcount)
