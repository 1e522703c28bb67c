"""The Connect floor: what connectrpc, granian and psycopg alone cost for a call.

The generated Connect application (studio/v1/session_connect.py, google.protobuf messages,
connectrpc's own codecs: binary and JSON) on granian, embedded in a uvloop loop as
`studio serve` embeds it, with the statements of bench/floor_server.py (the gRPC floor) on a
psycopg pool of 5 connections. Nothing of ours: no auth, validation, tenant routing, pipeline
or logging. bench/connect_bench.py runs it beside `studio serve`.

    python -m bench.connect_floor <conninfo>
        prints "serving HTTP on 127.0.0.1:<port>"

With `canned` instead of a conninfo, the transport alone: every call answered with the same
response, built once, no database; `canned-grpc` does the same on grpc.aio (prints "serving
gRPC on ..."). These are the issue's micro-benchmark: the cost of the protocol and server.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC

import grpc
import uvloop
from connectrpc.request import RequestContext
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bench.floor_server import CREATE, GET, LIST_BY_PROJECT, _session
from server.http_server import start_http_server
from studio.v1 import session_pb2 as pb
from studio.v1.session_connect import SessionServiceASGIApplication

Ctx = RequestContext[object, object]


class Sessions:
    """GetSession, ListSessions and CreateSession as the floor's gRPC handlers run them."""

    def __init__(self, pool: AsyncConnectionPool) -> None:  # type: ignore[type-arg]
        self.pool = pool

    async def get_session(self, request: pb.GetSessionRequest, _: Ctx) -> pb.GetSessionResponse:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(GET, (request.id,), prepare=True)).fetchone()
        return pb.GetSessionResponse(session=_session(row))

    async def list_sessions(
        self, request: pb.ListSessionsRequest, _: Ctx
    ) -> pb.ListSessionsResponse:
        params = (request.project_id, request.page_size + 1)
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(LIST_BY_PROJECT, params, prepare=True)).fetchall()
        page = [_session(row) for row in rows[: request.page_size]]
        token = str(rows[-1]["id"]) if len(rows) > request.page_size else ""
        return pb.ListSessionsResponse(sessions=page, next_page_token=token)

    async def create_session(
        self, request: pb.CreateSessionRequest, _: Ctx
    ) -> pb.CreateSessionResponse:
        s = request.session
        start, end = s.start_time.ToDatetime(tzinfo=UTC), s.end_time.ToDatetime(tzinfo=UTC)
        async with self.pool.connection() as conn:
            params = (s.client_id, s.room_id, s.title, start, end)
            row = await (await conn.execute(CREATE, params, prepare=True)).fetchone()
        return pb.CreateSessionResponse(session=_session(row))

    async def update_session(self, request: object, _: Ctx) -> object:
        raise NotImplementedError

    delete_session = update_session


class Canned:
    """The same answer to every call, built once: what the transport alone costs."""

    def __init__(self) -> None:
        session = pb.Session(id=1, client_id=1, room_id=1, project_id=1, title="Benchmark take")
        session.start_time.FromSeconds(1_900_000_000)
        session.end_time.FromSeconds(1_900_010_800)
        self.get = pb.GetSessionResponse(session=session)
        self.list = pb.ListSessionsResponse(sessions=[session] * 50, next_page_token=str(51))
        self.create = pb.CreateSessionResponse(session=session)

    async def get_session(self, request: object, _: Ctx) -> pb.GetSessionResponse:
        return self.get

    async def list_sessions(self, request: object, _: Ctx) -> pb.ListSessionsResponse:
        return self.list

    async def create_session(self, request: object, _: Ctx) -> pb.CreateSessionResponse:
        return self.create

    update_session = delete_session = create_session


async def serve_canned_grpc() -> None:
    canned = Canned()
    answers = {"GetSession": canned.get, "ListSessions": canned.list,
               "CreateSession": canned.create}  # fmt: skip
    request_types = {"GetSession": pb.GetSessionRequest, "ListSessions": pb.ListSessionsRequest,
                     "CreateSession": pb.CreateSessionRequest}  # fmt: skip

    def handler(name: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        answer, parse = answers[name].SerializeToString(), request_types[name].FromString

        async def handle(raw: bytes, _: object) -> bytes:
            parse(raw)
            return answer

        return grpc.unary_unary_rpc_method_handler(handle)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "studio.v1.SessionService", {name: handler(name) for name in answers}),))  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"serving gRPC on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


async def serve(conninfo: str) -> None:
    if conninfo == "canned-grpc":
        await serve_canned_grpc()
        return
    if conninfo == "canned":
        server = await start_http_server(
            "127.0.0.1",
            0,
            SessionServiceASGIApplication(Canned()),  # type: ignore[arg-type]
        )
        print(f"serving HTTP on 127.0.0.1:{server.port}", flush=True)
        await server.task
        return
    pool = AsyncConnectionPool(
        conninfo, min_size=5, max_size=5, kwargs={"row_factory": dict_row}, open=False
    )
    await pool.open(wait=True)
    app = SessionServiceASGIApplication(Sessions(pool))  # type: ignore[arg-type]
    server = await start_http_server("127.0.0.1", 0, app)
    print(f"serving HTTP on 127.0.0.1:{server.port}", flush=True)
    await server.task


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(sys.argv[1]))
