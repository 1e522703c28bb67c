"""Ending a move: dropping the source once the studio is served from its copy
(`studio tenants move SLUG --drop-source`), or abandoning a move that has not switched
(`--abort`).

Dropping is refused until the catalogue names the copy: before that, the source is the
studio. Aborting is refused after it: then the copy is the studio.
"""

from __future__ import annotations

from psycopg import sql

from db.tenant_catalog import server_of, with_database
from db.tenant_move import MoveError, connect_admin, find_tenant, release_hold
from db.tenant_move_state import MoveRecord, after, delete_move, read_move
from db.tenant_roles import drop_role

__all__ = ["abort_move", "drop_source"]


async def _recorded(master_url: str, slug: str) -> tuple[MoveRecord, str | None, str, str | None]:
    """The studio's move, its role, and where the catalogue says it lives now."""
    async with await connect_admin(master_url) as master:
        tenant = await find_tenant(master, slug)
        move = await read_move(master, tenant.organization_id)
    if move is None:
        raise MoveError(f"no move of studio {slug} is recorded")
    return move, tenant.role_name, tenant.database_name, tenant.server_url


async def _drop(server_url: str, database: str, role: str | None) -> None:
    """Drop `database` from the server of `server_url`, and its role if it is ours."""
    async with await connect_admin(with_database(server_url, "postgres")) as conn:
        await conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        if role is not None:
            await drop_role(conn, role)


async def drop_source(master_url: str, slug: str) -> dict[str, str]:
    """Drop the source database (and the studio's role there) of a switched move."""
    move, role, _database, server_url = await _recorded(master_url, slug)
    source_server = move.source_server_url or master_url
    if not after(move.step, "verified") or server_url != move.target_server_url:
        raise MoveError(
            f"the move of studio {slug} has not switched (last step: {move.step}): its source"
            " still serves it; refusing to drop it"
        )
    if server_of(source_server) == server_of(server_url or master_url):
        raise MoveError(f"the source of studio {slug} is where it lives now; refusing")
    await _drop(source_server, move.source_database, role)
    async with await connect_admin(master_url) as master:
        await delete_move(master, move.organization_id)
    return {"tenant": slug, "dropped": f"{server_of(source_server)}/{move.source_database}"}


async def abort_move(master_url: str, slug: str) -> dict[str, str]:
    """Abandon a move that has not switched: the source takes writes again, the copy (if any)
    is dropped, the record deleted."""
    move, role, database, _server_url = await _recorded(master_url, slug)
    if after(move.step, "verified"):
        raise MoveError(
            f"the move of studio {slug} has switched: the copy is the studio now;"
            " finish it (run it again) and then --drop-source"
        )
    source_server = move.source_server_url or master_url
    await release_hold(with_database(source_server, database), database)
    if move.step != "planned":  # a copy may have been started: it is ours to drop
        await _drop(move.target_server_url, database, role)
    async with await connect_admin(master_url) as master:
        await delete_move(master, move.organization_id)
    return {"tenant": slug, "aborted": f"{server_of(move.target_server_url)}/{database}"}
