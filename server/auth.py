"""Who is calling: `authorization: Bearer <api key>` decides the studio, hence the database.

Keys are looked up by their public prefix and checked by comparing SHA-256 digests in constant
time. Lookups are cached for KEY_CACHE_SECONDS, which bounds how long a revoked key keeps
working. No request field can choose another studio.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from db.api_keys import KeyRecord, find_key, parse_prefix
from server.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncEngine

    from db.tenant_catalog import TenantLocation

__all__ = ["KEY_CACHE_SECONDS", "Authenticator", "Principal"]

KEY_CACHE_SECONDS = 5.0
MAX_CACHED_KEYS = 100_000


@dataclass(frozen=True)
class Principal:
    key_prefix: str
    role: str  # admin | member | read_only
    tenant: TenantLocation

    @property
    def can_write(self) -> bool:
        return self.role != "read_only"


class Authenticator:
    def __init__(self, master: AsyncEngine, *, cache_seconds: float = KEY_CACHE_SECONDS) -> None:
        self.master = master
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    async def _record(self, prefix: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(prefix)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.master.connect() as conn:
            record = await find_key(conn, prefix)
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[prefix] = (now + self.cache_seconds, record)
        return record

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        header = next((v for k, v in metadata if k == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            raise Unauthenticated(
                "MISSING_CREDENTIALS", "send `authorization: Bearer <api key>` with every call"
            )
        key = header.removeprefix("Bearer ").strip()
        prefix = parse_prefix(key)
        record = await self._record(prefix) if prefix else None
        digest = hashlib.sha256(key.encode()).digest()
        if record is None or not hmac.compare_digest(digest, record.key_sha256):
            raise Unauthenticated("INVALID_API_KEY", "the API key is not valid")
        if record.revoked:
            raise Unauthenticated("API_KEY_REVOKED", "the API key was revoked")
        if not record.active_organization:
            raise PermissionDenied("ORGANIZATION_INACTIVE", "the studio is deactivated")
        assert prefix is not None
        return Principal(prefix, record.role, record.tenant)
