"""Reading migration files: names, versions, header directives, checksums, pre-flight checks.

Header directives are `-- migrate: ...` comment lines before any SQL:
    -- migrate: no-transaction                       run statement by statement, in autocommit
    -- migrate: lock_timeout=2s statement_timeout=10min
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import Literal

from db.migrations.sql_split import Statement, loose_form, split_statements

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
SETTINGS = {"lock_timeout", "statement_timeout"}
TIMEOUT_VALUE = re.compile(r"^\d+(ms|s|min|h)?$")
# Statements PostgreSQL refuses inside a transaction block.
OUTSIDE_TRANSACTION_ONLY = re.compile(
    r"^(CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY|DROP\s+INDEX\s+CONCURRENTLY"
    r"|REINDEX\b.*\bCONCURRENTLY|ALTER\s+TABLE\b.*\bDETACH\s+PARTITION\b.*\bCONCURRENTLY"
    r"|VACUUM|ALTER\s+SYSTEM|CREATE\s+DATABASE|DROP\s+DATABASE|CREATE\s+TABLESPACE)\b",
    re.IGNORECASE | re.DOTALL,
)
TRANSACTION_CONTROL = re.compile(
    r"^(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION|END|SAVEPOINT|RELEASE)\b\s*;?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str
    filename: str
    sql: str
    checksum: str
    checksum_loose: str  # equal loose checksums: the files differ only in comments/spacing
    transactional: bool
    lock_timeout: str | None
    statement_timeout: str | None

    @cached_property
    def statements(self) -> list[Statement]:
        """Split once per file and reused for every database of a fleet run."""
        return split_statements(self.sql)

    @cached_property
    def statement_checksums(self) -> list[str]:
        """Each statement's checksum: what a resumed no-transaction file must still match."""
        return [checksum(s.text) for s in self.statements]


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


def _directives(text: str) -> dict[str, str]:
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
            key, sep, value = item.partition("=")
            if key == "no-transaction" and not sep:
                found[key] = "yes"
            elif key in SETTINGS and TIMEOUT_VALUE.match(value):
                found[key] = value
            else:
                raise ValueError(f"unknown or malformed directive '-- migrate: {item}'")
    return found


def _preflight(file: MigrationFile) -> list[str]:
    """Problems found by reading the file alone, before anything runs anywhere."""
    problems = []
    for statement in file.statements:
        text = statement.text.strip()
        where = f"{file.filename}:{statement.line}"
        if TRANSACTION_CONTROL.match(text):
            problems.append(f"{where}: transaction control in a migration file; the runner "
                            "owns the transaction (use `-- migrate: no-transaction`)")  # fmt: skip
        elif file.transactional and OUTSIDE_TRANSACTION_ONLY.match(text):
            problems.append(f"{where}: cannot run inside a transaction; put it in a file with "
                            "`-- migrate: no-transaction`")  # fmt: skip
    return problems


def load_migrations(directory: Path) -> tuple[list[MigrationFile], list[str]]:
    """All migration files of a folder in version order, and the problems that refuse them.

    Problems (a badly named file, two files with one version, a bad directive, a statement
    that cannot run in the file's transaction) are returned rather than raised, so the caller
    can report every one before changing anything.
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
            directives = _directives(text)
        except (UnicodeDecodeError, ValueError) as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        version = int(match.group("version"))
        if version in by_version:
            problems.append(
                f"{path.name}: duplicate version {version} (also {by_version[version].filename})"
            )
            continue
        file = MigrationFile(
            version=version,
            name=match.group("name"),
            filename=path.name,
            sql=text,
            checksum=checksum(text),
            checksum_loose=checksum(loose_form(text)),
            transactional="no-transaction" not in directives,
            lock_timeout=directives.get("lock_timeout"),
            statement_timeout=directives.get("statement_timeout"),
        )
        problems += _preflight(file)
        by_version[version] = file
    return [by_version[v] for v in sorted(by_version)], problems
