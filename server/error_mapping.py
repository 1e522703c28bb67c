"""The one place where failures become `google.rpc.Status`.

Typed `ApiError`s pass through; database errors are mapped by SQLSTATE and constraint name;
anything else is a bug: INTERNAL with a generic message (the traceback goes to the log only).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
import sqlalchemy.exc
from buf.validate import validate_pb2
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from db.connection_budget import ConnectionBudgetExhausted
from db.connection_pool import PoolExhausted
from db.tables import tenant_metadata
from server.errors import (
    Aborted,
    AlreadyExists,
    ApiError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    id_key,
)
from studio.v1 import session_pb2, time_entry_pb2

if TYPE_CHECKING:
    import grpc
    from sqlalchemy import MetaData, Table

__all__ = [
    "CHECKS",
    "DOMAIN",
    "EXCEPTIONS",
    "MISSING_REFERENCE",
    "SQLSTATES",
    "SQLSTATE_CLASSES",
    "STILL_REFERENCED",
    "STILL_REFERENCED_MESSAGES",
    "TAKEN",
    "error_from_exception",
    "is_retryable",
    "location_may_have_changed",
    "to_rpc_status",
    "to_status",
]

DOMAIN = "studio.v1"


@dataclass(frozen=True)
class Rule:
    """What a failure becomes: the error class (its gRPC code), the reason and the message."""

    error: type[ApiError]
    reason: str
    message: str
    retry_delay: float | None = None  # seconds: google.rpc.RetryInfo


# A studio's database that went away (restarted, or its sessions ended by a move) is back
# soon, and a move holds writes for about a second (`studio tenants move`, docs/scaling.md):
# a caller waiting this long finds the copy within half a second of the switch.
RETRY_DELAY = 0.5
UNAVAILABLE = Rule(
    Unavailable, "DATABASE_UNAVAILABLE", "the studio's database is unavailable", RETRY_DELAY
)
# A move holds the studio's writes (its source database is read-only) until the catalogue
# names the copy: a bounded window (`studio tenants move --max-pause`).
TENANT_MOVING = Rule(
    Unavailable,
    "TENANT_MOVING",
    "the studio is moving to another database server; retry shortly",
    RETRY_DELAY,
)
CONCURRENT = Rule(Aborted, "CONCURRENT_MODIFICATION", "a concurrent change got in the way; retry")
TIMED_OUT = Rule(DeadlineExceeded, "DEADLINE_EXCEEDED", "the call ran out of time")
INTERNAL = Rule(Internal, "INTERNAL", "internal error")

# By SQLSTATE: an exact code first, then its class (the first two characters); anything else
# is INTERNAL. Foreign keys (23503, 23001) are mapped by constraint name (REFERENCES below).
SQLSTATES: dict[str, Rule] = {
    "40001": CONCURRENT,  # serialization_failure (retried first, see RETRYABLE_SQLSTATES)
    "40P01": CONCURRENT,  # deadlock_detected (retried first)
    "55P03": CONCURRENT,  # lock_not_available
    "57014": TIMED_OUT,  # query_canceled: statement_timeout, the call's deadline
    "25006": TENANT_MOVING,  # read_only_sql_transaction: the source database of a move
    "57P01": UNAVAILABLE,  # admin_shutdown (also pg_terminate_backend, as a move ends sessions)
    "57P02": UNAVAILABLE,  # crash_shutdown
    "57P03": UNAVAILABLE,  # cannot_connect_now (starting up, recovering)
    "53300": UNAVAILABLE,  # too_many_connections: the server refuses new connections
    "3D000": UNAVAILABLE,  # invalid_catalog_name: the studio's database is not there
    "23505": Rule(AlreadyExists, "ALREADY_EXISTS", "that already exists"),
}
SQLSTATE_CLASSES: dict[str, Rule] = {
    "08": UNAVAILABLE,  # connection exception
    "22": Rule(  # data exception: a value the proto rules let through
        InvalidArgument, "CONSTRAINT_VIOLATION", "the request breaks a rule of the stored data"
    ),
    "23": Rule(  # integrity constraint violation: a check the proto rules missed
        InvalidArgument, "CONSTRAINT_VIOLATION", "the request breaks a rule of the stored data"
    ),
    "53": Rule(ResourceExhausted, "DATABASE_RESOURCES_EXHAUSTED", "the database is overloaded"),
}
FOREIGN_KEY_SQLSTATES = {"23503", "23001"}  # foreign key; PostgreSQL 18 reports RESTRICT as 23001
RETRYABLE_SQLSTATES = {"40001", "40P01"}  # the pipeline runs the transaction again


@dataclass(frozen=True)
class Reference:
    """A foreign key refusal, about the referred-to resource `kind` (its id in metadata)."""

    kind: str  # "task_type": metadata taskTypeId, messages "task type 42 ..."
    reason: str
    message: str  # "{kind}" is "client 42" (or "the client" when PostgreSQL did not say)


def _kind(table: Table) -> str:
    kind: str = table.info["kind"]
    return kind


# What a refused delete says, by reason; otherwise "{kind} still has <rows>; delete them first".
STILL_REFERENCED_MESSAGES = {
    "ROOM_HAS_SESSIONS": "{kind} still has sessions booked in it; delete them first",
    "PROJECT_HAS_TRACKS": "{kind} has tracks; delete them first, or delete the project with force",
    "PROJECT_HAS_TIME_ENTRIES": "{kind} has time entries logged against it",
    "SESSION_HAS_TIME_ENTRIES": "{kind} has time entries logged against it",
    "TRACK_HAS_TIME_ENTRIES": "{kind} has time entries logged against it",
    "TASK_TYPE_HAS_TIME_ENTRIES": (
        "{kind} is used by time entries; deactivate it instead (is_active: false)"
    ),
}


def _references(metadata: MetaData) -> tuple[dict[str, Reference], dict[str, Reference]]:
    """Both foreign key tables, from the Core metadata itself (db/tables.py): every key refused
    on insert or update is <KIND>_NOT_FOUND of the table it refers to; every key that
    refuses a delete (RESTRICT, NO ACTION) is <KIND>_HAS_<REFERRING TABLE>. A new foreign key
    adds its rows here by itself; its reasons must be values of studio.v1.ErrorReason
    (tests/unit/test_error_mapping.py checks them all)."""
    missing, still = {}, {}
    for table in metadata.sorted_tables:
        for fk in table.foreign_key_constraints:
            name, referred = str(fk.name), fk.referred_table
            kind = _kind(referred)
            missing[name] = Reference(kind, f"{kind.upper()}_NOT_FOUND", "{kind} does not exist")
            if (fk.ondelete or "NO ACTION").upper() in {"RESTRICT", "NO ACTION"}:
                reason = f"{kind.upper()}_HAS_{table.name.upper()}"
                rows = table.name.replace("_", " ")
                message = STILL_REFERENCED_MESSAGES.get(
                    reason, f"{{kind}} still has {rows}; delete them first"
                )
                still[name] = Reference(kind, reason, message)
    return missing, still


# Insert or update of the referring row: the row the request refers to is missing.
# A delete refused because rows still refer to the deleted one (ON DELETE RESTRICT).
MISSING_REFERENCE, STILL_REFERENCED = _references(tenant_metadata)

BUSY_STUDIO = Rule(ResourceExhausted, "TOO_MANY_CALLS", "too many calls for this studio right now")
UNSTORABLE = Rule(InvalidArgument, "UNSTORABLE_VALUE", "a value of the request cannot be stored")


def _message_rule(message: type[Message], rule_id: str, at: str) -> FieldViolation:
    """The field violation protovalidate reports for a message-level rule of `message`
    (its id "<field>.<rule>", its message), at `at` in the request: how a CHECK constraint
    that states the same rule is reported (server/validation.py names them so)."""
    options = message.DESCRIPTOR.GetOptions().Extensions[validate_pb2.message]
    [rule] = [r for r in options.cel if r.id == rule_id]
    field, _, name = rule_id.rpartition(".")
    return FieldViolation(f"{at}.{field}", rule.message, name.upper())


# CHECK constraints that state a rule written in the protos across fields: an update that
# writes one of the fields is checked by PostgreSQL (standard_methods.update_at_once).
CHECKS: dict[str, FieldViolation] = {
    "sessions_time_range_check": _message_rule(
        session_pb2.Session, "end_time.after_start_time", at="session"
    ),
    "sessions_duration_check": _message_rule(
        session_pb2.Session, "end_time.within_31_days", at="session"
    ),
    "sessions_deposit_check": _message_rule(
        session_pb2.Session, "deposit_amount.not_above_total", at="session"
    ),
    "time_entries_time_range_check": _message_rule(
        time_entry_pb2.TimeEntry, "end_time.not_before_start_time", at="time_entry"
    ),
}
CHECK_VIOLATION = "23514"


def _key(detail: str) -> dict[str, str]:
    """The columns and values of "Key (a, b)=(1, 2) ...", as metadata keys: {"aId": ...}
    for ids, camelCase for the rest."""
    found = _KEY_VALUE.search(detail)
    if found is None:
        return {}
    columns, values = found.group(1).split(", "), found.group(2).split(", ")
    if len(columns) != len(values):
        return {}
    return {
        id_key(c.removesuffix("_id")) if c.endswith("_id") else id_key(c).removesuffix("Id"): v
        for c, v in zip(columns, values, strict=True)
        if v != "null"
    }


def _room_booked(detail: str) -> tuple[str, dict[str, str]]:
    """sessions_room_booking_excl's detail: the keys of the new row and of the row in the
    way, each (room range, time range, '::' + id); the last address is the booked session's."""
    metadata = {}
    if room := re.search(r"=\(\[(\d+),", detail):
        metadata["roomId"] = room.group(1)
    holders = re.findall(r"(::[0-9a-fA-F:.]*)\)", detail)
    with contextlib.suppress(ValueError, IndexError):
        metadata["conflictingSessionId"] = str(int(ipaddress.IPv6Address(holders[-1])))
    room_words = f"room {metadata['roomId']}" if "roomId" in metadata else "the room"
    by = f" by session {metadata['conflictingSessionId']}" if len(metadata) == 2 else ""
    return f"{room_words} is already booked at that time{by}; choose another time or room", metadata


