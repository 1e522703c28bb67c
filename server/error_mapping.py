"""The one place where failures become `google.rpc.Status`.

Typed `ApiError`s pass through; database errors are mapped by SQLSTATE and constraint name;
anything else is a bug: INTERNAL with a generic message (the traceback goes to the log only).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import psycopg
import sqlalchemy.exc
from google.protobuf import any_pb2
from google.protobuf.struct_pb2 import Struct
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from server.errors import (
    Aborted,
    AlreadyExists,
    ApiError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

if TYPE_CHECKING:
    import grpc

__all__ = ["DOMAIN", "error_from_exception", "is_retryable", "to_status"]

DOMAIN = "studio.v1"

# A row the request refers to is missing (insert or update of the referring row).
MISSING_REFERENCE = {
    "projects_client_id_clients_id_fk": "CLIENT_NOT_FOUND",
    "sessions_client_id_clients_id_fk": "CLIENT_NOT_FOUND",
    "sessions_room_id_rooms_id_fk": "ROOM_NOT_FOUND",
    "sessions_project_id_projects_id_fk": "PROJECT_NOT_FOUND",
    "tracks_project_id_projects_id_fk": "PROJECT_NOT_FOUND",
}
# A delete refused because rows still refer to the deleted one (ON DELETE RESTRICT).
STILL_REFERENCED = {
    "projects_client_id_clients_id_fk": "CLIENT_HAS_PROJECTS",
    "sessions_client_id_clients_id_fk": "CLIENT_HAS_SESSIONS",
    "sessions_room_id_rooms_id_fk": "ROOM_HAS_SESSIONS",
    "tracks_project_id_projects_id_fk": "PROJECT_HAS_TRACKS",
    "time_entries_session_id_sessions_id_fk": "SESSION_HAS_TIME_ENTRIES",
    "time_entries_project_id_projects_id_fk": "PROJECT_HAS_TIME_ENTRIES",
    "time_entries_track_id_tracks_id_fk": "TRACK_HAS_TIME_ENTRIES",
}
RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock
UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "3D000"}


def _sqlstate(exc: BaseException) -> str | None:
    orig = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    return orig.sqlstate if isinstance(orig, psycopg.Error) else None


def is_retryable(exc: BaseException) -> bool:
    """A transaction that failed this way may simply be run again."""
    return _sqlstate(exc) in RETRYABLE_SQLSTATES


def _database_error(exc: sqlalchemy.exc.DBAPIError, *, deleting: bool) -> ApiError:  # noqa: PLR0911 (a table)
    orig = exc.orig
    sqlstate = _sqlstate(exc) or ""
    constraint = orig.diag.constraint_name if isinstance(orig, psycopg.Error) else None
    if exc.connection_invalidated or sqlstate.startswith("08") or sqlstate in UNAVAILABLE_SQLSTATES:
        return Unavailable("DATABASE_UNAVAILABLE", "the studio's database is unavailable")
    if sqlstate in {"23503", "23001"}:  # foreign key; PostgreSQL 18 reports RESTRICT as 23001
        table = STILL_REFERENCED if deleting else MISSING_REFERENCE
        reason = table.get(constraint or "", "REFERENCE_CONSTRAINT")
        return FailedPrecondition(reason, f"refused: {reason.lower().replace('_', ' ')}")
    if sqlstate == "23505":
        return AlreadyExists(
            "ALREADY_EXISTS", "that already exists", metadata={"constraint": constraint or ""}
        )
    if not sqlstate and isinstance(exc, sqlalchemy.exc.DataError):  # refused by the driver
        return InvalidArgument(
            "UNSTORABLE_VALUE", "a value cannot be stored (text with a NUL character?)"
        )
    if sqlstate.startswith(("22", "23")):  # a data or check rule the proto rules missed
        return InvalidArgument(
            "CONSTRAINT_VIOLATION",
            "the request breaks a rule of the stored data",
            metadata={"constraint": constraint or ""},
        )
    if sqlstate in RETRYABLE_SQLSTATES or sqlstate == "55P03":
        return Aborted("CONCURRENT_MODIFICATION", "a concurrent change got in the way; retry")
    if sqlstate == "57014":
        return DeadlineExceeded("DEADLINE_EXCEEDED", "the call ran out of time")
    if sqlstate.startswith("53"):
        return ResourceExhausted("DATABASE_RESOURCES_EXHAUSTED", "the database is overloaded")
    if isinstance(exc, sqlalchemy.exc.OperationalError) and not sqlstate:
        return Unavailable("DATABASE_UNAVAILABLE", "the studio's database is unavailable")
    return Internal("INTERNAL", "internal error")


def error_from_exception(exc: BaseException, *, deleting: bool = False) -> ApiError:
    """The ApiError a caller sees for `exc`. `deleting`: the call deletes a resource."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return _database_error(exc, deleting=deleting)
    if isinstance(exc, sqlalchemy.exc.TimeoutError):  # no pooled connection in time
        return ResourceExhausted("TOO_MANY_CALLS", "too many calls for this studio right now")
    if isinstance(exc, psycopg.OperationalError | OSError):
        return Unavailable("DATABASE_UNAVAILABLE", "the studio's database is unavailable")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return DeadlineExceeded("DEADLINE_EXCEEDED", "the call ran out of time")
    return Internal("INTERNAL", "internal error")


def _pack(message: ErrorInfo | BadRequest | Struct) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _readable(info: ErrorInfo, error: ApiError) -> Struct:
    """ErrorInfo and the field violations again, as a google.protobuf.Struct: a tool that
    decodes only the types compiled into it prints this one (buf curl shows it as "debug";
    for the others it prints base64 whatever reflection serves). Filled field by field:
    Struct.update() takes twice as long."""
    readable = Struct()
    _strings(readable, reason=info.reason, domain=info.domain)
    _strings(readable.fields["metadata"].struct_value, **info.metadata)
    if error.field_violations:
        violations = readable.fields["fieldViolations"].list_value.values
        for v in error.field_violations:
            _strings(violations.add().struct_value, field=v.field, description=v.description,
                     reason=v.reason)  # fmt: skip
    return readable


def _strings(struct: Struct, **values: str) -> None:
    for key, value in values.items():
        struct.fields[key].string_value = value


def to_status(error: ApiError, request_id: str) -> grpc.Status:
    """google.rpc.Status with ErrorInfo (always), BadRequest (for field violations), and both
    in a Struct, readable by tools without their descriptors."""
    info = ErrorInfo(
        reason=error.reason,
        domain=DOMAIN,
        metadata={**error.metadata, "requestId": request_id},
    )
    details = [_pack(info)]
    if error.field_violations:
        details.append(
            _pack(
                BadRequest(
                    field_violations=[
                        BadRequest.FieldViolation(
                            field=v.field, description=v.description, reason=v.reason
                        )
                        for v in error.field_violations
                    ]
                )
            )
        )
    details.append(_pack(_readable(info, error)))
    return rpc_status.to_status(
        Status(code=error.code.value[0], message=error.message, details=details)
    )
