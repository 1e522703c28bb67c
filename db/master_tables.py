"""Master database tables: organizations, their API keys, and where their data lives."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from db._naming import new_metadata

__all__ = [
    "API_KEY_ROLES",
    "MOVE_STEPS",
    "api_keys",
    "master_metadata",
    "organizations",
    "tenant_databases",
    "tenant_moves",
]

master_metadata = new_metadata()
NOW = text("now()")
API_KEY_ROLES = ("admin", "member", "read_only")
# The steps of `studio tenants move`, in order (db/tenant_move.py).
MOVE_STEPS = ("planned", "checked", "held", "copied", "verified", "switched", "done")

organizations = Table(
    "organizations",
    master_metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("slug", String(63), nullable=False, unique=True),
    Column("is_active", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    CheckConstraint("slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'", name="slug"),
    CheckConstraint("name <> ''", name="name"),
)

api_keys = Table(
    "api_keys",
    master_metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column(
        "organization_id",
        BigInteger,
        ForeignKey("organizations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(100), nullable=False, server_default=""),
    Column("key_prefix", String(32), nullable=False, unique=True),
    Column("key_sha256", LargeBinary, nullable=False),
    Column("role", String(20), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint(f"role IN {API_KEY_ROLES!r}", name="role"),
    CheckConstraint("length(key_sha256) = 32", name="key_sha256"),
    Index(None, "organization_id"),
)

tenant_databases = Table(
    "tenant_databases",
    master_metadata,
    Column(
        "organization_id",
        BigInteger,
        ForeignKey("organizations.id", ondelete="RESTRICT"),
        primary_key=True,
    ),
    # NULL: the master's own server. Otherwise a libpq URL without a database name.
    Column("server_url", Text),
    Column("database_name", String(63), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    # The role the tenant is reached with (its owner) and that role's password, a secret;
    # both NULL for a tenant made before tenant roles, until `studio tenants isolate`.
    Column("role_name", String(63)),
    Column("role_password", Text),
    # NULL: served at server_url. Otherwise a pooler's libpq URL (no database, no user) the
    # service connects through; the runner and operator commands keep server_url.
    Column("pooled_url", Text),
    UniqueConstraint(
        "server_url",
        "database_name",
        name="tenant_databases_server_database_key",
        postgresql_nulls_not_distinct=True,
    ),
    CheckConstraint("database_name ~ '^[a-z_][a-z0-9_]*$'", name="database_name"),
    CheckConstraint("role_name ~ '^[a-z_][a-z0-9_]*$'", name="role_name"),
    CheckConstraint("(role_name IS NULL) = (role_password IS NULL)", name="role"),
)

# A studio being moved to another server, until its source is dropped (db/tenant_move.py).
tenant_moves = Table(
    "tenant_moves",
    master_metadata,
    Column(
        "organization_id",
        BigInteger,
        ForeignKey("organizations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("source_server_url", Text),  # NULL: the master's own server
    Column("source_database", String(63), nullable=False),
    Column("target_server_url", Text, nullable=False),
    Column("step", Text, nullable=False),  # the last step completed
    Column("last_error", Text),
    Column("pause_ms", Integer),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=NOW),
    CheckConstraint(f"step IN {MOVE_STEPS!r}", name="step"),
)
