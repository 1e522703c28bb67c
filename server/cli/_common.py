"""What several sub-commands share: where the databases and the local data are."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["EXIT_CONFIG", "configured_database_url", "default_data_dir"]

EXIT_CONFIG = 1


def configured_database_url() -> str | None:
    """STUDIO_DATABASE_URL: the master database. Unset means the embedded default."""
    return os.environ.get("STUDIO_DATABASE_URL") or None


def default_data_dir() -> Path:
    """Project-local state (embedded PostgreSQL, demo key); STUDIO_DATA_DIR moves it."""
    return Path(os.environ.get("STUDIO_DATA_DIR") or ".studio").resolve()
