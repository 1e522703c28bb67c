"""The migration runner: plain SQL files, applied once each, in order, with a history table."""

from __future__ import annotations

from db.migrations.files import MigrationFile, load_migrations, migrations_dir
from db.migrations.runner import DatabaseReport, MigrationError, Status, run_database

__all__ = [
    "DatabaseReport",
    "MigrationError",
    "MigrationFile",
    "Status",
    "load_migrations",
    "migrations_dir",
    "run_database",
]
