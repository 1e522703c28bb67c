"""What a procedure receives besides its request (tRPC's ctx)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from server.auth import Principal

__all__ = ["Ctx"]


@dataclass(frozen=True)
class Ctx:
    """The authenticated caller and its studio's database, inside the call's transaction."""

    principal: Principal
    db: AsyncConnection
    request_id: str
