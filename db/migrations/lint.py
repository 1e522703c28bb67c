"""Migration files checked before they reach a fleet: our rules, read from PostgreSQL's own parse
tree (db/migrations/sql_parse.py), and squawk's (PyPI `squawk-cli`), as one list of findings
with file:line.

Our rules are about what a statement does to a table that already holds data: one the file did
not create itself (a table created earlier in the same file is new, empty and unseen, so
nothing it does to that table is flagged). Any tenant's table may be big, so every existing
table is taken for a big one.

    rewrite-or-lock             ALTER COLUMN ... TYPE, SET NOT NULL (unless an earlier file
                                validated a CHECK (column IS NOT NULL): then PostgreSQL skips
                                the scan), ADD COLUMN with a volatile
                                default, an identity or a stored generated column, SET
                                TABLESPACE / LOGGED / UNLOGGED, CLUSTER, LOCK TABLE in a mode
                                that blocks writes: each rewrites or scans the table under a
                                lock that blocks its readers or writers (and a transactional
                                file holds the lock until its end)
    backfill-in-transaction     UPDATE or DELETE of a table that the same transactional file
                                ALTERs: the ALTER's lock is held for the whole backfill
    index-without-concurrently  CREATE INDEX without CONCURRENTLY, or ADD UNIQUE / PRIMARY KEY
                                without USING INDEX: writes blocked while the index builds
    not-null-without-default    ADD COLUMN ... NOT NULL without a DEFAULT (or identity or
                                generated value): fails on every tenant that has a row
    constraint-without-not-valid  ADD a CHECK or FOREIGN KEY (or NOT NULL constraint) without
                                NOT VALID, or a column added with an inline REFERENCES / CHECK:
                                every row is checked under the lock
    validate-in-same-transaction  VALIDATE CONSTRAINT in the transactional file that added it
                                NOT VALID: the lock of the ADD is still held, nothing is won

Statements inside PL/pgSQL DO blocks are checked too (the file's own idiom for "add this
constraint when missing"); SQL built as a string for EXECUTE is not seen.

A finding is accepted, with its reason, by a comment the linter reads:

    -- lint: allow RULE[, RULE...] because REASON         the statement that follows
    -- lint: allow-file RULE[, RULE...] because REASON    anywhere in the file: all of it

on a line of its own (a reason may go on in ordinary comments). RULE is one of ours or a
squawk rule. An allowance without a reason, or one that allows nothing, is a finding itself
(`bad-allow`, `unused-allow`), so that allowances stay true as files change. The runner does
not count a `-- lint:` line as an edit of an applied file (files.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pglast import ast, enums
from pglast import parser as pg

from db.migrations.files import MigrationFile, load_migrations
from db.migrations.placeholders import stand_in
from db.migrations.sql_parse import COMMENTS, SqlSyntaxError, Statement, parse_statements, scan

__all__ = [
    "OUR_RULES",
    "SQUAWK_EXCLUDED",
    "Finding",
    "SquawkMissing",
    "lint_folder",
    "lint_paths",
]

OUR_RULES = {
    "rewrite-or-lock": "rewrites or scans an existing table under a lock",
    "backfill-in-transaction": "backfills a table the same transaction altered",
    "index-without-concurrently": "builds an index on an existing table without CONCURRENTLY",
    "not-null-without-default": "adds a NOT NULL column without a default",
    "constraint-without-not-valid": "adds a constraint that checks every row under the lock",
    "validate-in-same-transaction": "validates a constraint in the transaction that added it",
}

# squawk's rules we do not run, and why: each is either done by the runner for every file, or
# done by one of ours, which knows which tables the file created (squawk does not).
SQUAWK_EXCLUDED = {
    "require-lock-timeout": "the runner sets lock_timeout for every file (and retries)",
    "require-statement-timeout": "the runner's --statement-timeout and the file directive",
    "prefer-text-field": "varchar(n) is the API's length contract; a type change is ours",
    "prefer-bigint-over-int": "int columns hold small counts (capacity, bpm); ids are bigint",
    "require-concurrent-index-creation": "ours: index-without-concurrently",
    "disallowed-unique-constraint": "ours: index-without-concurrently",
    "constraint-missing-not-valid": "ours: constraint-without-not-valid",
    "adding-foreign-key-constraint": "ours: constraint-without-not-valid",
    "adding-not-nullable-field": "ours: rewrite-or-lock (SET NOT NULL)",
    "adding-required-field": "ours: not-null-without-default",
    "changing-column-type": "ours: rewrite-or-lock",
}

ALLOW = re.compile(r"^--\s*lint:\s*(?P<body>.*)$")
ALLOW_BODY = re.compile(
    r"^(?P<verb>allow|allow-file)\s+(?P<rules>[a-z0-9-]+(?:\s*,\s*[a-z0-9-]+)*)\s+because\s+(?P<reason>\S.*)$"
)
VOLATILE = frozenset(
    {"random", "gen_random_uuid", "uuid_generate_v4", "uuidv4", "uuidv7", "clock_timestamp",
     "timeofday", "nextval", "txid_current"}
)  # fmt: skip
BLOCKS_WRITES = 5  # LOCK TABLE modes from SHARE (5) to ACCESS EXCLUSIVE (8) block writers


class SquawkMissing(RuntimeError):
    """squawk is not installed (or did not run): the check is incomplete."""


@dataclass(frozen=True, order=True)
class Finding:
    path: Path
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"file": str(self.path), "line": self.line, "rule": self.rule,
                "message": self.message}  # fmt: skip


@dataclass
class _Allow:
    line: int
    rules: frozenset[str]
    statement: int | None  # index of the statement it covers; None: the whole file
    used: set[str] = field(default_factory=set)


def _name(relation: ast.RangeVar | None) -> str:
    return (relation.relname or "").lower() if relation is not None else ""


def _created(node: ast.Node | None) -> str | None:
    if isinstance(node, ast.CreateStmt):
        return _name(node.relation)
    if isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
        return _name(node.into.rel)
    return None


def _constraints(column: ast.ColumnDef) -> list[ast.Constraint]:
    return [c for c in column.constraints or () if isinstance(c, ast.Constraint)]


def _volatile(expr: object) -> bool:
    if isinstance(expr, ast.FuncCall):
        names = [n.sval for n in expr.funcname or () if isinstance(n, ast.String)]
        if names and (names[-1] or "").lower() in VOLATILE:
            return True
    if isinstance(expr, ast.Node):
        return any(_volatile(getattr(expr, name)) for name in expr)
    if isinstance(expr, tuple | list):
        return any(_volatile(item) for item in expr)
    return False


CT = enums.ConstrType


def _add_column(table: str, column: ast.ColumnDef) -> Iterator[tuple[str, str]]:
    constraints = _constraints(column)
    kinds = {c.contype for c in constraints}
    name = column.colname
    valued = kinds & {CT.CONSTR_DEFAULT, CT.CONSTR_IDENTITY, CT.CONSTR_GENERATED}
    if CT.CONSTR_NOTNULL in kinds and not valued:
        yield ("not-null-without-default",
               f"ADD COLUMN {name} NOT NULL without a DEFAULT fails on every tenant whose"
               f" {table} has a row; give it a DEFAULT, or add it NULL and backfill")  # fmt: skip
    for c in constraints:
        if c.contype == CT.CONSTR_DEFAULT and _volatile(c.raw_expr):
            yield ("rewrite-or-lock",
                   f"ADD COLUMN {name} with a volatile DEFAULT rewrites {table} under an ACCESS"
                   " EXCLUSIVE lock; add it without one and backfill in batches")  # fmt: skip
        elif c.contype in {CT.CONSTR_IDENTITY, CT.CONSTR_GENERATED}:
            yield ("rewrite-or-lock",
                   f"ADD COLUMN {name} as an identity or stored generated column rewrites"
                   f" {table} under an ACCESS EXCLUSIVE lock")  # fmt: skip
        elif c.contype in {CT.CONSTR_FOREIGN, CT.CONSTR_CHECK}:
            yield ("constraint-without-not-valid",
                   f"ADD COLUMN {name} with an inline {_kind(c)} checks every row of {table}"
                   " under the lock; add the column, then ADD CONSTRAINT ... NOT VALID and"
                   " VALIDATE it in a later file")  # fmt: skip
        elif c.contype in {CT.CONSTR_UNIQUE, CT.CONSTR_PRIMARY}:
            yield ("index-without-concurrently",
                   f"ADD COLUMN {name} {_kind(c)} builds an index on {table} with its writes"
                   " blocked")  # fmt: skip


def _kind(c: ast.Constraint) -> str:
    names: dict[enums.ConstrType | None, str]
    names = {CT.CONSTR_FOREIGN: "FOREIGN KEY", CT.CONSTR_CHECK: "CHECK",
            CT.CONSTR_UNIQUE: "UNIQUE", CT.CONSTR_PRIMARY: "PRIMARY KEY",
            CT.CONSTR_NOTNULL: "NOT NULL"}  # fmt: skip
    return names.get(c.contype, "constraint")


AT = enums.AlterTableType
REWRITES = {
    AT.AT_AlterColumnType: "ALTER COLUMN ... TYPE rewrites {t} (unless the new type is"
    " binary-coercible, e.g. varchar(n) to text: then allow it with that reason)",
    AT.AT_SetNotNull: "SET NOT NULL scans {t} under an ACCESS EXCLUSIVE lock; first ADD"
    " CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID and VALIDATE it in another file",
    AT.AT_SetTableSpace: "SET TABLESPACE copies {t} under an ACCESS EXCLUSIVE lock",
    AT.AT_SetLogged: "SET LOGGED rewrites {t}",
    AT.AT_SetUnLogged: "SET UNLOGGED rewrites {t}",
    AT.AT_AddIdentity: "ADD GENERATED ... AS IDENTITY locks {t}",
}


@dataclass
class _Known:
    """What earlier statements of the folder proved: (table, column) pairs with a validated
    CHECK (column IS NOT NULL), which lets SET NOT NULL skip its scan (PostgreSQL 12+)."""

    not_null: set[tuple[str, str]] = field(default_factory=set)
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)  # NOT VALID, by name

    def learn(self, node: ast.Node | None) -> None:
        if not isinstance(node, ast.AlterTableStmt):
            return
        table = _name(node.relation)
        for cmd in node.cmds or ():
            if not isinstance(cmd, ast.AlterTableCmd):
                continue
            c = cmd.def_
            if cmd.subtype == AT.AT_AddConstraint and isinstance(c, ast.Constraint):
                column = _is_not_null_check(c)
                if column is not None and c.skip_validation and c.conname:
                    self.pending[c.conname] = (table, column)
                elif column is not None:
                    self.not_null.add((table, column))
            elif cmd.subtype == AT.AT_ValidateConstraint and cmd.name in self.pending:
                self.not_null.add(self.pending.pop(cmd.name))


def _is_not_null_check(c: ast.Constraint) -> str | None:
    """The column of a `CHECK (column IS NOT NULL)`, else None."""
    test = c.raw_expr
    if c.contype != CT.CONSTR_CHECK or not isinstance(test, ast.NullTest):
        return None
    if test.nulltesttype != enums.NullTestType.IS_NOT_NULL:
        return None
    ref = test.arg
    if isinstance(ref, ast.ColumnRef) and ref.fields and isinstance(ref.fields[-1], ast.String):
        return (ref.fields[-1].sval or "").lower()
    return None


def _alter_table(node: ast.AlterTableStmt, known: _Known) -> Iterator[tuple[str, str]]:
    table = _name(node.relation)
    for cmd in node.cmds or ():
        if not isinstance(cmd, ast.AlterTableCmd):
            continue
        if cmd.subtype == AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            yield from _add_column(table, cmd.def_)
        elif (
            cmd.subtype == AT.AT_SetNotNull and (table, (cmd.name or "").lower()) in known.not_null
        ):
            continue  # a validated CHECK (column IS NOT NULL) spares the scan
        elif cmd.subtype in REWRITES:
            yield "rewrite-or-lock", REWRITES[cmd.subtype].format(t=table)
        elif cmd.subtype == AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            c = cmd.def_
            if c.contype in {CT.CONSTR_CHECK, CT.CONSTR_FOREIGN, CT.CONSTR_NOTNULL}:
                if not c.skip_validation:
                    yield ("constraint-without-not-valid",
                           f"ADD CONSTRAINT {c.conname or ''} {_kind(c)} checks every row of"
                           f" {table} under the lock; add it NOT VALID, and VALIDATE"
                           " CONSTRAINT in a later file")  # fmt: skip
            elif c.contype in {CT.CONSTR_UNIQUE, CT.CONSTR_PRIMARY} and not c.indexname:
                yield ("index-without-concurrently",
                       f"ADD CONSTRAINT {c.conname or ''} {_kind(c)} builds its index on"
                       f" {table} with writes blocked; CREATE UNIQUE INDEX CONCURRENTLY, then"
                       " ADD CONSTRAINT ... USING INDEX")  # fmt: skip


def _checks(node: ast.Node | None, created: set[str], known: _Known) -> Iterator[tuple[str, str]]:
    """(rule, message) for one statement; `created`: tables made earlier in the file."""
    if isinstance(node, ast.IndexStmt):
        table = _name(node.relation)
        if not node.concurrent and table not in created:
            yield ("index-without-concurrently",
                   f"CREATE INDEX on {table} blocks its writes while it builds; use CREATE"
                   " INDEX CONCURRENTLY IF NOT EXISTS in a `-- migrate: no-transaction`"
                   " file")  # fmt: skip
    elif isinstance(node, ast.AlterTableStmt) and node.objtype == enums.ObjectType.OBJECT_TABLE:
        if _name(node.relation) not in created:
            yield from _alter_table(node, known)
    elif isinstance(node, ast.LockStmt) and (node.mode or 8) >= BLOCKS_WRITES:
        tables = [_name(r) for r in node.relations or () if isinstance(r, ast.RangeVar)]
        if any(t not in created for t in tables):
            yield (
                "rewrite-or-lock",
                f"LOCK TABLE {', '.join(tables)} blocks writes until the file ends",
            )
    elif isinstance(node, ast.ClusterStmt) and _name(node.relation) not in created:
        yield (
            "rewrite-or-lock",
            f"CLUSTER rewrites {_name(node.relation)} under an ACCESS EXCLUSIVE lock",
        )


def _transaction_checks(
    statements: list[tuple[int, int, ast.Node | None]],
    created_at: dict[str, int],
) -> Iterator[tuple[int, int, str, str]]:
    """Rules over a whole transactional file: (statement index, line, rule, message)."""
    altered: dict[str, int] = {}
    not_valid: dict[str, int] = {}
    for index, line, node in statements:
        if isinstance(node, ast.AlterTableStmt):
            table = _name(node.relation)
            for cmd in node.cmds or ():
                if not isinstance(cmd, ast.AlterTableCmd):
                    continue
                if (
                    cmd.subtype == AT.AT_AddConstraint
                    and isinstance(cmd.def_, ast.Constraint)
                    and cmd.def_.skip_validation
                    and cmd.def_.conname
                ):
                    not_valid[cmd.def_.conname] = line
                elif cmd.subtype == AT.AT_ValidateConstraint and cmd.name in not_valid:
                    yield (index, line, "validate-in-same-transaction",
                           f"VALIDATE CONSTRAINT {cmd.name} runs in the transaction that added"
                           f" it NOT VALID (line {not_valid[cmd.name]}): the lock is held"
                           " while every row is checked; validate in a later file")  # fmt: skip
            if table not in created_at:
                altered.setdefault(table, line)
        elif isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
            table = _name(node.relation)
            if table in altered:
                verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
                yield (index, line, "backfill-in-transaction",
                       f"{verb} of {table} in the transaction that altered it (line"
                       f" {altered[table]}) holds that ACCESS EXCLUSIVE lock for the whole"
                       " backfill; backfill in a `-- migrate: no-transaction` file, in"
                       " batches")  # fmt: skip


def _do_statements(statement: Statement) -> Iterator[tuple[int, ast.Node]]:
    """(line in the file, parse tree) of each SQL statement inside a PL/pgSQL DO block."""
    node = statement.node
    if not isinstance(node, ast.DoStmt):
        return
    language, body = "plpgsql", ""
    for option in node.args or ():
        if isinstance(option, ast.DefElem) and isinstance(option.arg, ast.String):
            if option.defname == "language":
                language = (option.arg.sval or "").lower()
            elif option.defname == "as":
                body = option.arg.sval or ""
    tag = "studio_lint_body"
    if language != "plpgsql" or f"${tag}$" in body:
        return
    at = statement.text.find(body)
    first = statement.line + statement.text.count("\n", 0, max(at, 0))
    wrapped = f"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS ${tag}${body}${tag}$"
    try:
        tree = json.loads(pg.parse_plpgsql_json(wrapped))
    except (pg.ParseError, ValueError):
        return  # PostgreSQL reports it when the file runs
    for lineno, query in _execsql(tree):
        try:
            parsed = pg.parse_sql(query)
        except pg.ParseError:
            continue
        for raw in parsed:
            if raw.stmt is not None:
                yield first + lineno - 1, raw.stmt


def _execsql(value: Any) -> Iterator[tuple[int, str]]:  # noqa: ANN401 (JSON)
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "PLpgSQL_stmt_execsql" and isinstance(inner, dict):
                query = inner.get("sqlstmt", {}).get("PLpgSQL_expr", {}).get("query")
                if isinstance(query, str):
                    yield int(inner.get("lineno", 1)), query
            else:
                yield from _execsql(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _execsql(inner)


def _allowances(
    path: Path, text: str, statements: list[Statement]
) -> tuple[list[_Allow], list[Finding]]:
    allows, findings = [], []
    starts = [s.offset for s in statements]
    for token in scan(text):
        if token.name not in COMMENTS:
            continue
        match = ALLOW.match(text[token.start : token.end].strip())
        if not match:
            continue
        line = text.count("\n", 0, token.start) + 1
        body = ALLOW_BODY.match(match.group("body").strip())
        if body is None:
            usage = "write `-- lint: allow[-file] RULE[, RULE] because REASON`"
            findings.append(Finding(path, line, "bad-allow", usage))
            continue
        rules = frozenset(r.strip() for r in body.group("rules").split(","))
        after = next((i for i, start in enumerate(starts) if start > token.start), None)
        # None: the whole file; -1: no statement follows, it allows nothing
        whole = body.group("verb") == "allow-file"
        scope = None if whole else (-1 if after is None else after)
        allows.append(_Allow(line, rules, scope))
    return allows, findings


def _statement_at(statements: list[Statement], line: int) -> int | None:
    for index, s in enumerate(statements):
        if s.line <= line <= s.line + s.text.count("\n"):
            return index
    return None


def _squawk(path: Path, text: str, transactional: bool) -> list[tuple[int, str, str]]:
    """(line, rule, message) from squawk, for the file's text (placeholders stood in)."""
    exe = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    if exe is None:
        raise SquawkMissing("squawk is not installed (PyPI squawk-cli, a dependency of studio)")
    cmd = [exe, "--reporter", "json", "--stdin-filepath", path.name, "--pg-version", "18",
           f"--exclude={','.join(sorted(SQUAWK_EXCLUDED))}"]  # fmt: skip
    if transactional:
        cmd.append("--assume-in-transaction")
    done = subprocess.run(cmd, input=text, capture_output=True, text=True, check=False)
    if done.returncode not in {0, 1}:
        raise SquawkMissing(f"squawk failed on {path}: {done.stderr.strip()}")
    return [
        (int(v["line"]) + 1, str(v["rule_name"]), str(v["message"]))  # squawk counts from 0
        for v in json.loads(done.stdout or "[]")
    ]


