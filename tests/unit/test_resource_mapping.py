"""Between resource messages and rows (server/resource_mapping.py), and what an update mask
means (AIP-134), on the API's own mappings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from db.tables import clients
from server.errors import InvalidArgument
from server.resource_mapping import (
    COLUMN_DEFAULT,
    Field,
    Kind,
    ResourceMapping,
    etag_of,
    timestamp_of,
    version_of_etag,
)
from server.routers.clients import CLIENT
from server.routers.projects import PROJECT
from server.routers.rooms import ROOM
from server.routers.sessions import SESSION
from server.validation import validate_resource, validate_written
from studio.v1 import client_pb2, room_pb2, session_pb2

START = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)
ALL_MAPPINGS: list[ResourceMapping[Any]] = [CLIENT, ROOM, PROJECT, SESSION]


def _session_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": 7,
        "version": 3,
        "created_at": START - timedelta(days=1),
        "updated_at": START - timedelta(hours=1, microseconds=1),
        "client_id": 1,
        "room_id": 2,
        "project_id": None,
        "title": "Tracking",
        "description": None,
        "start_time": START,
        "end_time": START + timedelta(hours=3),
        "status": "in_progress",
        "total_amount": Decimal("300.00"),
        "deposit_amount": None,
        "deposit_paid": False,
        "payment_status": "unpaid",
        "notes": None,
    }
    return row | changes


# -- row -> message ------------------------------------------------------------------------


def test_a_row_becomes_the_resource_with_its_etag_and_times() -> None:
    session = SESSION.to_message(_session_row())  # type: ignore[arg-type]
    assert session.id == 7
    assert session.etag == '"3"'
    assert session.status == session_pb2.SESSION_STATUS_IN_PROGRESS
    assert session.total_amount == "300.00"  # exact, as a string
    assert not session.HasField("project_id")  # NULL is unset
    assert session.description == ""
    assert session.start_time.ToDatetime(tzinfo=UTC) == START
    assert session.update_time.ToDatetime(tzinfo=UTC) == START - timedelta(hours=1, microseconds=1)


@pytest.mark.parametrize(
    "when",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the epoch
        datetime(2027, 3, 1, 10, 0, 0, 123_456, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_timestamps_cross_over_as_timestamp_computes_them(when: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(when)
    assert Timestamp(**timestamp_of(when)) == expected


def test_an_etag_names_a_version_and_nothing_else_is_one() -> None:
    assert version_of_etag(etag_of(12), "etag") == 12
    assert version_of_etag("12", "etag") == 12  # the quotes are optional
    for bad in ("", '"v1"', "W/12", '"-1"'):
        with pytest.raises(InvalidArgument) as raised:
            version_of_etag(bad, "session.etag")
        assert raised.value.reason == "INVALID_ETAG"
        assert raised.value.metadata == {"field": "session.etag"}


# -- message -> columns --------------------------------------------------------------------


def test_a_create_writes_only_what_is_set() -> None:
    session = session_pb2.Session(
        client_id=1,
        room_id=2,
        title="Tracking",
        start_time=Timestamp(seconds=int(START.timestamp())),
        end_time=Timestamp(seconds=int(START.timestamp()) + 3600),
        status=session_pb2.SESSION_STATUS_SCHEDULED,
        deposit_amount="50.5",
    )
    assert SESSION.insert_values(session) == {
        "client_id": 1,
        "room_id": 2,
        "title": "Tracking",
        "start_time": START,
        "end_time": START + timedelta(hours=1),
        "status": "scheduled",
        "deposit_amount": Decimal("50.5"),
    }


def test_a_cleared_field_is_null_or_back_to_its_default() -> None:
    patch = room_pb2.Room(id=1)
    values = ROOM.update_values(patch, ["description", "hourly_rate", "type", "capacity"])
    assert values == {
        "description": None,  # nullable: NULL
        "hourly_rate": COLUMN_DEFAULT,  # NOT NULL with a default: DEFAULT
        "type": COLUMN_DEFAULT,
        "capacity": COLUMN_DEFAULT,
    }
    assert SESSION.update_values(session_pb2.Session(id=1), ["project_id"]) == {"project_id": None}


def test_a_plain_bool_in_the_mask_writes_false() -> None:
    assert CLIENT.update_values(client_pb2.Client(id=1), ["is_vip"]) == {"is_vip": False}
    assert CLIENT.insert_values(client_pb2.Client(name="A")) == {"name": "A"}  # false: default


# -- update masks (AIP-134) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "written"),
    [
        (None, ["project_id", "title"]),  # no mask: the fields that are set (mapping order)
        ([], ["project_id", "title"]),  # an empty mask is no mask
        (["notes"], ["notes"]),  # named but unset: cleared
        (["title", "title", "notes"], ["title", "notes"]),  # once each, in order
        (["id", "etag", "update_time", "title"], ["title"]),  # output only: ignored
        (["*"], list(SESSION.fields)),
    ],
)
def test_the_mask_names_what_an_update_writes(paths: list[str] | None, written: list[str]) -> None:
    patch = session_pb2.Session(id=1, title="Overdubs", project_id=4)
    mask = None if paths is None else FieldMask(paths=paths)
    assert SESSION.mask_paths(patch, mask) == written


def test_the_merged_resource_is_what_the_update_would_store() -> None:
    current = SESSION.to_message(  # type: ignore[arg-type]
        _session_row(project_id=4, notes="bring cables", deposit_paid=True)
    )
    patch = session_pb2.Session(id=7, title="Overdubs", end_time=Timestamp(seconds=5))
    merged = SESSION.merged(current, patch, ["title", "project_id", "notes", "deposit_paid"])
    assert merged.title == "Overdubs"
    assert not merged.HasField("project_id")  # named, unset: unlinked
    assert merged.notes == ""
    assert merged.deposit_paid is False  # a plain bool named in the mask
    assert merged.end_time == current.end_time  # not named: kept
    assert current.notes == "bring cables"  # the current resource is left as it was
    with_time = SESSION.merged(current, patch, ["end_time"])
    assert with_time.end_time == Timestamp(seconds=5)


def test_a_mapping_must_map_every_writable_field() -> None:
    with pytest.raises(AssertionError, match="fields without a column"):
        ResourceMapping(client_pb2.Client, clients, (Field("name", Kind.TEXT),))


def test_a_mask_path_is_checked_against_the_message_itself() -> None:
    """No list of paths is kept by hand: any field of Session may be named (output-only ones
    are ignored), anything else is refused at update_mask."""
    patch = session_pb2.Session(id=1)
    every_field = [f.name for f in session_pb2.Session.DESCRIPTOR.fields]
    assert SESSION.mask_paths(patch, FieldMask(paths=every_field)) == list(SESSION.fields)
    for paths in (["no_such_field"], ["title", "start_time.seconds"], ["Title"]):
        with pytest.raises(InvalidArgument) as raised:
            SESSION.mask_paths(patch, FieldMask(paths=paths))
        [violation] = raised.value.field_violations
        assert (violation.field, violation.reason) == ("update_mask", "FIELD_MASK_IN")
        assert violation.description.endswith("is not a field of studio.v1.Session")


def test_an_immutable_field_is_written_on_create_only() -> None:
    mapping = ResourceMapping(
        client_pb2.Client,
        clients,
        tuple(Field(f.name, f.kind, immutable=f.name == "type") for f in CLIENT.fields.values()),
    )
    assert "type" in mapping.insert_values(client_pb2.Client(name="A", type=2))
    assert "type" not in mapping.mask_paths(client_pb2.Client(id=1), FieldMask(paths=["*"]))
    for patch, mask in (
        (client_pb2.Client(id=1), FieldMask(paths=["name", "type"])),
        (client_pb2.Client(id=1, type=2), None),  # set, without a mask
    ):
        with pytest.raises(InvalidArgument) as raised:
            mapping.mask_paths(patch, mask)
        assert [(v.field, v.reason) for v in raised.value.field_violations] == [
            ("update_mask", "IMMUTABLE")
        ]


@pytest.mark.parametrize("mapping", [m for m in ALL_MAPPINGS if m.example is not None],
                         ids=lambda m: m.message_type.__name__)  # fmt: skip
def test_each_example_is_a_valid_resource_but_for_fields_left_unset(
    mapping: ResourceMapping[Any],
) -> None:
    """An update's written fields are validated laid over the example: an invalid example
    would refuse updates for a field they do not write. Its only violations may be REQUIRED
    rules of fields it leaves unset (dropped unless the update writes them)."""
    assert mapping.example is not None
    try:
        validate_resource(mapping.example, "example")
    except InvalidArgument as refused:
        for violation in refused.field_violations:
            name = violation.field.removeprefix("example.")
            assert violation.reason == "REQUIRED", violation
            assert not mapping.is_set(mapping.example, name), violation


def test_an_update_writing_one_field_is_checked_at_that_field_only() -> None:
    """Laid over the example, the rules of the fields an update leaves alone stay quiet."""
    patch = session_pb2.Session(id=1, project_id=0, end_time=Timestamp(seconds=1_800_000_000))
    paths = ["end_time"]
    validate_written(SESSION.merged(SESSION.example, patch, paths), "session", paths)
    paths = ["title"]  # cleared: required
    written = SESSION.merged(SESSION.example, patch, paths)
    with pytest.raises(InvalidArgument) as refused:
        validate_written(written, "session", paths)
    assert [v.field for v in refused.value.field_violations] == ["session.title"]
