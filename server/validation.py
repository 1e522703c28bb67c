"""Protovalidate rules (written in the .proto files) checked before a procedure runs.

Field paths follow the request ("session.project_id"). Rules at message level carry no field
of their own in protovalidate; ours are named "<field path>.<rule>" (for instance
"end_time.after_start_time"), and the violation is reported at that field.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import protovalidate
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from server.errors import FieldViolation, InvalidArgument

__all__ = ["validate", "validate_resource", "validate_written"]

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
NUL = "\x00"


def _nul_characters(path: str, value: str | Sequence[str]) -> list[FieldViolation]:
    """A text field (or each item of a repeated one) that holds a NUL character."""
    texts = [(path, value)] if isinstance(value, str) else [
        (f"{path}[{index}]", text) for index, text in enumerate(value)
    ]  # fmt: skip
    return [
        FieldViolation(
            at, "must not contain a NUL character (\\0): text cannot hold one", "NUL_CHARACTER"
        )
        for at, text in texts
        if NUL in text
    ]


def _malformed(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Values that no rule in a .proto states and that cannot be stored: a NUL character in
    text (PostgreSQL text cannot hold one), timestamps outside what
    google.protobuf.Timestamp allows (nanos in [0, 1e9), years 1-9999)."""
    found = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            if not isinstance(value, str) or NUL in value:  # the common case costs one test
                found += _nul_characters(path, value)
        elif field.message_type is None or not isinstance(value, Message):
            continue  # other scalars, and repeated messages (no request repeats one)
        elif isinstance(value, Timestamp):
            if not (
                0 <= value.nanos < 1_000_000_000 and MIN_SECONDS <= value.seconds <= MAX_SECONDS
            ):
                found.append(FieldViolation(path, "not a valid timestamp", "INVALID_TIMESTAMP"))
        else:
            found += _malformed(value, f"{path}.")
    return found


def validate(request: Message) -> None:
    """Raise InvalidArgument listing every violation of the request's rules."""
    malformed = _malformed(request)
    if malformed:
        raise InvalidArgument(
            "INVALID_ARGUMENT",
            "the request has values that cannot be stored: "
            + "; ".join(f"{v.field}: {v.description}" for v in malformed[:3]),
            field_violations=tuple(malformed),
        )
    _raise_if_any(_validator.collect_violations(request), "")


def validate_resource(resource: Message, path: str) -> None:
    """Validate a resource as it would be stored (an update's merged result), at `path`."""
    _raise_if_any(_validator.collect_violations(resource), path)


def validate_written(written: Message, path: str, paths: Collection[str]) -> None:
    """Validate the fields an update writes (`paths`), `written` holding them (the others
    unset, or as permissive as their rules allow): only violations at those fields count.
    A rule on a field the update leaves alone is not its concern (that value is stored, so
    valid), and a rule across fields holds as PostgreSQL checks it (a CHECK constraint,
    mapped back to the rule's field violation in server/error_mapping.py)."""
    violations = [
        v for v in _validator.collect_violations(written)
        if _path(v, "")[0].split(".", 1)[0] in paths
    ]  # fmt: skip
    _raise_if_any(violations, path)
