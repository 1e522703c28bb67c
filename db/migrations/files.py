"""Reading migration files: names, versions, header directives and checksums."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Literal

__all__ = [
    "Kind",
    "MigrationFile",
    "checksum",
    "load_migrations",
    "migrations_dir",
    "normalize",
]

Kind = Literal["master", "tenant"]
FILENAME = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9_]+)\.sql$")
DIRECTIVE = re.compile(r"^--\s*migrate:\s*(?P<body>.*)$")


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str
    filename: str
    sql: str
    checksum: str
    lock_timeout: str | None


def migrations_dir(kind: Kind) -> Path:
    """The SQL files that ship with the package (migrations_sql/master or /tenant)."""
    return Path(str(files("migrations_sql"))) / kind


def normalize(raw: bytes) -> str:
    """Text whose checksum ignores a BOM and the line-ending convention, and nothing else."""
    text = raw.decode("utf-8")
    text = text.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def checksum(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _directives(filename: str, text: str) -> dict[str, str]:
    """`-- migrate: key=value ...` lines at the top of a file (before any SQL)."""
    found: dict[str, str] = {}
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        match = DIRECTIVE.match(stripped)
        if not match:
            continue
        for item in match.group("body").split():
            key, _, value = item.partition("=")
            if key not in {"lock_timeout"}:
                raise ValueError(f"{filename}: unknown directive '-- migrate: {item}'")
            found[key] = value
    return found


def load_migrations(directory: Path) -> tuple[list[MigrationFile], list[str]]:
    """All migration files of a folder in version order, and the problems that refuse them.

    Problems (a badly named file, two files with one version, a file that is not UTF-8) are
    returned rather than raised, so the caller can report every one before changing anything.
    """
    problems: list[str] = []
    by_version: dict[int, MigrationFile] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILENAME.match(path.name)
        if not match:
            problems.append(f"{path.name}: not named like 0008_add_project_id_to_sessions.sql")
            continue
        try:
            text = normalize(path.read_bytes())
            directives = _directives(path.name, text)
        except (UnicodeDecodeError, ValueError) as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        version = int(match.group("version"))
        if version in by_version:
            problems.append(
                f"{path.name}: duplicate version {version} (also {by_version[version].filename})"
            )
            continue
        by_version[version] = MigrationFile(
            version=version,
            name=match.group("name"),
            filename=path.name,
            sql=text,
            checksum=checksum(text),
            lock_timeout=directives.get("lock_timeout"),
        )
    return [by_version[v] for v in sorted(by_version)], problems
