"""The floor: what grpc.aio and psycopg alone cost for GetSession and CreateSession.

A server with nothing of ours: no auth, no validation, no tenant routing, no SQLAlchemy, no
logging; a psycopg pool of 5 connections to one database, the statement sent as is, the row put
in the response. The API benchmark runs it beside `studio serve` so that the gap to pgbench can
be split into what the transport and driver cost (this) and what the service adds.

    python -m bench.floor_server <conninfo>    prints "serving gRPC on 127.0.0.1:<port>"
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC
from typing import Any

import grpc
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from studio.v1 import session_pb2 as pb

GET = "SELECT * FROM sessions WHERE id = %s"
CREATE = (
    "INSERT INTO sessions (client_id, room_id, title, start_time, end_time)"
    " VALUES (%s, %s, %s, %s, %s) RETURNING *"
)


def _session(row: dict[str, Any]) -> pb.Session:
    session = pb.Session(
        id=row["id"], client_id=row["client_id"], room_id=row["room_id"], title=row["title"]
    )
    session.start_time.FromDatetime(row["start_time"])
    session.end_time.FromDatetime(row["end_time"])
    if row["project_id"] is not None:
        session.project_id = row["project_id"]
    return session


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
        params = (s.client_id, s.room_id, s.title, s.start_time.ToDatetime(tzinfo=UTC),
                  s.end_time.ToDatetime(tzinfo=UTC))  # fmt: skip
        async with pool.connection() as conn:
            row = await (await conn.execute(CREATE, params, prepare=True)).fetchone()
        assert row is not None
        return pb.CreateSessionResponse(session=_session(row))

    handlers = {
        "GetSession": grpc.unary_unary_rpc_method_handler(
            get, pb.GetSessionRequest.FromString, pb.GetSessionResponse.SerializeToString
        ),
        "CreateSession": grpc.unary_unary_rpc_method_handler(
            create, pb.CreateSessionRequest.FromString, pb.CreateSessionResponse.SerializeToString
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("studio.v1.SessionService", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"serving gRPC on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
