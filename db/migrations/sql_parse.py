"""Migration files as PostgreSQL itself reads them: libpg_query (PostgreSQL's own parser, through
pglast) splits a file into statements and tells what each one is.

A hand-written splitter and regexes missed spellings (`COMMIT WORK`, `END TRANSACTION`,
`ROLLBACK TO x`...) and split `BEGIN ATOMIC` bodies at their inner semicolons. The parse tree
has none of those blind spots: transaction control is a `TransactionStmt` however it is
written, and what PostgreSQL refuses inside a transaction block is read from the node (an
`IndexStmt` with `concurrent`, a `VacuumStmt` that vacuums...). Each statement keeps the line it
starts on, for file:line in every message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, enums
from pglast import parser as pg

__all__ = [
    "SqlSyntaxError",
    "Statement",
    "Token",
    "enum_values_used_too_early",
    "loose_form",
    "must_run_outside_transaction",
    "parse_statements",
    "scan",
    "transaction_control",
    "transaction_control_in_do_block",
]

SEMICOLON = "ASCII_59"
COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})


class SqlSyntaxError(ValueError):
    """PostgreSQL's parser refused the file; `line` is where it stopped."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Token:
    start: int  # offsets in characters, end exclusive
    end: int
    name: str  # the lexer's token name: SCONST, IDENT, ICONST, SQL_COMMENT, ASCII_59...


@dataclass(frozen=True)
class Statement:
    text: str  # from its first token to its semicolon (included, when it has one)
    line: int  # 1-based line of the file where it starts
    offset: int = 0  # where `text` starts in the file, in characters
    node: ast.Node | None = field(default=None, compare=False, repr=False)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def scan(text: str) -> list[Token]:
    """The lexer's tokens, comments included. Raises SqlSyntaxError (an unterminated literal)."""
    try:
        tokens = pg.scan(text)
    except pg.ParseError as exc:
        message, offset = exc.args
        raise SqlSyntaxError(_line_of(text, int(offset)), str(message)) from None
    return [Token(t.start, t.end + 1, t.name) for t in tokens]


def parse_statements(text: str, tokens: list[Token] | None = None) -> list[Statement]:
    """The file's statements in order, each with its parse tree. Raises SqlSyntaxError."""
    try:
        raw = pg.parse_sql(text)
    except pg.ParseError as exc:
        message, offset = exc.args
        raise SqlSyntaxError(_line_of(text, int(offset)), str(message)) from None
    tokens = scan(text) if tokens is None else tokens
    statements = []
    for entry in raw:
        start = entry.stmt_location or 0
        end = start + entry.stmt_len if entry.stmt_len else len(text)
        # The parser's length stops before trailing comments and the semicolon; the text
        # runs on to the semicolon, so that it reads as written (and as it was checksummed).
        after = next((t for t in tokens if t.start >= end and t.name not in COMMENTS), None)
        if after is not None and after.name == SEMICOLON:
            end = after.end
        statements.append(Statement(text[start:end], _line_of(text, start), start, entry.stmt))
    return statements


def loose_form(text: str) -> str:
    """The SQL without comments and with each run of white space as one space (literals
    verbatim): two files with the same loose form differ only cosmetically."""
    out: list[str] = []
    position = 0
    for token in scan(text):
        if token.name in COMMENTS:
            continue
        if token.start > position and out:
            out.append(" ")
        out.append(text[token.start : token.end])
        position = token.end
    return "".join(out)


def transaction_control(node: ast.Node | None) -> bool:
    """BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, PREPARE TRANSACTION... in any spelling."""
    return isinstance(node, ast.TransactionStmt)


def _has_option(options: tuple[ast.DefElem, ...] | None, name: str) -> bool:
    return any(isinstance(o, ast.DefElem) and o.defname == name for o in options or ())


def _outside_only_alter_table(node: ast.AlterTableStmt) -> str | None:
    for cmd in node.cmds or ():
        if (
            isinstance(cmd, ast.AlterTableCmd)
            and cmd.subtype == enums.AlterTableType.AT_DetachPartition
            and isinstance(cmd.def_, ast.PartitionCmd)
            and cmd.def_.concurrent
        ):
            return "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY"
    return None


def _outside_only_reindex(node: ast.ReindexStmt) -> str | None:
    if _has_option(node.params, "concurrently"):
        return "REINDEX ... CONCURRENTLY"
    many = {
        enums.ReindexObjectType.REINDEX_OBJECT_SCHEMA: "REINDEX SCHEMA",
        enums.ReindexObjectType.REINDEX_OBJECT_SYSTEM: "REINDEX SYSTEM",
        enums.ReindexObjectType.REINDEX_OBJECT_DATABASE: "REINDEX DATABASE",
    }
    return many.get(node.kind) if node.kind is not None else None


def _when(name: str, condition: Callable[[Any], object]) -> Callable[[Any], str | None]:
    return lambda node: name if condition(node) else None