def _lint_file(path: Path, file: MigrationFile, known: _Known) -> list[Finding]:
    text, _placeholders, _problems = stand_in(file.sql)
    try:
        statements = parse_statements(text)
    except SqlSyntaxError:
        return []  # load_migrations reported it
    raw: list[tuple[int | None, int, str, str]] = []  # (statement index, line, rule, message)
    created: dict[str, int] = {}
    flat: list[tuple[int, int, ast.Node | None]] = []
    for index, statement in enumerate(statements):
        inner = [(statement.line, statement.node), *_do_statements(statement)]
        for line, node in inner:
            for rule, message in _checks(node, set(created), known):
                raw.append((index, line, rule, message))
            known.learn(node)
            flat.append((index, line, node))
        made = _created(statement.node)
        if made:
            created.setdefault(made, index)
    if file.transactional:
        raw += list(_transaction_checks(flat, created))
    for line, rule, message in _squawk(path, text, file.transactional):
        raw.append((_statement_at(statements, line), line, rule, f"squawk: {message}"))
    allows, findings = _allowances(path, text, statements)
    for at, line, rule, message in raw:
        allow = next((a for a in allows if rule in a.rules and a.statement in {None, at}), None)
        if allow is None:
            findings.append(Finding(path, line, rule, message))
        else:
            allow.used.add(rule)
    for allow in allows:
        for rule in sorted(allow.rules - allow.used):
            findings.append(Finding(path, allow.line, "unused-allow",
                                    f"`allow {rule}` allows nothing here: remove it"))  # fmt: skip
    return findings


_PROBLEM = re.compile(r"^(?P<file>[^:\s]+)(?::(?P<line>\d+))?: (?P<message>.*)$", re.DOTALL)


def lint_folder(folder: Path) -> list[Finding]:
    """Every finding for the *.sql files of one folder (the runner's own refusals too)."""
    files, problems = load_migrations(folder)
    findings = []
    for problem in problems:
        match = _PROBLEM.match(problem)
        name, line, message = (
            (match.group("file"), int(match.group("line") or 1), match.group("message"))
            if match
            else ("", 1, problem)
        )
        findings.append(Finding(folder / name, line, "refused", message))
    known = _Known()  # carried from file to file, in version order
    for file in files:
        findings += _lint_file(folder / file.filename, file, known)
    return sorted(findings)


def lint_paths(root: Path) -> tuple[list[Path], list[Finding]]:
    """A folder of migration files, or one holding master/ and tenant/ folders: (the folders
    linted, their findings)."""
    folders = [root / kind for kind in ("master", "tenant") if (root / kind).is_dir()]
    folders = folders or [root]
    return folders, [f for folder in folders for f in lint_folder(folder)]
