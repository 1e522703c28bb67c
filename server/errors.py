"""The errors a procedure raises: each knows its gRPC code and its ErrorInfo reason.

Procedures and middleware raise these; only `server.error_mapping` turns them (and anything
unexpected) into a `google.rpc.Status`. The hierarchy follows google.api_core.exceptions.
A reason is a value of the proto enum studio.v1.ErrorReason (protos/studio/v1/error_reason.proto),
the one list of them: an error with any other reason is a bug, refused where it is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from studio.v1 import error_reason_pb2

__all__ = [
    "REASONS",
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
    "id_key",
]


REASON_PREFIX = "ERROR_REASON_"
# ErrorInfo.reason strings: the enum's value names without their prefix ("SESSION_NOT_FOUND").
REASONS = frozenset(
    name.removeprefix(REASON_PREFIX)
    for name, number in error_reason_pb2.ErrorReason.items()
    if number != error_reason_pb2.ERROR_REASON_UNSPECIFIED
)


def id_key(kind: str) -> str:
    """The ErrorInfo metadata key of a resource's id: "session" -> "sessionId",
    "task_type" -> "taskTypeId"."""
    first, *rest = kind.split("_")
    return first + "".join(word.title() for word in rest) + "Id"


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
        retry_delay: float | None = None,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"{reason!r} is not a value of studio.v1.ErrorReason")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}
        self.field_violations = field_violations
        # Seconds a caller should wait before retrying: sent as google.rpc.RetryInfo.
        self.retry_delay = retry_delay


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
