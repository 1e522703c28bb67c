"""Routers of named procedures, one per gRPC service, in the tRPC style.

    router = Router(session_pb2, "SessionService")

    @router.procedure("CreateSession")
    async def create_session(ctx: Ctx, request: CreateSessionRequest) -> CreateSessionResponse:

Whether a procedure is a query (read-only, autocommit) or a mutation (one transaction) comes
from the proto: methods marked `idempotency_level = NO_SIDE_EFFECTS` are queries. A router
refuses to build unless every method of its service has exactly one procedure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from google.protobuf import descriptor_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from server.context import Ctx

__all__ = ["Handler", "Procedure", "Router"]

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Handler = Callable[[Ctx, Any], Awaitable[Message]]
NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


@dataclass(frozen=True)
class Procedure:
    service: str  # "studio.v1.SessionService"
    name: str  # "CreateSession"
    request_type: type[Message]
    response_type: type[Message]
    handler: Handler
    query: bool  # read-only: allowed for read-only keys
    single_statement: bool  # one statement does all (queries, some mutations): autocommit

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def deletes(self) -> bool:
        return self.name.startswith("Delete")


class Router:
    def __init__(self, module: ModuleType, service_name: str) -> None:
        self.service = module.DESCRIPTOR.services_by_name[service_name]
        self.procedures: dict[str, Procedure] = {}

    def procedure(
        self, name: str, *, single_statement: bool | None = None
    ) -> Callable[[Callable[[Ctx, Req], Awaitable[Resp]]], Callable[[Ctx, Req], Awaitable[Resp]]]:
        """Register a procedure. Queries run without a transaction (one SELECT is atomic);
        a mutation runs in one transaction unless it declares `single_statement=True`, that
        is, its success path is a single statement (which PostgreSQL makes atomic)."""
        method = self.service.methods_by_name[name]
        query = method.GetOptions().idempotency_level == NO_SIDE_EFFECTS

        def register(
            handler: Callable[[Ctx, Req], Awaitable[Resp]],
        ) -> Callable[[Ctx, Req], Awaitable[Resp]]:
            assert name not in self.procedures, f"{name} is registered twice"
            self.procedures[name] = Procedure(
                service=self.service.full_name,
                name=name,
                request_type=GetMessageClass(method.input_type),
                response_type=GetMessageClass(method.output_type),
                handler=handler,
                query=query,
                single_statement=query if single_statement is None else single_statement,
            )
            return handler

        return register

    def all(self) -> list[Procedure]:
        missing = set(self.service.methods_by_name) - set(self.procedures)
        assert not missing, f"{self.service.full_name}: no procedure for {sorted(missing)}"
        return list(self.procedures.values())
