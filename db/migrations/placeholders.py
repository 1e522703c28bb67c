"""Per-tenant placeholders in tenant files: `${tenant_slug}`, `${tenant_id}`, `${tenant_database}`.

A placeholder is rendered for each tenant as a quoted SQL literal (`'acme'`, `42`), or as a
quoted identifier when written `${tenant_slug:ident}` (`"acme"`), by psycopg on the tenant's
own connection: no value, however it is spelled (`x"; DROP TABLE ...`), can end the literal or
identifier it stands for. So a placeholder stands alone where a literal or an identifier goes;
one inside a string, a quoted identifier or a dollar-quoted body (where no quoting could make
it safe) refuses the file, and one in a comment is left as it is.

Before parsing, each placeholder becomes a stand-in token of its kind, so that the file is
split, classified and checksummed per statement once for every tenant; the file's checksum is
of its text before any of this, the same for every tenant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import sql

from db.migrations.sql_parse import COMMENTS, Token, scan

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["NAMES", "Placeholder", "Values", "render", "stand_in"]

PLACEHOLDER = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<form>[A-Za-z]+))?\}")
# name -> type of its value
NAMES: dict[str, type] = {"tenant_slug": str, "tenant_id": int, "tenant_database": str}
STAND_IN = {str: "'studio-placeholder'", int: "0", "ident": '"studio-placeholder"'}

Values = Mapping[str, str | int]


@dataclass(frozen=True)
class Placeholder:
    name: str
    identifier: bool
    start: int  # where its stand-in is, in the text given to the parser
    end: int


def _containing(tokens: list[Token], start: int, end: int) -> Token | None:
    """A token the text [start, end) is part of without being made of it (a literal or comment
    around it, or a name it is glued to), if any."""
    for token in tokens:
        if token.start >= end:
            break
        overlaps = token.end > start
        within = start <= token.start and token.end <= end
        if overlaps and not within:
            return token
    return None


def stand_in(text: str) -> tuple[str, list[Placeholder], list[str]]:
    """(the text with each placeholder replaced by a stand-in, where they are, problems).

    Problems name the line: an unknown placeholder, or one inside a literal or body.
    """
    if "${" not in text:
        return text, [], []
    tokens = scan(text)
    out: list[str] = []
    found: list[Placeholder] = []
    problems: list[str] = []
    position = shift = 0
    for match in PLACEHOLDER.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        inside = _containing(tokens, match.start(), match.end())
        if inside is not None and inside.name in COMMENTS:
            continue  # a comment is not rendered
        name, form = match.group("name"), match.group("form")
        if name not in NAMES or form not in {None, "ident"}:
            known = ", ".join(f"${{{n}}}" for n in NAMES)
            problems.append(
                f"line {line}: unknown placeholder {match.group(0)} (known: {known},"
                " each also as ${name:ident} for an identifier)"
            )
            continue
        if inside is not None:
            problems.append(
                f"line {line}: {match.group(0)} is inside a string, a quoted name or a"
                " dollar-quoted body, where it cannot be quoted safely; a placeholder stands"
                " alone where a literal (or, as ${name:ident}, an identifier) goes"
            )
            continue
        replacement = STAND_IN["ident" if form else NAMES[name]]
        out.append(text[position : match.start()])
        start = match.start() + shift
        found.append(Placeholder(name, form == "ident", start, start + len(replacement)))
        out.append(replacement)
        shift += len(replacement) - (match.end() - match.start())
        position = match.end()
    out.append(text[position:])
    return "".join(out), found, problems


def render(
    text: str,
    offset: int,
    placeholders: list[Placeholder],
    values: Values,
    conn: AsyncConnection[tuple[object, ...]],
) -> str:
    """A statement's text (starting at `offset` of the parsed text) with each placeholder
    quoted for this tenant, as a literal or an identifier."""
    parts: list[str] = []
    position = 0
    for placeholder in placeholders:
        start, end = placeholder.start - offset, placeholder.end - offset
        if not 0 <= start < len(text):
            continue
        value = values[placeholder.name]
        quoted = (
            sql.Identifier(str(value)) if placeholder.identifier else sql.Literal(value)
        ).as_string(conn)
        parts += [text[position:start], quoted]
        position = end
    parts.append(text[position:])
    return "".join(parts)
