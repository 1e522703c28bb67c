"""Transports as adapters onto the one pipeline (server/pipeline.py), as tRPC has adapters:

- grpc.py: gRPC over HTTP/2, served by grpc.aio (server/grpc_server.py);
- connect.py: the Connect protocol (JSON and binary, unary, GET for queries) and gRPC-Web,
  an ASGI application on connectrpc, served over HTTP/1.1 and h2c (server/http_server.py).

Each builds its handlers from the same routers and hands the pipeline the request's bytes
and a CallContext (server/call_context.py): a procedure is written once.
"""

from __future__ import annotations

from server.pipeline import MAX_REQUEST_BYTES

__all__ = ["RECEIVE_CEILING_BYTES"]

# Each transport refuses a larger request itself, before the pipeline sees it (without
# ErrorInfo or a log line). Up to here, the pipeline refuses it with MESSAGE_TOO_LARGE; the
# ceiling bounds what one call may make us hold in memory.
RECEIVE_CEILING_BYTES = 4 * MAX_REQUEST_BYTES
