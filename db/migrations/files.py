"""Reading migration files: names, versions, header directives, checksums, pre-flight checks.

Header directives are `-- migrate: ...` comment lines before any SQL:
    -- migrate: no-transaction                       run statement by statement, in autocommit
    -- migrate: lock_timeout=2s statement_timeout=10min

Each file is parsed once, by PostgreSQL's own parser (db/migrations/sql_parse.py), when it is
loaded: a file that does not parse, that controls transactions itself, or whose statement
cannot run in the file's transaction is a problem before anything runs anywhere.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from db.migrations.placeholders import Placeholder, Values, render, stand_in
from db.migrations.sql_parse import (
    SqlSyntaxError,
    Statement,
    enum_values_used_too_early,
    loose_form,
    must_run_outside_transaction,
    parse_statements,
    transaction_control,
    transaction_control_in_do_block,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "LINT_LINE",
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
LINT_LINE = re.compile(r"^[ \t]*--[ \t]*lint:.*(\n|$)", re.MULTILINE)


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str
    filename: str
    sql: str
    checksum: str  # of the text as written (before placeholders): the same for every tenant
    checksum_loose: str  # equal loose checksums: the files differ only in comments/spacing
    transactional: bool
    lock_timeout: str | None
    statement_timeout: str | None
    # The checksum without `-- lint:` lines (db/migrations/lint.py): an applied file whose
    # only edit is a lint annotation is not edited, and draws no drift warning.
    checksum_unannotated: str = ""
    # Parsed once when loaded, and reused for every database of a fleet run.
    statements: tuple[Statement, ...] = field(default=(), repr=False, compare=False)
    placeholders: tuple[Placeholder, ...] = field(default=(), repr=False, compare=False)

    @cached_property
    def statement_checksums(self) -> list[str]:
        """Each statement's checksum: what a resumed no-transaction file must still match."""
        return [checksum(s.text) for s in self.statements]

    @property
    def uses_placeholders(self) -> bool:
        return bool(self.placeholders)

    def sql_of(
        self,
        statement: Statement,
        values: Values | None,
        conn: AsyncConnection[tuple[object, ...]],
    ) -> str:
        """The statement as it runs on this database: placeholders quoted for its tenant."""
        if not self.placeholders or values is None:
            return statement.text
        inside = [
            p
            for p in self.placeholders
            if statement.offset <= p.start < statement.offset + len(statement.text)
        ]
        return render(statement.text, statement.offset, inside, values, conn)


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
        where = f"{file.filename}:{statement.line}"
        outside_only = must_run_outside_transaction(statement.node)
        if transaction_control(statement.node):
            problems.append(f"{where}: transaction control in a migration file; the runner "
                            "owns the transaction (use `-- migrate: no-transaction`)")  # fmt: skip
        elif file.transactional and outside_only:
            problems.append(f"{where}: {outside_only} cannot run inside a transaction; put it"
                            " in a file with `-- migrate: no-transaction`")  # fmt: skip
        elif file.transactional and transaction_control_in_do_block(statement.node):
            problems.append(f"{where}: a DO block that commits or rolls back would end the"
                            " file's transaction; put it in a file with"
                            " `-- migrate: no-transaction`")  # fmt: skip
    if file.transactional:
        for statement, value, added in enum_values_used_too_early(list(file.statements)):
            problems.append(
                f"{file.filename}:{statement.line}: uses enum value '{value}', added on line"
                f" {added} in the same transaction, which PostgreSQL refuses (55P04); add the"
                " value in an earlier file, or in a file with `-- migrate: no-transaction`"
            )
    return problems


def _parse(filename: str, text: str) -> tuple[list[Statement], list[Placeholder], list[str]]:
    try:
        parsed, placeholders, problems = stand_in(text)
        if problems:
            return [], [], [f"{filename}: {p}" for p in problems]
        return parse_statements(parsed), placeholders, []
    except SqlSyntaxError as exc:
        return [], [], [f"{filename}:{exc.line}: {exc.message}"]


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
        # A file that does not parse stays in the list (so it does not read as "gone"): its
        # problem refuses every run before any change.
        statements, placeholders, unparsed = _parse(path.name, text)
        problems += unparsed
        loose = text if unparsed else loose_form(text)
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
            checksum_loose=checksum(loose),
            checksum_unannotated=checksum(LINT_LINE.sub("", text)),
            transactional="no-transaction" not in directives,
            lock_timeout=directives.get("lock_timeout"),
            statement_timeout=directives.get("statement_timeout"),
            statements=tuple(statements),
            placeholders=tuple(placeholders),
        )
        problems += _preflight(file)
        by_version[version] = file
    return [by_version[v] for v in sorted(by_version)], problems
