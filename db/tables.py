"""Tenant database tables (one database per studio), as SQLAlchemy Core.

These mirror migrations_sql/tenant/ exactly; tests/test_schema.py migrates a fresh database
and compares its catalogue with a database built from this metadata. Each table's `info["kind"]`
names the resource a row is ("time_entry"): errors about its foreign keys are derived from it
(server/error_mapping.py: TIME_ENTRY_NOT_FOUND, SESSION_HAS_TIME_ENTRIES...).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ExcludeConstraint

from db._naming import new_metadata

__all__ = [
    "clients",
    "projects",
    "rooms",
    "sessions",
    "task_types",
    "tenant_metadata",
    "time_entries",
    "tracks",
]

tenant_metadata = new_metadata()

NOW = text("now()")
FALSE = text("false")
TRUE = text("true")


def _id() -> Column[int]:
    return Column("id", BigInteger, Identity(always=False), primary_key=True)


def _bookkeeping(*, request_id: bool = True) -> list[Column[object]]:
    """version (the etag), the create idempotency key, and the two timestamps."""
    cols: list[Column[object]] = [
        Column("version", BigInteger, nullable=False, server_default=text("1")),
    ]
    if request_id:
        cols.append(Column("create_request_id", Uuid, unique=True))
    cols += [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    ]
    return cols


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


CLIENT_TYPES = ("individual", "company")
ROOM_TYPES = ("recording", "mixing", "mastering", "rehearsal", "live")
PROJECT_TYPES = ("album", "ep", "single", "demo", "soundtrack", "podcast")
PROJECT_STATUSES = (
    "pre_production",
    "recording",
    "editing",
    "mixing",
    "mastering",
    "completed",
    "delivered",
    "archived",
)
TRACK_STATUSES = ("recording", "editing", "mixing", "mastering", "completed")
# 0009: "conflict", a double booking found when rooms became conflict-free; like a cancelled
# session, it does not hold its room.
SESSION_STATUSES = ("scheduled", "in_progress", "completed", "cancelled", "conflict")
NOT_HOLDING_THE_ROOM = ("cancelled", "conflict")
PAYMENT_STATUSES = ("unpaid", "partial", "paid", "refunded")
TASK_CATEGORIES = ("billable", "non_billable")
HEX_COLOR = "color ~ '^#[0-9a-fA-F]{6}$'"
ROUNDED_MINUTES = "round(extract(epoch FROM end_time - start_time) / 60)"
TOTALED = ["duration_minutes", "billable_amount", "end_time"]  # what time totals read

clients = Table(
    "clients",
    tenant_metadata,
    _id(),
    Column("name", String(255), nullable=False),
    Column("artist_name", String(255)),
    Column("email", String(255)),
    Column("phone", String(50)),
    Column("type", String(20), nullable=False, server_default="individual"),
    Column("address", Text),
    Column("city", String(100)),
    Column("country", String(100)),
    Column("notes", Text),
    Column("is_vip", Boolean, nullable=False, server_default=FALSE),
    Column("is_active", Boolean, nullable=False, server_default=TRUE),
    *_bookkeeping(),
    CheckConstraint(_one_of("type", CLIENT_TYPES), name="type"),
    CheckConstraint("name <> ''", name="name"),
    info={"kind": "client"},
)

rooms = Table(
    "rooms",
    tenant_metadata,
    _id(),
    Column("name", String(255), nullable=False),
    Column("description", Text),
    Column("type", String(20), nullable=False, server_default="recording"),
    Column("hourly_rate", Numeric(10, 2), nullable=False, server_default=text("0")),
    Column("half_day_rate", Numeric(10, 2)),
    Column("full_day_rate", Numeric(10, 2)),
    Column("capacity", Integer, nullable=False, server_default=text("1")),
    Column("has_isolation_booth", Boolean, nullable=False, server_default=FALSE),
    Column("has_live_room", Boolean, nullable=False, server_default=FALSE),
    Column("has_control_room", Boolean, nullable=False, server_default=FALSE),
    Column("is_active", Boolean, nullable=False, server_default=TRUE),
    Column("is_available_for_booking", Boolean, nullable=False, server_default=TRUE),
    Column("color", String(7)),
    *_bookkeeping(),
    CheckConstraint(_one_of("type", ROOM_TYPES), name="type"),
    CheckConstraint("name <> ''", name="name"),
    CheckConstraint("hourly_rate >= 0 AND half_day_rate >= 0 AND full_day_rate >= 0", name="rates"),
    CheckConstraint("capacity > 0", name="capacity"),
    CheckConstraint(HEX_COLOR, name="color"),
    info={"kind": "room"},
)

projects = Table(
    "projects",
    tenant_metadata,
    _id(),
    Column("client_id", BigInteger, ForeignKey("clients.id", ondelete="RESTRICT"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("artist_name", String(255)),
    Column("description", Text),
    Column("genre", String(100)),
    Column("type", String(20), nullable=False, server_default="album"),
    Column("status", String(20), nullable=False, server_default="pre_production"),
    Column("budget", Numeric(12, 2)),
    Column("label", String(200)),
    Column("catalog_number", String(100)),
    Column("notes", Text),
    *_bookkeeping(),
    CheckConstraint(_one_of("type", PROJECT_TYPES), name="type"),
    CheckConstraint(_one_of("status", PROJECT_STATUSES), name="status"),
    CheckConstraint("name <> ''", name="name"),
    CheckConstraint("budget >= 0", name="budget"),
    Index(None, "client_id", "id"),
    info={"kind": "project"},
)

tracks = Table(
    "tracks",
    tenant_metadata,
    _id(),
    Column(
        "project_id", BigInteger, ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    ),
    Column("title", String(255), nullable=False),
    Column("track_number", Integer),
    Column("duration_seconds", Integer),
    Column("isrc", String(12)),
    Column("status", String(20), nullable=False, server_default="recording"),
    Column("bpm", Integer),
    Column("musical_key", String(20)),
    Column("recorded_in_room_id", BigInteger, ForeignKey("rooms.id", ondelete="SET NULL")),
    Column("notes", Text),
    *_bookkeeping(),
    CheckConstraint(_one_of("status", TRACK_STATUSES), name="status"),
    CheckConstraint("title <> ''", name="title"),
    CheckConstraint("track_number > 0 AND duration_seconds >= 0 AND bpm > 0", name="numbers"),
    UniqueConstraint("project_id", "track_number"),  # 0011: a number once per project
    Index(None, "project_id", "id"),
    Index(None, "recorded_in_room_id"),
    info={"kind": "track"},
)

sessions = Table(
    "sessions",
    tenant_metadata,
    _id(),
    Column("client_id", BigInteger, ForeignKey("clients.id", ondelete="RESTRICT"), nullable=False),
    Column("room_id", BigInteger, ForeignKey("rooms.id", ondelete="RESTRICT"), nullable=False),
    # 0008: optional link to a project; deleting the project unlinks its sessions.
    Column(
        "project_id",
        BigInteger,
        ForeignKey("projects.id", ondelete="SET NULL", onupdate="NO ACTION"),
    ),
    Column("title", String(255), nullable=False),
    Column("description", Text),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("status", String(20), nullable=False, server_default="scheduled"),
    Column("total_amount", Numeric(10, 2)),
    Column("deposit_amount", Numeric(10, 2)),
    Column("deposit_paid", Boolean, nullable=False, server_default=FALSE),
    Column("payment_status", String(20), nullable=False, server_default="unpaid"),
    Column("notes", Text),
    *_bookkeeping(),
    CheckConstraint("end_time > start_time", name="time_range"),
    CheckConstraint(_one_of("status", SESSION_STATUSES), name="status"),
    CheckConstraint(_one_of("payment_status", PAYMENT_STATUSES), name="payment_status"),
    CheckConstraint("title <> ''", name="title"),
    CheckConstraint("total_amount >= 0 AND deposit_amount >= 0", name="amounts"),
    # 0010: booking rules (also in the protos, and checked here for updates of one field)
    CheckConstraint("deposit_amount <= total_amount", name="deposit"),
    CheckConstraint("end_time - start_time <= interval '31 days'", name="duration"),
    # 0009: a room is booked once at a time (see the migration for why these operators)
    ExcludeConstraint(
        (literal_column("int8range(room_id, room_id, '[]')"), "&&"),
        (literal_column("tstzrange(start_time, end_time, '[)')"), "&&"),
        (literal_column("('::'::inet + id) inet_ops"), "<>"),
        using="gist",
        where=text(_one_of("status", NOT_HOLDING_THE_ROOM).replace(" IN ", " NOT IN ")),
        name="sessions_room_booking_excl",
    ),
    Index(None, "start_time", "id"),
    Index(None, "client_id", "start_time", "id"),
    Index(None, "room_id", "start_time", "id"),
    Index(None, "project_id", "start_time", "id"),
    info={"kind": "session"},
)

task_types = Table(
    "task_types",
    tenant_metadata,
    _id(),
    Column("name", String(100), nullable=False),
    Column("description", Text),
    Column("hourly_rate", Numeric(10, 2), nullable=False, server_default=text("0")),
    Column("category", String(20), nullable=False, server_default="billable"),
    Column("color", String(7)),
    Column("sort_order", Integer, nullable=False, server_default=text("0")),
    Column("is_active", Boolean, nullable=False, server_default=TRUE),
    *_bookkeeping(),  # 0011: the create_request_id
    CheckConstraint(_one_of("category", TASK_CATEGORIES), name="category"),
    CheckConstraint("hourly_rate >= 0", name="hourly_rate"),
    CheckConstraint(HEX_COLOR, name="color"),
    CheckConstraint("name <> ''", name="name"),
    info={"kind": "task_type"},
)

time_entries = Table(
    "time_entries",
    tenant_metadata,
    _id(),
    Column(
        "task_type_id",
        BigInteger,
        ForeignKey("task_types.id", ondelete="RESTRICT"),
        nullable=False,
    ),
    # Exactly one parent; RESTRICT keeps billing evidence from vanishing with its parent.
    Column("session_id", BigInteger, ForeignKey("sessions.id", ondelete="RESTRICT")),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="RESTRICT")),
    Column("track_id", BigInteger, ForeignKey("tracks.id", ondelete="RESTRICT")),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True)),
    Column("hourly_rate_snapshot", Numeric(10, 2), nullable=False),
    Column("billable", Boolean, nullable=False, server_default=TRUE),  # 0011: snapshotted too
    Column("manually_adjusted", Boolean, nullable=False, server_default=FALSE),
    Column("notes", Text),
    Column("created_by", String(255)),
    *_bookkeeping(),  # 0011: the create_request_id
    # 0011: derived by the database, never written: NULL while the timer runs
    Column("duration_minutes", Integer, Computed(ROUNDED_MINUTES + "::integer", persisted=True)),
    Column(
        "billable_amount",
        Numeric(14, 2),
        Computed(
            "CASE WHEN end_time IS NULL THEN NULL"
            f" WHEN billable THEN round({ROUNDED_MINUTES} * hourly_rate_snapshot / 60, 2)"
            " ELSE 0 END",
            persisted=True,
        ),
    ),
    CheckConstraint("end_time >= start_time", name="time_range"),
    CheckConstraint("hourly_rate_snapshot >= 0", name="rate"),
    CheckConstraint(
        "num_nonnulls(session_id, project_id, track_id) = 1", name="exactly_one_parent"
    ),
    Index(None, "task_type_id"),
    # 0011: each context's entries in time order, with what their totals read
    *(
        Index(None, context, "start_time", "id", postgresql_include=TOTALED)
        for context in ("session_id", "project_id", "track_id")
    ),
    # 0011: at most one running timer per session, project or track
    Index(
        "time_entries_running_timer_idx",
        "session_id",
        "project_id",
        "track_id",
        unique=True,
        postgresql_where=text("end_time IS NULL"),
        postgresql_nulls_not_distinct=True,
    ),
    info={"kind": "time_entry"},
)