def _track_number_taken(detail: str) -> tuple[str, dict[str, str]]:
    key = _key(detail)
    if {"projectId", "trackNumber"} <= set(key):
        return f"project {key['projectId']} already has a track {key['trackNumber']}", key
    return "another track of the project has that number", key


def _timer_running(detail: str) -> tuple[str, dict[str, str]]:
    key = _key(detail)
    context = ", ".join(f"{k.removesuffix('Id')} {v}" for k, v in key.items())
    return f"a timer already runs for {context or 'that context'}; stop it first", key


@dataclass(frozen=True)
class Taken:
    """A unique or exclusion constraint that states a rule of the API: its reason, and what
    to say, from PostgreSQL's detail (the key of the row in the way)."""

    reason: str
    explain: Callable[[str], tuple[str, dict[str, str]]]


# By constraint (or unique index) name; tests/unit/test_error_mapping.py checks that each
# is one of the Core metadata's (db/tables.py).
TAKEN: dict[str, Taken] = {
    "sessions_room_booking_excl": Taken("ROOM_ALREADY_BOOKED", _room_booked),
    "tracks_project_id_track_number_key": Taken("TRACK_NUMBER_TAKEN", _track_number_taken),
    "time_entries_running_timer_idx": Taken("TIMER_ALREADY_RUNNING", _timer_running),
}
TAKEN_SQLSTATES = {"23505", "23P01"}  # unique_violation, exclusion_violation

