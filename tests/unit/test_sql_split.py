"""The migration files' SQL splitter: where a statement ends, as PostgreSQL's lexer sees it."""

from __future__ import annotations

import pytest

from db.migrations.sql_split import Statement, loose_form, split_statements


@pytest.mark.parametrize(
    ("sql", "texts"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1;", "SELECT 2;"]),
        ("SELECT 1", ["SELECT 1"]),  # the last statement needs no semicolon
        ("SELECT 'a;b';", ["SELECT 'a;b';"]),
        ("SELECT 'it''s; here';", ["SELECT 'it''s; here';"]),  # a doubled quote
        ("SELECT E'a\\';b';", ["SELECT E'a\\';b';"]),  # a backslash escape in E''
        ("SELECT 'a\\'; SELECT 2;", ["SELECT 'a\\';", "SELECT 2;"]),  # no escape in ''
        ('SELECT 1 AS "a;b";', ['SELECT 1 AS "a;b";']),
        ("DO $$ BEGIN PERFORM 1; END $$;", ["DO $$ BEGIN PERFORM 1; END $$;"]),
        ("CREATE FUNCTION f() RETURNS int AS $fn$ SELECT 1; $fn$ LANGUAGE sql;",
         ["CREATE FUNCTION f() RETURNS int AS $fn$ SELECT 1; $fn$ LANGUAGE sql;"]),
        ("SELECT $a$ $$; $a$;", ["SELECT $a$ $$; $a$;"]),  # another tag inside a body
        ("SELECT $1; SELECT 2;", ["SELECT $1;", "SELECT 2;"]),  # a parameter, not a quote
        ("SELECT a$b$c FROM t; SELECT 2;", ["SELECT a$b$c FROM t;", "SELECT 2;"]),
        ("-- a comment; still one\nSELECT 1;", ["SELECT 1;"]),
        ("SELECT 1 /* a; /* nested; */ still */ ;", ["SELECT 1 /* a; /* nested; */ still */ ;"]),
        ("SELECT 1;;\n  ;\n-- only a comment\n", ["SELECT 1;"]),  # blank chunks are dropped
        ("", []),
        ("  \n-- nothing but comments\n/* here */\n", []),
    ],
)  # fmt: skip
def test_a_statement_ends_at_a_semicolon_outside_literals_and_comments(
    sql: str, texts: list[str]
) -> None:
    assert [s.text for s in split_statements(sql)] == texts


def test_each_statement_keeps_the_line_it_starts_on() -> None:
    sql = (
        "-- header\nCREATE TABLE a (id int);\n\n/* why */\nCREATE TABLE b (\n  id int\n); SELECT 1;"
    )
    assert split_statements(sql) == [
        Statement("CREATE TABLE a (id int);", 2),
        Statement("CREATE TABLE b (\n  id int\n);", 5),
        Statement("SELECT 1;", 7),
    ]


def test_an_unterminated_literal_runs_to_the_end() -> None:
    assert [s.text for s in split_statements("SELECT 'a; SELECT 2;")] == ["SELECT 'a; SELECT 2;"]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("SELECT  1;\n", "select 1;", False),  # case is not white space
        ("SELECT  1; -- why\n", "SELECT 1;", True),
        ("SELECT /* x */ 1;", "SELECT 1;", True),
        ("SELECT 'a  b';", "SELECT 'a b';", False),  # literals are kept verbatim
        ("CREATE TABLE t (\r\n  id int\r\n);", "CREATE TABLE t ( id int );", True),
    ],
)
def test_the_loose_form_ignores_only_comments_and_white_space(a: str, b: str, same: bool) -> None:
    assert (loose_form(a) == loose_form(b)) is same
