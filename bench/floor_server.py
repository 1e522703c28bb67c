"""The floor: what grpc.aio and psycopg alone cost for each call of the API benchmark.

A server with nothing of ours: no auth, no validation, no tenant routing, no SQLAlchemy, no
logging; a psycopg pool of 5 connections to one database, the statement sent as is (the same
statement studio-rpc sends: a booking with a project checks it, a link checks it in the
UPDATE), the row put in the response. It counts its successes and failures, which
`bench.Floor/Counts` answers (as JSON): h2load counts an HTTP 200 carrying a gRPC error as a
success. The API benchmark runs it beside `studio serve` so that the gap to pgbench can
be split into what the transport and driver cost (this) and what the service adds.

    python -m bench.floor_server <conninfo> [uvloop|asyncio]
        prints "serving gRPC on 127.0.0.1:<port>"

It runs on the event loop studio-rpc runs on (uvloop, unless told): the floor is what the
same transport and driver cost, on the same loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from datetime import UTC
from typing import Any

import grpc
import uvloop
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from studio.v1 import session_pb2 as pb

GET = "SELECT * FROM sessions WHERE id = %s"
# cancelled bookings, as the benchmark sends them (bench/api_bench.py: one body, repeated)
CREATE = (
    "INSERT INTO sessions (client_id, room_id, title, start_time, end_time, status)"
    " VALUES (%s, %s, %s, %s, %s, 'cancelled') RETURNING *"
)
CREATE_IN_PROJECT = (
    "INSERT INTO sessions (client_id, room_id, title, start_time, end_time, project_id, status)"
    " SELECT %(client)s, %(room)s, %(title)s, %(start)s, %(end)s, %(project)s, 'cancelled'"
    " WHERE EXISTS"
    " (SELECT 1 FROM projects WHERE id = %(project)s AND client_id = %(client)s FOR SHARE)"
    " RETURNING *"
)
LINK = (
    "UPDATE sessions SET project_id = %(project)s, version = version + 1, updated_at = now()"
    " WHERE id = %(id)s AND EXISTS (SELECT 1 FROM projects WHERE id = %(project)s"
    " AND client_id = sessions.client_id FOR SHARE) RETURNING *"
)
UNLINK = (
    "UPDATE sessions SET project_id = NULL, version = version + 1, updated_at = now()"
    " WHERE id = %(id)s RETURNING *"
)
LIST_BY_PROJECT = "SELECT * FROM sessions WHERE project_id = %s ORDER BY start_time, id LIMIT %s"


def _session(row: dict[str, Any]) -> pb.Session:
    session = pb.Session(
        id=row["id"], client_id=row["client_id"], room_id=row["room_id"], title=row["title"]
    )
    session.start_time.FromDatetime(row["start_time"])
    session.end_time.FromDatetime(row["end_time"])
    if row["project_id"] is not None:
        session.project_id = row["project_id"]
    return session


ANSWERED: Counter[str] = Counter()  # "OK" and "failed": the benchmark checks successes


def counted(handler: Any) -> Any:  # noqa: ANN401
    async def call(request: Any, context: object) -> Any:  # noqa: ANN401
        try:
            response = await handler(request, context)
        except asyncio.CancelledError:  # in flight as h2load closed: not counted, as studio's
            ANSWERED["cancelled"] += 1
            raise
        except BaseException:
            ANSWERED["failed"] += 1
            raise
        ANSWERED["OK"] += 1
        return response

    return call


async def _counts(_request: bytes, _context: object) -> bytes:
    return json.dumps(dict(ANSWERED)).encode()


async def serve(conninfo: str) -> None:
    pool = AsyncConnectionPool(
        conninfo, min_size=5, max_size=5, kwargs={"row_factory": dict_row}, open=False
    )
    await pool.open(wait=True)

    async def get(request: pb.GetSessionRequest, _: object) -> pb.GetSessionResponse:
        async with pool.connection() as conn:
            row = await (await conn.execute(GET, (request.id,), prepare=True)).fetchone()
        assert row is not None
        return pb.GetSessionResponse(session=_session(row))

    async def create(request: pb.CreateSessionRequest, _: object) -> pb.CreateSessionResponse:
        s = request.session
        start, end = s.start_time.ToDatetime(tzinfo=UTC), s.end_time.ToDatetime(tzinfo=UTC)
        async with pool.connection() as conn:
            if s.HasField("project_id"):
                params = {"client": s.client_id, "room": s.room_id, "title": s.title,
                          "start": start, "end": end, "project": s.project_id}  # fmt: skip
                cursor = await conn.execute(CREATE_IN_PROJECT, params, prepare=True)
            else:
                params_ = (s.client_id, s.room_id, s.title, start, end)
                cursor = await conn.execute(CREATE, params_, prepare=True)
            row = await cursor.fetchone()
        assert row is not None
        return pb.CreateSessionResponse(session=_session(row))

    async def update(request: pb.UpdateSessionRequest, _: object) -> pb.UpdateSessionResponse:
        s = request.session  # a link or an unlink of project_id, as the benchmark sends
        async with pool.connection() as conn:
            if s.HasField("project_id"):
                params = {"id": s.id, "project": s.project_id}
                cursor = await conn.execute(LINK, params, prepare=True)
            else:
                cursor = await conn.execute(UNLINK, {"id": s.id}, prepare=True)
            row = await cursor.fetchone()
        assert row is not None
        return pb.UpdateSessionResponse(session=_session(row))

    async def list_(request: pb.ListSessionsRequest, _: object) -> pb.ListSessionsResponse:
        params = (request.project_id, request.page_size + 1)
        async with pool.connection() as conn:
            rows = await (await conn.execute(LIST_BY_PROJECT, params, prepare=True)).fetchall()
        page = [_session(row) for row in rows[: request.page_size]]
        token = str(rows[-1]["id"]) if len(rows) > request.page_size else ""
        return pb.ListSessionsResponse(sessions=page, next_page_token=token)

    procedures: dict[str, tuple[Any, Any, Any]] = {
        "GetSession": (get, pb.GetSessionRequest, pb.GetSessionResponse),
        "CreateSession": (create, pb.CreateSessionRequest, pb.CreateSessionResponse),
        "UpdateSession": (update, pb.UpdateSessionRequest, pb.UpdateSessionResponse),
        "ListSessions": (list_, pb.ListSessionsRequest, pb.ListSessionsResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            counted(handler), request.FromString, response.SerializeToString
        )
        for name, (handler, request, response) in procedures.items()
    }

    counts_handler = grpc.unary_unary_rpc_method_handler(_counts)  # raw bytes both ways
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("studio.v1.SessionService", handlers),
            grpc.method_handlers_generic_handler("bench.Floor", {"Counts": counts_handler}),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"serving gRPC on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    loop = sys.argv[2] if len(sys.argv) > 2 else "uvloop"
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(sys.argv[1]))
