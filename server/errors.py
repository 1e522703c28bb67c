"""The errors a procedure raises: each knows its gRPC code and its ErrorInfo reason.

Procedures and middleware raise these; only `server.error_mapping` turns them (and anything
unexpected) into a `google.rpc.Status`. The hierarchy follows google.api_core.exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "ApiError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]


@dataclass(frozen=True)
class FieldViolation:
    field: str  # dotted path from the request, e.g. "session.project_id"
    description: str
    reason: str  # UPPER_SNAKE, e.g. "REQUIRED", "INT64_GT"


class ApiError(Exception):
    """An expected failure, with what a caller needs to react to it."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}
        self.field_violations = field_violations


class InvalidArgument(ApiError):
    """The request is wrong whatever the state: fix it before retrying."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ApiError):
    """The resource the call is about does not exist (in the caller's studio)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ApiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ApiError):
    """The state forbids it (a referred-to resource is missing, a parent still in use)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ApiError):
    """A concurrent change got in the way: re-read, then retry the whole change."""

    code = grpc.StatusCode.ABORTED


class Unauthenticated(ApiError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ApiError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ApiError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ApiError):
    """Try the same call again later (the database is unreachable, the server is stopping)."""

    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(ApiError):
    """No such method (or service) on this server."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ApiError):
    """A bug on our side; the message is generic and the details are in the server log."""

    code = grpc.StatusCode.INTERNAL
