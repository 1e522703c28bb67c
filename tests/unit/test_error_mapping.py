"""The error table, row by row: what each database failure and exception type becomes.

No PostgreSQL: psycopg errors are built with the SQLSTATE and diagnostics PostgreSQL would
send, and wrapped as SQLAlchemy wraps them (DBAPIError.instance picks IntegrityError,
OperationalError... from the psycopg class).
"""

from __future__ import annotations

import grpc
import psycopg
import psycopg.errors
import pytest
import sqlalchemy.exc
from google.rpc.error_details_pb2 import ErrorInfo, RetryInfo
from grpc_status import rpc_status
from psycopg.pq import DiagnosticField

from db.connection_budget import ConnectionBudgetExhausted
from db.connection_pool import PoolExhausted
from db.tables import tenant_metadata
from server.error_mapping import (
    CHECKS,
    EXCEPTIONS,
    MISSING_REFERENCE,
    SQLSTATE_CLASSES,
    SQLSTATES,
    STILL_REFERENCED,
    STILL_REFERENCED_MESSAGES,
    TAKEN,
    error_from_exception,
    is_retryable,
    location_may_have_changed,
    to_rpc_status,
    to_status,
)
from server.errors import REASONS, ApiError, NotFound

Code = grpc.StatusCode
INTERNAL = (Code.INTERNAL, "INTERNAL", "internal error")


def pg_error(
    sqlstate: str, *, constraint: str | None = None, detail: str | None = None
) -> psycopg.Error:
    """The psycopg error PostgreSQL's answer would raise (its class chosen by SQLSTATE)."""
    info: dict[int, bytes | None] = {DiagnosticField.SQLSTATE: sqlstate.encode()}
    if constraint:
        info[DiagnosticField.CONSTRAINT_NAME] = constraint.encode()
    if detail:
        info[DiagnosticField.MESSAGE_DETAIL] = detail.encode()
    try:
        error_class = psycopg.errors.lookup(sqlstate)
    except KeyError:
        error_class = psycopg.DatabaseError
    return error_class(f"error {sqlstate}", info=info)  # type: ignore[arg-type]


def wrapped(orig: BaseException, *, invalidated: bool = False) -> sqlalchemy.exc.DBAPIError:
    """What SQLAlchemy raises when the driver raised `orig` during a statement."""
    error = sqlalchemy.exc.DBAPIError.instance(
        "SELECT 1", None, orig, psycopg.Error, connection_invalidated=invalidated
    )
    assert isinstance(error, sqlalchemy.exc.DBAPIError)
    return error


def outcome(exc: BaseException, *, deleting: bool = False) -> tuple[Code, str]:
    error = error_from_exception(exc, deleting=deleting)
    return error.code, error.reason


