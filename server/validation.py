"""Protovalidate rules (written in the .proto files) checked before a procedure runs.

Field paths follow the request ("session.project_id"). Rules at message level carry no field
of their own in protovalidate; ours are named "<field path>.<rule>" (for instance
"end_time.after_start_time"), and the violation is reported at that field.
"""

from __future__ import annotations

import protovalidate
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from server.errors import FieldViolation, InvalidArgument

__all__ = ["validate", "validate_resource"]

_validator = protovalidate.Validator()


def _path(violation: protovalidate.Violation, prefix: str) -> tuple[str, str]:
    """(field path, reason) of one violation."""
    proto = violation.proto
    parts = [prefix] if prefix else []
    if proto.field is not None:
        for element in proto.field.elements:
            part = element.field_name
            if element.subscript is not None:  # a list index or a map key
                key = getattr(element.subscript, "value", element.subscript)
                part += f'["{key}"]' if isinstance(key, str) else f"[{key}]"
            parts.append(part)
    rule_id = proto.rule_id or "invalid"
    if proto.rule is None and "." in rule_id:  # a message-level rule: its id names the field
        field, _, rule_id = rule_id.rpartition(".")
        parts.append(field)
    return ".".join(p for p in parts if p), rule_id.replace(".", "_").upper()


def _raise_if_any(violations: list[protovalidate.Violation], prefix: str) -> None:
    if not violations:
        return
    details = []
    for violation in violations:
        field, reason = _path(violation, prefix)
        details.append(FieldViolation(field, violation.proto.message or reason, reason))
    summary = "; ".join(f"{v.field}: {v.description}" for v in details[:3])
    raise InvalidArgument(
        "INVALID_ARGUMENT",
        f"the request is invalid: {summary}" + (" ..." if len(details) > 3 else ""),
        field_violations=tuple(details),
    )


MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31


def _malformed_timestamps(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Timestamps outside what google.protobuf.Timestamp allows (nanos in [0, 1e9), years
    1-9999): well-formedness, like UTF-8, that no rule in a .proto states."""
    found = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is None or not isinstance(value, Message):
            continue  # scalars, and repeated fields (no request repeats a message)
        if isinstance(value, Timestamp):
            if not (
                0 <= value.nanos < 1_000_000_000 and MIN_SECONDS <= value.seconds <= MAX_SECONDS
            ):
                found.append(FieldViolation(path, "not a valid timestamp", "INVALID_TIMESTAMP"))
        else:
            found += _malformed_timestamps(value, f"{path}.")
    return found


def validate(request: Message) -> None:
    """Raise InvalidArgument listing every violation of the request's rules."""
    malformed = _malformed_timestamps(request)
    if malformed:
        raise InvalidArgument(
            "INVALID_ARGUMENT", "the request has malformed timestamps",
            field_violations=tuple(malformed),
        )  # fmt: skip
    _raise_if_any(_validator.collect_violations(request), "")


def validate_resource(resource: Message, path: str) -> None:
    """Validate a resource as it would be stored (an update's merged result), at `path`."""
    _raise_if_any(_validator.collect_violations(resource), path)
