"""A guarded write refused, then made valid by a concurrent change before its explanation
re-reads: the caller gets the write (or ABORTED), never INTERNAL.

The interleaving is made deterministic: the concurrent change commits, from a connection of
its own, exactly between the refused statement and the explanation's re-read. Everything
else is the service's own code (standard_methods, the session router's guard and
explanation) on a real, migrated tenant database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.rows import dict_row
from sqlalchemy import false

from db.crud import Guard
from db.tenant_catalog import TenantLocation
from server import standard_methods
from server.auth import Principal
from server.context import Ctx
from server.errors import Aborted
from server.routers.sessions import PROJECT_OF_CLIENT, SESSION
from studio.v1 import session_pb2
from tests.migrating import migrate_up

NEXT_PROJECT_ID = 900_001  # an id the identity has not handed out: the race creates it


@pytest.fixture
async def tenant(fresh_db: str) -> str:
    await migrate_up(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO clients (id, name) VALUES (1, 'Ada')")
        conn.execute("INSERT INTO rooms (id, name) VALUES (1, 'Studio A')")
    return fresh_db


@pytest.fixture
async def ctx(tenant: str) -> AsyncIterator[Ctx]:
    # as the service's connections are: autocommit, dict rows
    location = TenantLocation(1, "test", None, "test")
    async with await psycopg.AsyncConnection.connect(
        tenant, autocommit=True, row_factory=dict_row
    ) as conn:
        yield Ctx(Principal("test", "admin", location), conn, "req")


def _project_appears(url: str) -> None:
    """The concurrent change: the project the request names is created (and committed)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projects (id, client_id, name) VALUES (%s, 1, 'Late album')",
            (NEXT_PROJECT_ID,),
        )


def _racing(
    url: str, explain: Callable[[Ctx, session_pb2.Session], Awaitable[None]], calls: list[int]
) -> Callable[[Ctx, session_pb2.Session], Awaitable[None]]:
    """`explain`, after the concurrent change commits (on its first call only)."""

    async def explain_after_the_change(ctx: Ctx, session: session_pb2.Session) -> None:
        if not calls:
            _project_appears(url)
        calls.append(1)
        await explain(ctx, session)

    return explain_after_the_change


def _session(**fields: object) -> session_pb2.Session:
    start = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    return session_pb2.Session(
        client_id=1,
        room_id=1,
        title="Tracking",
        start_time=Timestamp(seconds=start),
        end_time=Timestamp(seconds=start + 3600),
        **fields,  # type: ignore[arg-type]
    )


async def test_a_create_refused_then_made_valid_meanwhile_is_written(tenant: str, ctx: Ctx) -> None:
    calls: list[int] = []
    racing = standard_methods.Guarded(
        PROJECT_OF_CLIENT.condition, _racing(tenant, PROJECT_OF_CLIENT.explain, calls)
    )
    created = await standard_methods.create(
        ctx, SESSION, _session(project_id=NEXT_PROJECT_ID), "", guarded=racing
    )
    assert calls == [1]  # the guard refused once: the race happened
    assert created.project_id == NEXT_PROJECT_ID


async def test_an_update_refused_then_made_valid_meanwhile_is_written(
    tenant: str, ctx: Ctx
) -> None:
    standalone = await standard_methods.create(ctx, SESSION, _session(), "")
    calls: list[int] = []
    racing = standard_methods.Guarded(
        PROJECT_OF_CLIENT.condition,
        _racing(tenant, PROJECT_OF_CLIENT.explain, calls),
        in_place=PROJECT_OF_CLIENT.in_place,
    )
    patch = session_pb2.Session(id=standalone.id, project_id=NEXT_PROJECT_ID)
    # as UpdateSession runs it: one statement, no transaction around it
    linked = await standard_methods.update_at_once(
        ctx, SESSION, "session", patch, None, guarded=racing
    )
    assert calls == [1]
    assert linked.project_id == NEXT_PROJECT_ID
    assert linked.etag != standalone.etag


async def test_a_write_refused_again_after_an_explanation_that_accepts_it_is_aborted(
    ctx: Ctx,
) -> None:
    """The retry is bounded: a guard that keeps refusing what its explanation accepts ends
    in ABORTED (CONCURRENT_MODIFICATION), which a caller retries."""
    explained: list[int] = []

    async def accepts(_ctx: Ctx, _session: session_pb2.Session) -> None:
        explained.append(1)

    refuses = standard_methods.Guarded(lambda _s, _w: Guard(false(), {}), accepts)
    with pytest.raises(Aborted) as raised:
        await standard_methods.create(ctx, SESSION, _session(), "", guarded=refuses)
    assert raised.value.reason == "CONCURRENT_MODIFICATION"
    assert explained == [1, 1]
