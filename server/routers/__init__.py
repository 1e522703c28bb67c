"""The API: one router of procedures per gRPC service."""

from __future__ import annotations

from server.router import Router
from server.routers.clients import router as clients
from server.routers.projects import router as projects
from server.routers.rooms import router as rooms
from server.routers.sessions import router as sessions
from server.routers.task_types import router as task_types
from server.routers.time_entries import router as time_entries
from server.routers.tracks import router as tracks

__all__ = ["ROUTERS"]

ROUTERS: tuple[Router, ...] = (clients, rooms, projects, sessions, tracks, task_types, time_entries)
