"""The master's record of a studio being moved (table tenant_moves, master migration 0006).

One row per studio from the start of its move until its source is dropped. `step` is the
last step completed, so a move interrupted anywhere is continued by running it again. The
switch itself is one transaction: the catalogue row names the new server in the same commit
as the move's step says so, so nothing can see one without the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from db.master_tables import MOVE_STEPS

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "MoveRecord",
    "after",
    "delete_move",
    "list_moves",
    "read_move",
    "record_failure",
    "record_step",
    "retarget_move",
    "start_move",
    "switch_catalogue",
]

_COLUMNS = (
    "organization_id, source_server_url, source_database, target_server_url, step,"
    " last_error, pause_ms"
)


@dataclass(frozen=True)
class MoveRecord:
    organization_id: int
    source_server_url: str | None  # None: the master's own server
    source_database: str
    target_server_url: str
    step: str  # the last step completed (MOVE_STEPS)
    last_error: str | None
    pause_ms: int | None


def after(step: str, other: str) -> bool:
    """`step` comes after `other` in a move."""
    return MOVE_STEPS.index(step) > MOVE_STEPS.index(other)


def _record(row: tuple[object, ...]) -> MoveRecord:
    org, source_url, source_db, target_url, step, error, pause = row
    return MoveRecord(
        int(str(org)),
        None if source_url is None else str(source_url),
        str(source_db),
        str(target_url),
        str(step),
        None if error is None else str(error),
        None if pause is None else int(str(pause)),
    )


async def read_move(
    master: AsyncConnection[tuple[object, ...]], organization_id: int
) -> MoveRecord | None:
    cur = await master.execute(
        f"SELECT {_COLUMNS} FROM tenant_moves WHERE organization_id = %s", (organization_id,)
    )
    row = await cur.fetchone()
    return None if row is None else _record(row)


async def list_moves(master: AsyncConnection[tuple[object, ...]]) -> dict[str, MoveRecord]:
    """Every recorded move, by the studio's slug."""
    cur = await master.execute(
        f"SELECT o.slug, {', '.join('m.' + c.strip() for c in _COLUMNS.split(','))}"
        " FROM tenant_moves m JOIN organizations o ON o.id = m.organization_id"
    )
    return {str(row[0]): _record(row[1:]) for row in await cur.fetchall()}


async def start_move(
    master: AsyncConnection[tuple[object, ...]],
    organization_id: int,
    source_server_url: str | None,
    source_database: str,
    target_server_url: str,
) -> MoveRecord:
    await master.execute(
        "INSERT INTO tenant_moves (organization_id, source_server_url, source_database,"
        " target_server_url, step) VALUES (%s, %s, %s, %s, 'planned')",
        (organization_id, source_server_url, source_database, target_server_url),
    )
    move = await read_move(master, organization_id)
    assert move is not None
    return move


async def retarget_move(
    master: AsyncConnection[tuple[object, ...]], organization_id: int, target_server_url: str
) -> None:
    """Send a move that has copied nothing yet to another server instead."""
    await master.execute(
        "UPDATE tenant_moves SET target_server_url = %s, step = 'planned', updated_at = now()"
        " WHERE organization_id = %s",
        (target_server_url, organization_id),
    )


async def record_step(
    master: AsyncConnection[tuple[object, ...]], organization_id: int, step: str
) -> None:
    await master.execute(
        "UPDATE tenant_moves SET step = %s, last_error = NULL, updated_at = now()"
        " WHERE organization_id = %s",
        (step, organization_id),
    )


async def record_failure(
    master: AsyncConnection[tuple[object, ...]], organization_id: int, step: str, error: str
) -> None:
    """The move failed; `step` is where a re-run continues from."""
    await master.execute(
        "UPDATE tenant_moves SET step = %s, last_error = %s, updated_at = now()"
        " WHERE organization_id = %s",
        (step, error, organization_id),
    )


async def switch_catalogue(
    master: AsyncConnection[tuple[object, ...]], move: MoveRecord, pause_ms: int
) -> None:
    """Point the studio's catalogue row at the target, in one transaction with the step.
    A pooled address goes (its pooler fronts the old server): the studio is served directly on
    its new server until `studio tenants set-pooled-url` names the new server's pooler."""
    async with master.transaction():
        await master.execute(
            "UPDATE tenant_databases SET server_url = %s, database_name = %s, pooled_url = NULL"
            " WHERE organization_id = %s",
            (move.target_server_url, move.source_database, move.organization_id),
        )
        await master.execute(
            "UPDATE tenant_moves SET step = 'switched', pause_ms = %s, last_error = NULL,"
            " updated_at = now() WHERE organization_id = %s",
            (pause_ms, move.organization_id),
        )


async def delete_move(master: AsyncConnection[tuple[object, ...]], organization_id: int) -> None:
    await master.execute("DELETE FROM tenant_moves WHERE organization_id = %s", (organization_id,))
