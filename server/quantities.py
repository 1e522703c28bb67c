"""Times and money as the API states them: whole minutes, hours and amounts as exact decimal
strings ("12.50"), never floats."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

__all__ = ["hours_of", "minutes_of", "money"]

CENT = Decimal("0.01")


def minutes_of(seconds: Decimal | int) -> int:
    """Whole minutes, to the nearest (half a minute up), as the database rounds an entry's."""
    return int((Decimal(seconds) / 60).quantize(Decimal(1), ROUND_HALF_UP))


def hours_of(minutes: int) -> str:
    """Minutes as hours, to the hundredth: 750 -> "12.50"."""
    return str((Decimal(minutes) / 60).quantize(CENT, ROUND_HALF_UP))


def money(amount: Decimal | int | None) -> str:
    """An amount to the cent: Decimal("1250") -> "1250.00"; None is "0.00"."""
    return str(Decimal(amount or 0).quantize(CENT, ROUND_HALF_UP))