# By exception type, for what is not a database error with a SQLSTATE; the first match
# wins, so a subclass comes before its base (TimeoutError is an OSError).
EXCEPTIONS: tuple[tuple[type[BaseException], Rule], ...] = (
    (ConnectionBudgetExhausted, Rule(  # the process holds all the connections it may
        ResourceExhausted, "DATABASE_CONNECTIONS_EXHAUSTED",
        "this server holds all the database connections it may; retry shortly",
    )),
    (PoolExhausted, BUSY_STUDIO),  # the studio's connections all stayed busy
    (sqlalchemy.exc.TimeoutError, BUSY_STUDIO),  # (the master database's pool)
    (psycopg.DataError, UNSTORABLE),  # refused by the driver before PostgreSQL saw it
    (sqlalchemy.exc.DataError, UNSTORABLE),
    (TimeoutError, TIMED_OUT),  # asyncio.TimeoutError is TimeoutError
    # an operational error with no SQLSTATE above: the connection failed, the server is in trouble
    (sqlalchemy.exc.OperationalError, UNAVAILABLE),
    (psycopg.OperationalError, UNAVAILABLE),
    (OSError, UNAVAILABLE),
)  # fmt: skip

# "Key (client_id)=(42) is not present in table ..." (the parentheses survive translation)
_KEY_VALUE = re.compile(r"\(([^()]*)\)=\(([^()]*)\)")


