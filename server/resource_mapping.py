"""Between a resource message and its table row, in one declarative place per resource.

A `ResourceMapping` knows, for each writable field, its column and how a value crosses over:
text, exact decimals as strings, timestamps, enums by name, optional ids. It also knows what an
update mask means (AIP-134): which paths are written, and what a named-but-unset field becomes
(NULL for a nullable column, the column's default for the others).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from google.protobuf.message import Message
from sqlalchemy import literal_column

from server.errors import FieldViolation, InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from google.protobuf.field_mask_pb2 import FieldMask
    from google.protobuf.timestamp_pb2 import Timestamp
    from sqlalchemy import ColumnClause, Table

__all__ = ["Field", "Kind", "ResourceMapping", "etag_of", "timestamp_of", "version_of_etag"]

M = TypeVar("M", bound=Message)
OUTPUT_ONLY = frozenset({"id", "create_time", "update_time", "etag"})
# `SET col = DEFAULT`: a cleared NOT NULL column goes back to its default.
COLUMN_DEFAULT: ColumnClause[Any] = literal_column("DEFAULT")


class Kind(enum.Enum):
    TEXT = "text"  # "" is NULL
    DECIMAL = "decimal"  # exact decimal as a string; "" is NULL (or the default)
    BOOL = "bool"
    INT = "int"  # 0 is the column default
    ENUM = "enum"  # value names after the enum prefix, lower-cased: "in_progress"
    TIMESTAMP = "timestamp"
    ID = "id"  # a reference to another row; 0 / unset is NULL


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    column: str | None = None  # defaults to the field name
    immutable: bool = False  # set on create only: an update may not write it (AIP-203)
    output_only: bool = False  # read from its column (derived there), never written

    @property
    def column_name(self) -> str:
        return self.column or self.name


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_of(value: datetime) -> dict[str, int]:
    """A timestamptz as a Timestamp's fields, for a message constructor (what
    Timestamp.FromDatetime computes, at a fraction of its cost: this runs for every timestamp
    of every row a call returns)."""
    delta = value - EPOCH
    return {"seconds": delta.days * 86_400 + delta.seconds, "nanos": delta.microseconds * 1000}


def datetime_of(value: Timestamp) -> datetime:
    """A Timestamp as a timestamptz (Timestamp.ToDatetime's result, for less: microseconds,
    nanos truncated; the nanos of a request are checked to be in [0, 1e9))."""
    return EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def _same(value: Any) -> Any:  # noqa: ANN401 (a column's value, as it is)
    return value


def etag_of(version: int) -> str:
    return f'"{version}"'


def version_of_etag(etag: str, field: str) -> int:
    """The version an etag names; an etag we never issued is an invalid argument."""
    digits = etag.strip('"')
    if not digits.isdigit():
        raise InvalidArgument(
            "INVALID_ETAG",
            f"{field} is not an etag this service issued",
            metadata={"field": field},
        )
    return int(digits)


def _enum_names(field: Any) -> tuple[dict[int, str], dict[str, int]]:  # noqa: ANN401 (upb or py descriptor)
    enum_type = field.enum_type
    assert enum_type is not None
    prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum_type.name)[1:] + "_"
    to_db = {
        v.number: v.name.removeprefix(prefix).lower() for v in enum_type.values if v.number != 0
    }
    return to_db, {name: number for number, name in to_db.items()}


class ResourceMapping(Generic[M]):
    """How a resource's fields become columns and back.

    `example`: a resource whose fields are as permissive as their rules allow, valid but
    for required fields left unset where no value could be (a session's times: any start
    refuses some end under the 31-day rule). An update that writes some fields in one
    statement has them validated laid over it (standard_methods.update_at_once): the rules of
    the fields it leaves alone then have (next to) nothing to report, which is cheaper than
    reporting and dropping it. tests/unit checks each example."""

    def __init__(
        self,
        message_type: type[M],
        table: Table,
        fields: tuple[Field, ...],
        *,
        example: M | None = None,
    ) -> None:
        self.message_type = message_type
        self.example = example
        self.table = table
        self.fields = {f.name: f for f in fields if not f.output_only}  # the writable ones
        self.descriptors = {f.name: message_type.DESCRIPTOR.fields_by_name[f.name] for f in fields}
        self.enums = {
            f.name: _enum_names(self.descriptors[f.name]) for f in fields if f.kind is Kind.ENUM
        }
        self._readers = tuple((f.name, f.column_name, self._reader(f)) for f in fields)
        self._writers = tuple(
            (f.name, f.column_name, self.descriptors[f.name].has_presence, self._writer(f))
            for f in fields
            if not f.output_only
        )
        mapped = {f.name for f in fields}
        missing = set(message_type.DESCRIPTOR.fields_by_name) - mapped - OUTPUT_ONLY
        assert not missing, f"{message_type.__name__}: fields without a column: {missing}"

    # -- row -> message ----------------------------------------------------------------------

    def _reader(self, field: Field) -> Callable[[Any], Any]:
        """How a non-NULL column value becomes the field's value (or submessage)."""
        if field.kind is Kind.TIMESTAMP:
            return timestamp_of
        if field.kind is Kind.ENUM:
            return self.enums[field.name][1].__getitem__
        if field.kind is Kind.DECIMAL:
            return str
        return _same

    def to_message(self, row: Mapping[str, Any]) -> M:
        # One constructor call with every field: much cheaper than setting them one by one.
        values: dict[str, Any] = {
            "id": row["id"],
            "etag": etag_of(row["version"]),
            "create_time": timestamp_of(row["created_at"]),
            "update_time": timestamp_of(row["updated_at"]),
        }
        for name, column, read in self._readers:
            value = row[column]
            if value is not None:
                values[name] = read(value)
        return self.message_type(**values)

    # -- message -> columns ------------------------------------------------------------------

    def _writer(self, field: Field) -> Callable[[Any], Any]:
        """How a set field's value becomes the column's value."""
        if field.kind is Kind.TIMESTAMP:
            return datetime_of
        if field.kind is Kind.ENUM:
            return self.enums[field.name][0].__getitem__
        if field.kind is Kind.DECIMAL:
            return Decimal
        return _same

    def is_set(self, message: M, name: str) -> bool:
        """Set in the proto3 sense: present, or a non-zero value for an implicit field."""
        descriptor = self.descriptors[name]
        if descriptor.has_presence:
            return message.HasField(name)
        return bool(getattr(message, name))

    def _false_is_a_value(self, name: str) -> bool:
        """A plain bool cannot be "unset": false in a mask means write false."""
        return self.fields[name].kind is Kind.BOOL and not self.descriptors[name].has_presence

    def column_value(self, message: M, name: str) -> Any:  # noqa: ANN401 (a column's value)
        """What a field's value is written as; a field that is unset is cleared."""
        field = self.fields[name]
        if not self.is_set(message, name) and not self._false_is_a_value(name):
            column = self.table.c[field.column_name]
            return COLUMN_DEFAULT if column.server_default is not None else None
        return self._writer(field)(getattr(message, name))

    def insert_values(self, message: M) -> dict[str, Any]:
        """The set fields; the others get the column defaults. One pass, with what each
        field needs worked out once (this runs for every create)."""
        values = {}
        for name, column, has_presence, write in self._writers:
            value = getattr(message, name)
            if message.HasField(name) if has_presence else value:
                values[column] = write(value)
        return values

    def update_values(self, patch: M, paths: list[str]) -> dict[str, Any]:
        return {self.fields[p].column_name: self.column_value(patch, p) for p in paths}

    # -- update masks (AIP-134) --------------------------------------------------------------

    def mask_paths(self, patch: M, mask: FieldMask | None) -> list[str]:
        """The writable fields an update writes. Output-only paths are ignored (AIP-161); a
        path that is not a field of the message (its descriptor says, not a list kept by
        hand), or an immutable field named or set, is INVALID_ARGUMENT."""
        if mask is None or not mask.paths:
            paths = [name for name in self.fields if self.is_set(patch, name)]
        elif "*" in mask.paths:
            paths = [name for name, f in self.fields.items() if not f.immutable]
        else:
            known = self.message_type.DESCRIPTOR.fields_by_name
            unknown = [p for p in mask.paths if p not in known and p != "*"]
            if unknown:
                kind = self.message_type.DESCRIPTOR.full_name
                self._refuse_mask(
                    ", ".join(f'"{p}"' for p in unknown) + f" is not a field of {kind}",
                    "FIELD_MASK_IN",  # the rule protovalidate's `field_mask.in` reported
                )
            paths = [p for p in dict.fromkeys(mask.paths) if p in self.fields]
        fixed = [p for p in paths if self.fields[p].immutable]
        if fixed:
            self._refuse_mask(
                f"{', '.join(fixed)} cannot change once created; create another instead",
                "IMMUTABLE",
            )
        return paths

    @staticmethod
    def _refuse_mask(description: str, reason: str) -> None:
        raise InvalidArgument(
            "INVALID_ARGUMENT",
            f"the request is invalid: update_mask: {description}",
            field_violations=(FieldViolation("update_mask", description, reason),),
        )

    def merged(self, current: M | None, patch: M, paths: list[str]) -> M:
        """The resource as it would be after the update, to validate as a whole; with no
        `current`, only what the update writes."""
        result = self.message_type()
        if current is not None:
            result.CopyFrom(current)
        for path in paths:
            if self.is_set(patch, path) or self._false_is_a_value(path):
                if self.descriptors[path].message_type is not None:
                    getattr(result, path).CopyFrom(getattr(patch, path))
                else:
                    setattr(result, path, getattr(patch, path))
            else:
                result.ClearField(path)
        return result
