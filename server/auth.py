"""Who is calling: `authorization: Bearer <api key>` decides the studio, hence the database.

Keys are looked up by their public prefix and checked by comparing SHA-256 digests in constant
time. Lookups are cached for KEY_CACHE_SECONDS, which bounds how long a revoked key keeps
working: prefixes that exist and prefixes that do not, in two caches, so that guesses filling
the second never push out the first. No request field can choose another studio.

A key is verified without trusting the caller's address, so a caller whose address is
throttled for failed authentications (server/auth_throttle.py) still gets in with a valid key.
What such a caller cannot do is make us look prefixes up one by one: a prefix this process has
never seen exist waits for the next batched lookup (one query every LOOKUP_BATCH_SECONDS for
all of them), so guessing from a throttled address costs the master database next to nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from db.api_keys import KeyRecord, find_key, find_keys, parse_prefix
from server.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from db.tenant_catalog import TenantLocation

__all__ = ["KEY_CACHE_SECONDS", "Authenticator", "BatchedLookup", "Principal", "bearer_key"]

KEY_CACHE_SECONDS = 5.0
MAX_CACHED_KEYS = 100_000  # keys that exist: bounded by the keys there are
MAX_CACHED_UNKNOWN = 100_000  # prefixes that do not: bounded here, cleared on their own
LOOKUP_BATCH_SECONDS = 0.1

EXPECTED = "send `authorization: Bearer <api key>` with every call"
# RFC 7235 credentials: the scheme, one or more spaces, one token68.
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer_key(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """The API key of `authorization: Bearer <key>` (the scheme in any case, RFC 7235)."""
    header = next((v for k, v in metadata if k == "authorization"), None)
    if header is None:
        raise Unauthenticated("MISSING_CREDENTIALS", EXPECTED)
    scheme, _, key = header.strip(" ").partition(" ") if isinstance(header, str) else ("", "", "")
    key = key.lstrip(" ")
    if scheme.lower() != "bearer":
        problem = "the authorization header must use the Bearer scheme"
    elif not key:
        problem = "the authorization header has no API key after Bearer"
    elif not _TOKEN68.fullmatch(key):
        problem = "the API key in the authorization header must be one word, without spaces"
    else:
        return key
    raise Unauthenticated("MALFORMED_CREDENTIALS", f"{problem}: {EXPECTED}")


@dataclass(frozen=True)
class Principal:
    key_prefix: str
    role: str  # admin | member | read_only
    tenant: TenantLocation

    @property
    def can_write(self) -> bool:
        return self.role != "read_only"


class BatchedLookup:
    """Looks prefixes up together: every prefix asked for within `interval` of the last query
    goes into the next one, so any number of callers cost one query per interval."""

    def __init__(
        self,
        query: Callable[[list[str]], Awaitable[dict[str, KeyRecord]]],
        *,
        interval: float = LOOKUP_BATCH_SECONDS,
    ) -> None:
        self.query = query
        self.interval = interval
        self._pending: dict[str, asyncio.Future[KeyRecord | None]] = {}
        self._next_query_at = 0.0
        self._running: asyncio.Task[None] | None = None

    async def find(self, prefix: str) -> KeyRecord | None:
        future = self._pending.get(prefix)
        if future is None:
            future = self._pending[prefix] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieved)  # a failure nobody awaits is not logged twice
            if self._running is None:
                self._running = asyncio.create_task(self._query_pending())
        return await asyncio.shield(future)  # one caller cancelled does not cancel the rest

    async def _query_pending(self) -> None:
        delay = self._next_query_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        # Prefixes asked for from here on wait for the next query.
        batch, self._pending, self._running = self._pending, {}, None
        self._next_query_at = time.monotonic() + self.interval
        try:
            found = await self.query(list(batch))
        except Exception as exc:  # noqa: BLE001 (each caller gets the failure, mapped as usual)
            for future in batch.values():
                future.set_exception(exc)
            return
        for prefix, future in batch.items():
            future.set_result(found.get(prefix))


def _retrieved(future: asyncio.Future[KeyRecord | None]) -> None:
    if not future.cancelled():
        future.exception()


class Authenticator:
    def __init__(self, master: AsyncEngine, *, cache_seconds: float = KEY_CACHE_SECONDS) -> None:
        self.master = master
        self.cache_seconds = cache_seconds
        # prefix -> (fresh until, record). An entry stays after it expires: the prefix is
        # known to exist, so a throttled caller's lookup of it goes straight to the database.
        self._keys: dict[str, tuple[float, KeyRecord]] = {}
        self._unknown: dict[str, float] = {}  # prefix -> known not to exist until
        self._batched = BatchedLookup(self._find_keys)
        # Lookups answered from the caches, and those that went to the master (the metrics).
        self.cache_hits = 0
        self.cache_misses = 0
        # organization id -> when its database last failed: keys of that studio cached
        # before then are looked up again, so a studio that moved is found at its new
        # place by the next call, not after the cache time (studio tenants move).
        self._location_failed: dict[int, float] = {}

    async def _find_keys(self, prefixes: list[str]) -> dict[str, KeyRecord]:
        async with self.master.connect() as conn:
            return await find_keys(conn, prefixes)

    async def _record(self, prefix: str, *, throttled: bool) -> KeyRecord | None:
        now = time.monotonic()
        known = self._keys.get(prefix)
        if known is not None and known[0] > now and not self._location_stale(*known):
            self.cache_hits += 1
            return known[1]
        if known is None and self._unknown.get(prefix, 0.0) > now:
            self.cache_hits += 1
            return None
        self.cache_misses += 1
        if known is None and throttled:
            record = await self._batched.find(prefix)
            self._remember(prefix, record, now)
            return record
        async with self.master.connect() as conn:
            record = await find_key(conn, prefix)
        self._remember(prefix, record, now)
        return record

    def _location_stale(self, until: float, record: KeyRecord) -> bool:
        failed = self._location_failed.get(record.tenant.organization_id)
        return failed is not None and until - self.cache_seconds <= failed

    def location_failed(self, tenant: TenantLocation) -> None:
        """The studio's database failed as if the studio had moved: read where it lives
        again on its next call (one master lookup per key, however many calls failed)."""
        if len(self._location_failed) >= MAX_CACHED_KEYS:
            self._location_failed.clear()
        self._location_failed[tenant.organization_id] = time.monotonic()

    def _remember(self, prefix: str, record: KeyRecord | None, now: float) -> None:
        until = now + self.cache_seconds
        if record is None:
            self._keys.pop(prefix, None)
            if len(self._unknown) >= MAX_CACHED_UNKNOWN:
                self._unknown.clear()
            self._unknown[prefix] = until
            return
        if len(self._keys) >= MAX_CACHED_KEYS:
            self._keys.clear()
        self._keys[prefix] = (until, record)

    async def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], *, throttled: bool = False
    ) -> Principal:
        """The caller's principal. `throttled`: the caller's address failed too often, so a
        prefix never seen to exist is looked up only in a batch (see BatchedLookup)."""
        key = bearer_key(metadata)
        prefix = parse_prefix(key)
        record = await self._record(prefix, throttled=throttled) if prefix else None
        digest = hashlib.sha256(key.encode()).digest()
        if record is None or not hmac.compare_digest(digest, record.key_sha256):
            raise Unauthenticated("INVALID_API_KEY", "the API key is not valid")
        if record.revoked:
            raise Unauthenticated("API_KEY_REVOKED", "the API key was revoked")
        if not record.active_organization:
            raise PermissionDenied("ORGANIZATION_INACTIVE", "the studio is deactivated")
        assert prefix is not None
        return Principal(prefix, record.role, record.tenant)