# Exact SQLSTATEs, and one code of each class the mapping names by its class.
SQLSTATE_CASES = [
    ("40001", Code.ABORTED, "CONCURRENT_MODIFICATION"),  # serialization failure
    ("40P01", Code.ABORTED, "CONCURRENT_MODIFICATION"),  # deadlock
    ("55P03", Code.ABORTED, "CONCURRENT_MODIFICATION"),  # lock not available
    ("57014", Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),  # statement_timeout
    ("25006", Code.UNAVAILABLE, "TENANT_MOVING"),  # read-only: the source of a move
    ("57P01", Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),  # admin shutdown
    ("57P02", Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),  # crash shutdown
    ("57P03", Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),  # cannot connect now
    ("53300", Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),  # too many connections
    ("3D000", Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),  # no such database
    ("23505", Code.ALREADY_EXISTS, "ALREADY_EXISTS"),  # unique violation
    ("08006", Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),  # class 08: connection failure
    ("08001", Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("22001", Code.INVALID_ARGUMENT, "CONSTRAINT_VIOLATION"),  # class 22: string too long
    ("22P02", Code.INVALID_ARGUMENT, "CONSTRAINT_VIOLATION"),
    ("23514", Code.INVALID_ARGUMENT, "CONSTRAINT_VIOLATION"),  # class 23: check violation
    ("23502", Code.INVALID_ARGUMENT, "CONSTRAINT_VIOLATION"),  # not null
    ("53100", Code.RESOURCE_EXHAUSTED, "DATABASE_RESOURCES_EXHAUSTED"),  # class 53: disk full
    ("53200", Code.RESOURCE_EXHAUSTED, "DATABASE_RESOURCES_EXHAUSTED"),  # out of memory
]
# What no rule names: a bug on our side, or a state we do not know how to explain.
UNKNOWN_SQLSTATES = ["42P01", "42703", "XX000", "0A000", "P0001"]


@pytest.mark.parametrize(("sqlstate", "code", "reason"), SQLSTATE_CASES)
def test_each_sqlstate_maps_to_its_code_and_reason(sqlstate: str, code: Code, reason: str) -> None:
    assert outcome(wrapped(pg_error(sqlstate))) == (code, reason)
    assert outcome(pg_error(sqlstate)) == (code, reason)  # raised by psycopg directly


def test_every_sqlstate_and_class_the_mapping_names_has_a_case() -> None:
    exact = {case[0] for case in SQLSTATE_CASES}
    by_class = {case[0][:2] for case in SQLSTATE_CASES if case[0] not in SQLSTATES}
    assert set(SQLSTATES) <= exact
    assert set(SQLSTATE_CLASSES) <= by_class


@pytest.mark.parametrize("sqlstate", UNKNOWN_SQLSTATES)
def test_an_unknown_sqlstate_is_internal_with_a_generic_message(sqlstate: str) -> None:
    error = error_from_exception(wrapped(pg_error(sqlstate)))
    assert (error.code, error.reason, error.message) == INTERNAL


def test_a_constraint_is_named_in_metadata() -> None:
    error = error_from_exception(wrapped(pg_error("23505", constraint="clients_email_key")))
    assert error.metadata == {"constraint": "clients_email_key"}


# Foreign keys: the constraint says which reference, the detail says which id.
MISSING = {
    "projects_client_id_clients_id_fk": ("CLIENT_NOT_FOUND", "client_id", "clientId"),
    "sessions_client_id_clients_id_fk": ("CLIENT_NOT_FOUND", "client_id", "clientId"),
    "sessions_room_id_rooms_id_fk": ("ROOM_NOT_FOUND", "room_id", "roomId"),
    "sessions_project_id_projects_id_fk": ("PROJECT_NOT_FOUND", "project_id", "projectId"),
    "tracks_project_id_projects_id_fk": ("PROJECT_NOT_FOUND", "project_id", "projectId"),
    "tracks_recorded_in_room_id_rooms_id_fk": ("ROOM_NOT_FOUND", "recorded_in_room_id", "roomId"),
    "time_entries_task_type_id_task_types_id_fk": (
        "TASK_TYPE_NOT_FOUND",
        "task_type_id",
        "taskTypeId",
    ),
    "time_entries_session_id_sessions_id_fk": ("SESSION_NOT_FOUND", "session_id", "sessionId"),
    "time_entries_project_id_projects_id_fk": ("PROJECT_NOT_FOUND", "project_id", "projectId"),
    "time_entries_track_id_tracks_id_fk": ("TRACK_NOT_FOUND", "track_id", "trackId"),
}
STILL_USED = {
    "projects_client_id_clients_id_fk": ("CLIENT_HAS_PROJECTS", "clientId"),
    "sessions_client_id_clients_id_fk": ("CLIENT_HAS_SESSIONS", "clientId"),
    "sessions_room_id_rooms_id_fk": ("ROOM_HAS_SESSIONS", "roomId"),
    "tracks_project_id_projects_id_fk": ("PROJECT_HAS_TRACKS", "projectId"),
    "time_entries_session_id_sessions_id_fk": ("SESSION_HAS_TIME_ENTRIES", "sessionId"),
    "time_entries_project_id_projects_id_fk": ("PROJECT_HAS_TIME_ENTRIES", "projectId"),
    "time_entries_track_id_tracks_id_fk": ("TRACK_HAS_TIME_ENTRIES", "trackId"),
    "time_entries_task_type_id_task_types_id_fk": ("TASK_TYPE_HAS_TIME_ENTRIES", "taskTypeId"),
}


def test_every_foreign_key_the_mapping_names_has_a_case() -> None:
    assert set(MISSING) == set(MISSING_REFERENCE)
    assert set(STILL_USED) == set(STILL_REFERENCED)


def test_the_foreign_key_tables_are_the_core_metadatas_keys_with_declared_reasons() -> None:
    """Derived from db/tables.py: every foreign key is mapped (none falls back to
    REFERENCE_CONSTRAINT), every one that refuses deletes is mapped for deletes, and each
    reason is a value of studio.v1.ErrorReason."""
    keys = {
        str(fk.name): fk
        for table in tenant_metadata.tables.values()
        for fk in table.foreign_key_constraints
    }
    assert set(MISSING_REFERENCE) == set(keys)
    assert set(STILL_REFERENCED) == {
        name for name, fk in keys.items() if fk.ondelete in {None, "RESTRICT", "NO ACTION"}
    }
    reasons = {r.reason for r in [*MISSING_REFERENCE.values(), *STILL_REFERENCED.values()]}
    assert reasons <= REASONS
    assert set(STILL_REFERENCED_MESSAGES) <= {r.reason for r in STILL_REFERENCED.values()}


@pytest.mark.parametrize("constraint", sorted(MISSING))
def test_a_missing_reference_names_the_id(constraint: str) -> None:
    reason, column, key = MISSING[constraint]
    detail = f'Key ({column})=(42) is not present in table "x".'
    error = error_from_exception(wrapped(pg_error("23503", constraint=constraint, detail=detail)))
    assert (error.code, error.reason) == (Code.FAILED_PRECONDITION, reason)
    assert error.metadata == {key: "42"}
    assert (
        error.message
        == f"{reason.removesuffix('_NOT_FOUND').lower().replace('_', ' ')} 42 does not exist"
    )


@pytest.mark.parametrize("sqlstate", ["23503", "23001"])  # NO ACTION, RESTRICT (PostgreSQL 18)
@pytest.mark.parametrize("constraint", sorted(STILL_USED))
def test_a_refused_delete_names_the_id_and_what_still_refers_to_it(
    constraint: str, sqlstate: str
) -> None:
    reason, key = STILL_USED[constraint]
    detail = 'Key (id)=(42) is still referenced from table "x".'
    exc = wrapped(pg_error(sqlstate, constraint=constraint, detail=detail))
    error = error_from_exception(exc, deleting=True)
    assert (error.code, error.reason) == (Code.FAILED_PRECONDITION, reason)
    assert error.metadata == {key: "42"}
    assert error.message.startswith(f"{reason.split('_HAS_')[0].lower().replace('_', ' ')} 42 ")


def test_a_translated_detail_still_gives_the_id() -> None:
    detail = "La clé (client_id)=(7) n'est pas présente dans la table « clients »."
    exc = wrapped(pg_error("23503", constraint="projects_client_id_clients_id_fk", detail=detail))
    assert error_from_exception(exc).metadata == {"clientId": "7"}


def test_without_a_detail_the_reference_is_still_named() -> None:
    exc = wrapped(pg_error("23503", constraint="sessions_room_id_rooms_id_fk"))
    error = error_from_exception(exc)
    assert (error.reason, error.message, error.metadata) == (
        "ROOM_NOT_FOUND",
        "the room does not exist",
        {},
    )


def test_an_unknown_foreign_key_is_a_generic_precondition() -> None:
    exc = wrapped(pg_error("23503", constraint="labels_owner_id_owners_id_fk"))
    for deleting in (False, True):
        error = error_from_exception(exc, deleting=deleting)
        assert (error.code, error.reason) == (Code.FAILED_PRECONDITION, "REFERENCE_CONSTRAINT")
        assert error.metadata == {"constraint": "labels_owner_id_owners_id_fk"}


# Exception types, each row an exception the rule of that type (and no earlier one) takes.
EXCEPTION_CASES: list[tuple[BaseException, Code, str]] = [
    (ConnectionBudgetExhausted("no slot"), Code.RESOURCE_EXHAUSTED,
     "DATABASE_CONNECTIONS_EXHAUSTED"),
    (PoolExhausted("all 5 connections busy"), Code.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS"),
    (sqlalchemy.exc.TimeoutError("QueuePool limit"), Code.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS"),
    (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
     Code.INVALID_ARGUMENT, "UNSTORABLE_VALUE"),
    (wrapped(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")),
     Code.INVALID_ARGUMENT, "UNSTORABLE_VALUE"),
    (TimeoutError(), Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
    (TimeoutError("asyncio.timeout"), Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
    (wrapped(psycopg.OperationalError("connection refused")),
     Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    (psycopg.OperationalError("server closed the connection"),
     Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    (pg_error("28P01"), Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),  # an operational SQLSTATE
    (ConnectionRefusedError(), Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    (OSError("no route to host"), Code.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
]  # fmt: skip


@pytest.mark.parametrize(("exc", "code", "reason"), EXCEPTION_CASES, ids=repr)
def test_each_exception_type_maps_to_its_code_and_reason(
    exc: BaseException, code: Code, reason: str
) -> None:
    assert outcome(exc) == (code, reason)


def test_every_exception_type_the_mapping_names_has_a_case() -> None:
    taken_by = {
        next(kind for kind, _rule in EXCEPTIONS if isinstance(exc, kind))
        for exc, _code, _reason in EXCEPTION_CASES
    }
    assert taken_by == {kind for kind, _rule in EXCEPTIONS}


def test_no_exception_rule_is_hidden_behind_an_earlier_one() -> None:
    """The first match wins: a rule after one for its base class would never run (as the
    DEADLINE_EXCEEDED rule did behind OSError, TimeoutError's base)."""
    kinds = [kind for kind, _rule in EXCEPTIONS]
    for later, kind in enumerate(kinds):
        assert not any(issubclass(kind, earlier) for earlier in kinds[:later]), kind


def test_a_lost_connection_is_unavailable_whatever_the_error() -> None:
    exc = wrapped(pg_error("42P01"), invalidated=True)
    assert outcome(exc) == (Code.UNAVAILABLE, "DATABASE_UNAVAILABLE")


@pytest.mark.parametrize(
    "exc", [ValueError("x"), KeyError("k"), AssertionError(), wrapped(psycopg.InterfaceError())]
)
def test_anything_else_is_internal_with_a_generic_message(exc: BaseException) -> None:
    error = error_from_exception(exc)
    assert (error.code, error.reason, error.message) == INTERNAL
    assert error.metadata == {}


def test_a_typed_error_passes_through() -> None:
    error = NotFound("SESSION_NOT_FOUND", "session 3 does not exist")
    assert error_from_exception(error) is error


@pytest.mark.parametrize(
    ("sqlstate", "retryable"),
    [("40001", True), ("40P01", True), ("55P03", False), ("23505", False), ("57P01", False)],
)
def test_only_serialization_failures_and_deadlocks_are_retried(
    sqlstate: str, retryable: bool
) -> None:
    assert is_retryable(wrapped(pg_error(sqlstate))) is retryable
    assert is_retryable(pg_error(sqlstate)) is retryable
    assert is_retryable(TimeoutError()) is False


def test_the_status_carries_error_info_with_the_request_id() -> None:
    error: ApiError = NotFound("ROOM_NOT_FOUND", "room 9 does not exist", metadata={"roomId": "9"})
    status = to_status(error, "req-1")
    assert status.code is Code.NOT_FOUND
    parsed = rpc_status.status_pb2.Status.FromString(dict(status.trailing_metadata)[
        rpc_status.GRPC_DETAILS_METADATA_KEY
    ])  # fmt: skip
    info = ErrorInfo()
    assert parsed.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "ROOM_NOT_FOUND",
        "studio.v1",
        {"roomId": "9", "requestId": "req-1"},
    )


def test_an_unavailable_database_carries_a_retry_hint_and_makes_the_studio_be_looked_up_again() -> (
    None
):
    for sqlstate in ("25006", "57P01", "3D000"):
        status = to_rpc_status(error_from_exception(pg_error(sqlstate)), "req-2")
        [hint] = [d for d in status.details if d.Is(RetryInfo.DESCRIPTOR)]
        retry = RetryInfo()
        assert hint.Unpack(retry)
        assert retry.retry_delay.ToTimedelta().total_seconds() > 0
        assert location_may_have_changed(pg_error(sqlstate))
    assert not location_may_have_changed(pg_error("23505"))
    refused = to_rpc_status(error_from_exception(pg_error("23505")), "req-3")
    assert not [d for d in refused.details if d.Is(RetryInfo.DESCRIPTOR)]


BOOKED_DETAIL = (
    "Key (int8range(room_id, room_id, '[]'::text), tstzrange(start_time, end_time, '[)'::text),"
    ' (\'::\'::inet + id))=([3,4), ["2026-01-01 11:00:00+00","2026-01-01 12:30:00+00"), ::4)'
    " conflicts with existing key (int8range(room_id, room_id, '[]'::text), tstzrange(start_time,"
    " end_time, '[)'::text), ('::'::inet + id))=([3,4), [\"2026-01-01 10:00:00+00\","
    '"2026-01-01 12:00:00+00"), ::1:0:3e8).'
)


@pytest.mark.parametrize(
    ("constraint", "sqlstate", "detail", "expected"),
    [
        ("sessions_room_booking_excl", "23P01", BOOKED_DETAIL, ("ROOM_ALREADY_BOOKED",
         {"roomId": "3", "conflictingSessionId": str(2**32 + 1000)},
         f"room 3 is already booked at that time by session {2**32 + 1000};"
         " choose another time or room")),
        ("sessions_room_booking_excl", "23P01", None, ("ROOM_ALREADY_BOOKED", {},
         "the room is already booked at that time; choose another time or room")),
        ("tracks_project_id_track_number_key", "23505",
         "Key (project_id, track_number)=(7, 3) already exists.", ("TRACK_NUMBER_TAKEN",
         {"projectId": "7", "trackNumber": "3"}, "project 7 already has a track 3")),
        ("time_entries_running_timer_idx", "23505",
         "Key (session_id, project_id, track_id)=(5, null, null) already exists.",
         ("TIMER_ALREADY_RUNNING", {"sessionId": "5"},
          "a timer already runs for session 5; stop it first")),
    ],
)  # fmt: skip
def test_a_taken_slot_says_what_holds_it(
    constraint: str, sqlstate: str, detail: str | None, expected: tuple[str, dict[str, str], str]
) -> None:
    """Read from the violation itself: the booked session's id comes in the detail (the
    constraint's last key is '::' + id), so a refusal costs no second query."""
    exc = wrapped(pg_error(sqlstate, constraint=constraint, detail=detail))
    error = error_from_exception(exc)
    assert error.code is Code.FAILED_PRECONDITION
    assert (error.reason, error.metadata, error.message) == expected


def test_every_constraint_the_error_tables_name_is_in_the_core_metadata() -> None:
    constraints = {str(c.name) for t in tenant_metadata.tables.values() for c in t.constraints}
    indexes = {str(i.name) for t in tenant_metadata.tables.values() for i in t.indexes}
    assert set(TAKEN) <= constraints | indexes
    assert set(CHECKS) <= constraints
    assert {t.reason for t in TAKEN.values()} <= REASONS
