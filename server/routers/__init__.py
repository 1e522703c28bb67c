"""The API: one router of procedures per gRPC service."""

from __future__ import annotations

from server.router import Router
from server.routers.clients import router as clients
from server.routers.projects import router as projects
from server.routers.rooms import router as rooms
from server.routers.sessions import router as sessions

__all__ = ["ROUTERS"]

ROUTERS: tuple[Router, ...] = (clients, rooms, projects, sessions)
