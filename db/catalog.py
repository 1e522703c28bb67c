"""A database's schema as PostgreSQL itself describes it, for comparing two databases.

Comparing through the catalogue (format_type, pg_get_constraintdef, pg_get_indexdef) means both
sides are normalised by the same server, so a CHECK written by hand and one rendered by
SQLAlchemy compare equal exactly when PostgreSQL treats them as the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["SchemaDescription", "describe_schema"]


@dataclass(frozen=True)
class SchemaDescription:
    # table -> column -> (type, not null, default, identity)
    columns: dict[str, dict[str, tuple[str, bool, str | None, str]]] = field(default_factory=dict)
    # table -> constraint name -> definition (checks, keys, foreign keys with ON DELETE)
    constraints: dict[str, dict[str, str]] = field(default_factory=dict)
    # table -> index name -> definition
    indexes: dict[str, dict[str, str]] = field(default_factory=dict)


_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity::text
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
"""
_CONSTRAINTS = """
SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
"""
_INDEXES = "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"


async def describe_schema(conn: AsyncConnection[tuple[object, ...]]) -> SchemaDescription:
    """Describe the tables of the `public` schema (the migrator's own schema is left out)."""
    desc = SchemaDescription()
    for table, column, type_, not_null, default, identity in await (
        await conn.execute(_COLUMNS)
    ).fetchall():
        desc.columns.setdefault(str(table), {})[str(column)] = (
            str(type_),
            bool(not_null),
            None if default is None else str(default),
            str(identity),
        )
    for table, name, definition in await (await conn.execute(_CONSTRAINTS)).fetchall():
        desc.constraints.setdefault(str(table), {})[str(name)] = str(definition)
    for table, name, definition in await (await conn.execute(_INDEXES)).fetchall():
        desc.indexes.setdefault(str(table), {})[str(name)] = str(definition)
    return desc