# Per kind of statement: the name of what PostgreSQL refuses inside a transaction block.
_OUTSIDE_ONLY: dict[type[ast.Node], Callable[[Any], str | None]] = {
    ast.IndexStmt: _when("CREATE INDEX CONCURRENTLY", lambda n: n.concurrent),
    ast.DropStmt: _when("DROP INDEX CONCURRENTLY", lambda n: n.concurrent),
    ast.ReindexStmt: _outside_only_reindex,
    ast.AlterTableStmt: _outside_only_alter_table,
    ast.VacuumStmt: _when("VACUUM", lambda n: n.is_vacuumcmd),  # ANALYZE alone may run in one
    ast.ClusterStmt: _when("CLUSTER (every table)", lambda n: n.relation is None),
    ast.DiscardStmt: _when("DISCARD ALL", lambda n: n.target == enums.DiscardMode.DISCARD_ALL),
    ast.AlterDatabaseStmt: _when(
        "ALTER DATABASE ... SET TABLESPACE", lambda n: _has_option(n.options, "tablespace")
    ),
    ast.AlterSystemStmt: _when("ALTER SYSTEM", bool),
    ast.CreatedbStmt: _when("CREATE DATABASE", bool),
    ast.DropdbStmt: _when("DROP DATABASE", bool),
    ast.CreateTableSpaceStmt: _when("CREATE TABLESPACE", bool),
    ast.DropTableSpaceStmt: _when("DROP TABLESPACE", bool),
    ast.CreateSubscriptionStmt: _when("CREATE SUBSCRIPTION", bool),
    ast.DropSubscriptionStmt: _when("DROP SUBSCRIPTION", bool),
}


def must_run_outside_transaction(node: ast.Node | None) -> str | None:
    """The name of what PostgreSQL refuses inside a transaction block, or None."""
    check = _OUTSIDE_ONLY.get(type(node)) if node is not None else None
    return check(node) if check is not None else None


def _do_block(node: ast.DoStmt) -> tuple[str, str]:
    """(language, body) of a DO statement."""
    language, body = "plpgsql", ""
    for option in node.args or ():
        if isinstance(option, ast.DefElem) and isinstance(option.arg, ast.String):
            if option.defname == "language":
                language = option.arg.sval or ""
            elif option.defname == "as":
                body = option.arg.sval or ""
    return language.lower(), body


def _plpgsql_statements(body: str) -> Iterator[str]:
    """The kinds of PL/pgSQL statements in a body (PLpgSQL_stmt_commit...), nested ones too;
    nothing when the body does not parse (PostgreSQL reports that when it runs it)."""
    tag = "studio_migrate_body"
    wrapped = f"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS ${tag}${body}${tag}$"
    if f"${tag}$" in body:
        return
    try:
        tree = json.loads(pg.parse_plpgsql_json(wrapped))
    except (pg.ParseError, ValueError):
        return

    def walk(value: object) -> Iterator[str]:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key.startswith("PLpgSQL_stmt_"):
                    yield key
                yield from walk(inner)
        elif isinstance(value, list):
            for inner in value:
                yield from walk(inner)

    yield from walk(tree)


def transaction_control_in_do_block(node: ast.Node | None) -> bool:
    """A PL/pgSQL DO block that COMMITs or ROLLBACKs: it would end the file's transaction
    (PostgreSQL refuses it inside one, 2D000)."""
    if not isinstance(node, ast.DoStmt):
        return False
    language, body = _do_block(node)
    if language != "plpgsql":
        return False
    ends = {"PLpgSQL_stmt_commit", "PLpgSQL_stmt_rollback"}
    return any(kind in ends for kind in _plpgsql_statements(body))


def _strings(node: object) -> Iterator[str]:
    """Every string literal of a parse tree, and the bodies of functions and DO blocks (the
    places where an enum value is used, not where a name is)."""
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        yield node.val.sval or ""
    elif isinstance(node, ast.DefElem) and node.defname == "as":
        body = node.arg if isinstance(node.arg, tuple) else (node.arg,)
        yield from (b.sval or "" for b in body if isinstance(b, ast.String))
    elif isinstance(node, ast.Node):
        for name in node:
            yield from _strings(getattr(node, name))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _strings(item)


def enum_values_used_too_early(statements: list[Statement]) -> list[tuple[Statement, str, int]]:
    """In one transaction, (statement, value, line of the ALTER TYPE) for each use of an enum
    value that an earlier statement of it added: PostgreSQL refuses to use a value added in the
    same transaction (55P04, "unsafe use of new value")."""
    added: dict[str, int] = {}
    found = []
    for statement in statements:
        node = statement.node
        if isinstance(node, ast.AlterEnumStmt) and node.newVal and not node.oldVal:
            added.setdefault(node.newVal, statement.line)
            continue
        if not added:
            continue
        texts = set(_strings(node))
        for value, line in added.items():
            quoted = "'" + value.replace("'", "''") + "'"
            if value in texts or any(quoted in text for text in texts):
                found.append((statement, value, line))
    return found
