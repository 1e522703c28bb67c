"""The one naming convention for constraints and indexes, shared by master and tenant tables.

It reproduces the names written in migrations_sql/, so a constraint error can be mapped to an
API error by name and the schema test can compare names exactly.
"""

from __future__ import annotations

from sqlalchemy import MetaData

__all__ = ["new_metadata"]

NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "fk": "%(table_name)s_%(column_0_name)s_%(referred_table_name)s_%(referred_column_0_name)s_fk",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "ix": "%(table_name)s_%(column_0_name)s_idx",
}


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)
