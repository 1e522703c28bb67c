"""Splitting a SQL file into statements, the way PostgreSQL's lexer sees them.

Semicolons inside string literals ('...', E'...'), quoted identifiers, dollar-quoted bodies
($$...$$, $fn$...$fn$) and comments (--, nested /* */) do not end a statement. Each statement
keeps the line it starts on, so an error inside it can be reported as file:line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Statement", "loose_form", "split_statements"]

DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True)
class Statement:
    text: str
    line: int  # 1-based line of the file where the statement starts


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    """Index just past the literal opening at sql[i]; a doubled quote is an escaped one."""
    i += 1
    while i < len(sql):
        ch = sql[i]
        if backslash and ch == "\\":
            i += 2
            continue
        if ch == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return i


def _skip_block_comment(sql: str, i: int) -> int:
    depth = 0
    while i < len(sql):
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def _skip_token(sql: str, i: int) -> int | None:
    """If a literal, identifier or comment starts at sql[i], the index just past it."""
    ch = sql[i]
    if ch == "'":
        escaped = i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
        return _skip_quoted(sql, i, "'", backslash=escaped)
    if ch == '"':
        return _skip_quoted(sql, i, '"', backslash=False)
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end == -1 else end
    if sql.startswith("/*", i):
        return _skip_block_comment(sql, i)
    if ch == "$" and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
        match = DOLLAR_TAG.match(sql, i)
        if match:
            end = sql.find(match.group(0), match.end())
            return len(sql) if end == -1 else end + len(match.group(0))
    return None


def _is_blank(text: str) -> bool:
    """Only white space and comments."""
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        if text.startswith("--", i) or text.startswith("/*", i):
            end = _skip_token(text, i)
            i = len(text) if end is None else end
            continue
        return False
    return True


def _first_significant(text: str) -> int:
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i) or text.startswith("/*", i):
            i = _skip_token(text, i) or len(text)
        else:
            return i
    return i


def split_statements(sql: str) -> list[Statement]:
    statements: list[Statement] = []
    start = i = 0
    while i <= len(sql):
        if i == len(sql) or sql[i] == ";":
            chunk = sql[start:i]
            if not _is_blank(chunk):
                offset = start + _first_significant(chunk)
                text = sql[offset : i + 1 if i < len(sql) else i]
                statements.append(Statement(text, sql.count("\n", 0, offset) + 1))
            start = i = i + 1
            continue
        end = _skip_token(sql, i)
        i = end if end is not None else i + 1
    return statements


def loose_form(sql: str) -> str:
    """The SQL without comments and with white space collapsed (literals kept verbatim):
    two files with the same loose form differ only cosmetically."""
    out: list[str] = []

    def space() -> None:
        if out and out[-1] != " ":
            out.append(" ")

    i = 0
    while i < len(sql):
        if sql[i].isspace():
            space()
            i += 1
            continue
        end = _skip_token(sql, i)
        if end is None:
            out.append(sql[i])
            i += 1
        elif sql.startswith(("--", "/*"), i):
            space()
            i = end
        else:
            out.append(sql[i:end])
            i = end
    return "".join(out).strip()
