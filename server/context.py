"""What a procedure receives besides its request (tRPC's ctx)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db.sql import Connection
    from server.auth import Principal

__all__ = ["Ctx"]


@dataclass(frozen=True)
class Ctx:
    """The authenticated caller and its studio's database, inside the call's transaction."""

    principal: Principal
    db: Connection
    request_id: str