def _psycopg_error(exc: BaseException) -> psycopg.Error | None:
    orig = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    return orig if isinstance(orig, psycopg.Error) else None


def _sqlstate(exc: BaseException) -> str | None:
    orig = _psycopg_error(exc)
    return orig.sqlstate if orig is not None else None


def is_retryable(exc: BaseException) -> bool:
    """A transaction that failed this way may simply be run again."""
    return _sqlstate(exc) in RETRYABLE_SQLSTATES


def _reference_error(orig: psycopg.Error, *, deleting: bool) -> ApiError:
    constraint = orig.diag.constraint_name or ""
    reference = (STILL_REFERENCED if deleting else MISSING_REFERENCE).get(constraint)
    if reference is None:
        return FailedPrecondition(
            "REFERENCE_CONSTRAINT",
            "the request refers to something missing, or something still refers to it",
            metadata={"constraint": constraint},
        )
    found = _KEY_VALUE.search(orig.diag.message_detail or "")
    words = reference.kind.replace("_", " ")
    if found is None:
        return FailedPrecondition(reference.reason, reference.message.format(kind=f"the {words}"))
    key = found.group(2)
    return FailedPrecondition(
        reference.reason,
        reference.message.format(kind=f"{words} {key}"),
        metadata={id_key(reference.kind): key},
    )


def _rule_error(rule: Rule, orig: psycopg.Error | None = None) -> ApiError:
    constraint = orig.diag.constraint_name if orig is not None else None
    metadata = {"constraint": constraint} if constraint else None
    return rule.error(rule.reason, rule.message, metadata=metadata, retry_delay=rule.retry_delay)


def error_from_exception(exc: BaseException, *, deleting: bool = False) -> ApiError:
    """The ApiError a caller sees for `exc`. `deleting`: the call deletes a resource.

    In order: typed errors as they are; a lost connection; a database error by its
    SQLSTATE (foreign keys by constraint name), exact code then class; then by exception
    type (EXCEPTIONS); anything else is INTERNAL."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return _rule_error(UNAVAILABLE)
    orig = _psycopg_error(exc)
    sqlstate = (orig.sqlstate if orig is not None else None) or ""
    if orig is not None and sqlstate in FOREIGN_KEY_SQLSTATES:
        return _reference_error(orig, deleting=deleting)
    if orig is not None and sqlstate in TAKEN_SQLSTATES:
        taken = TAKEN.get(orig.diag.constraint_name or "")
        if taken is not None:
            message, metadata = taken.explain(orig.diag.message_detail or "")
            return FailedPrecondition(taken.reason, message, metadata=metadata)
    if orig is not None and sqlstate == CHECK_VIOLATION:
        violation = CHECKS.get(orig.diag.constraint_name or "")
        if violation is not None:
            return InvalidArgument(
                "INVALID_ARGUMENT",
                f"the request is invalid: {violation.field}: {violation.description}",
                field_violations=(violation,),
            )
    rule = SQLSTATES.get(sqlstate) or SQLSTATE_CLASSES.get(sqlstate[:2])
    if rule is None:
        rule = next((r for kind, r in EXCEPTIONS if isinstance(exc, kind)), INTERNAL)
    return _rule_error(rule, orig)


def location_may_have_changed(exc: BaseException) -> bool:
    """A failure of a studio's database after which the service should read where the
    studio lives again: it may have moved (refused writes, ended sessions, a database that
    refuses connections or is gone)."""
    return isinstance(error_from_exception(exc), Unavailable)


def _pack(message: ErrorInfo | BadRequest | RetryInfo | Struct) -> any_pb2.Any:
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


def to_rpc_status(error: ApiError, request_id: str) -> Status:
    """google.rpc.Status with ErrorInfo (always), BadRequest (for field violations),
    RetryInfo (when the caller should wait before retrying), and the first two in a Struct,
    readable by tools without their descriptors: what every transport sends
    (gRPC in grpc-status-details-bin, Connect as its JSON error's details)."""
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
    if error.retry_delay is not None:
        delay = Duration()
        delay.FromNanoseconds(int(error.retry_delay * 1e9))
        details.append(_pack(RetryInfo(retry_delay=delay)))
    details.append(_pack(_readable(info, error)))
    return Status(code=error.code.value[0], message=error.message, details=details)


def to_status(error: ApiError, request_id: str) -> grpc.Status:
    """to_rpc_status as grpc.aio sends it."""
    return rpc_status.to_status(to_rpc_status(error, request_id))
