"""Opaque, keyset page tokens (AIP-158).

A token is the base64url of an internal PageToken message: the sort key of the last item, and
a hash of the request's filters. A token sent with other filters, or one we did not make, is
INVALID_ARGUMENT; an empty next_page_token is the only end-of-list signal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from server.errors import FieldViolation, InvalidArgument
from studio.internal.v1.page_token_pb2 import PageToken

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "decode_token",
    "encode_token",
    "page_size",
    "token_time",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 means the default; more than the maximum is served as the maximum."""
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _query_hash(request: Message) -> bytes:
    filters = type(request)()
    filters.CopyFrom(request)
    filters.ClearField("page_token")
    filters.ClearField("page_size")
    return hashlib.sha256(filters.SerializeToString(deterministic=True)).digest()[:16]


def encode_token(
    request: Message,
    last_id: int,
    last_time: datetime | None = None,
    last_number: int | None = None,
) -> str:
    token = PageToken(last_id=last_id, query_hash=_query_hash(request))
    if last_time is not None:
        token.last_time.FromDatetime(last_time)
    if last_number is not None:
        token.last_number = last_number
    return base64.urlsafe_b64encode(token.SerializeToString()).decode().rstrip("=")


def _invalid(why: str) -> InvalidArgument:
    return InvalidArgument(
        "INVALID_PAGE_TOKEN",
        f"page_token {why}",
        field_violations=(FieldViolation("page_token", why, "INVALID_PAGE_TOKEN"),),
    )


def decode_token(request: Message) -> PageToken | None:
    """The token of `request` (None on the first page), checked against its filters."""
    raw: str = getattr(request, "page_token")  # noqa: B009 (every List request has one)
    if not raw:
        return None
    try:
        token = PageToken.FromString(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, DecodeError, ValueError):
        raise _invalid("is not a token this service issued") from None
    if token.query_hash != _query_hash(request):
        raise _invalid("was issued for a request with other filters")
    return token


def token_time(token: PageToken) -> datetime:
    return token.last_time.ToDatetime(tzinfo=UTC)
