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
    from collections.abc import Sequence
    from datetime import datetime
    from typing import Any

    from sqlalchemy import Row, Select
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "ApiKeyInfo",
    "KeyRecord",
    "KeyReference",
    "NewApiKey",
    "create_key",
    "find_key",
    "find_keys",
    "list_keys",
    "masked_key",
    "new_api_key",
    "parse_key_reference",
    "parse_prefix",
    "revoke_key",
]

KEY_PREFIX = "sk_"
PREFIX_LENGTH = 12
ELIDED = ("…", "...")  # how `masked_key` ends, as printed and as typed back


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
    if not sep or len(prefix) != PREFIX_LENGTH or not secret:
        return None
    return prefix


def masked_key(prefix: str) -> str:
    """How a key is shown after it was created: `sk_<prefix>_…`."""
    return f"{KEY_PREFIX}{prefix}_{ELIDED[0]}"


@dataclass(frozen=True)
class KeyReference:
    """A key an operator names: its prefix, and its hash when the whole key was given."""

    prefix: str
    sha256: bytes | None


def parse_key_reference(text: str) -> KeyReference | None:
    """The whole key, or the key as listed: `sk_<prefix>_…` (or `...`, or nothing after the
    prefix), or the bare prefix of `keys list --json`. None if it is none of these."""
    text = text.strip()
    if (prefix := parse_prefix(text)) is not None and not text.endswith(ELIDED):
        return KeyReference(prefix, hashlib.sha256(text.encode()).digest())
    for elided in ELIDED:
        text = text.removesuffix(elided)
    prefix = text.removeprefix(KEY_PREFIX).removesuffix("_")
    if len(prefix) != PREFIX_LENGTH or not (prefix.isascii() and prefix.isalnum()):
        return None
    return KeyReference(prefix, None)


def _key_records() -> Select[Any]:
    return (
        select(
            api_keys.c.key_prefix,
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
            tenant_databases.c.pooled_url,
        )
        .join(organizations, organizations.c.id == api_keys.c.organization_id)
        .join(tenant_databases, tenant_databases.c.organization_id == organizations.c.id)
    )


def _key_record(row: Row[Any]) -> KeyRecord:
    _prefix, sha, role, revoked, active, org_id, slug, server_url, database_name, *tenant_role = (
        tuple(row)
    )
    return KeyRecord(
        bytes(sha), role, bool(revoked), bool(active),
        TenantLocation(org_id, slug, server_url, database_name, *tenant_role),
    )  # fmt: skip


async def find_key(conn: AsyncConnection, prefix: str) -> KeyRecord | None:
    row = (await conn.execute(_key_records().where(api_keys.c.key_prefix == prefix))).first()
    return None if row is None else _key_record(row)


async def find_keys(conn: AsyncConnection, prefixes: Sequence[str]) -> dict[str, KeyRecord]:
    """The keys among `prefixes` that exist, in one query (prefix -> record)."""
    rows = await conn.execute(_key_records().where(api_keys.c.key_prefix.in_(prefixes)))
    return {row[0]: _key_record(row) for row in rows}


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


async def revoke_key(conn: AsyncConnection, key: KeyReference) -> bool:
    """Revoke the active key `key` names (a whole key must match its hash, not only its
    prefix); False if there is none."""
    query = update(api_keys).where(
        api_keys.c.key_prefix == key.prefix, api_keys.c.revoked_at.is_(None)
    )
    if key.sha256 is not None:
        query = query.where(api_keys.c.key_sha256 == key.sha256)
    result = await conn.execute(query.values(revoked_at=func.now()))
    return bool(result.rowcount)
