"""Migration files as PostgreSQL's parser reads them: where statements end, what each one is,
and what the runner refuses before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.migrations.files import load_migrations
from db.migrations.sql_parse import (
    SqlSyntaxError,
    Statement,
    loose_form,
    must_run_outside_transaction,
    parse_statements,
    transaction_control,
)


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
        # an SQL-standard body: its semicolons are the function's, not the file's
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;"
         " SELECT 3;",
         ["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;",
          "SELECT 3;"]),
        ("SELECT $a$ $$; $a$;", ["SELECT $a$ $$; $a$;"]),  # another tag inside a body
        ("SELECT a$b$c FROM t; SELECT 2;", ["SELECT a$b$c FROM t;", "SELECT 2;"]),
        ("-- a comment; still one\nSELECT 1;", ["SELECT 1;"]),
        ("SELECT 1 /* a; /* nested; */ still */ ;", ["SELECT 1 /* a; /* nested; */ still */ ;"]),
        ("SELECT 1;;\n  ;\n-- only a comment\n", ["SELECT 1;"]),  # empty statements are none
        ("", []),
        ("  \n-- nothing but comments\n/* here */\n", []),
    ],
)  # fmt: skip
def test_a_statement_ends_where_postgresql_ends_it(sql: str, texts: list[str]) -> None:
    assert [s.text for s in parse_statements(sql)] == texts


def test_each_statement_keeps_the_line_it_starts_on() -> None:
    sql = (
        "-- header\nCREATE TABLE a (id int);\n\n/* why */\nCREATE TABLE b (\n  id int\n); SELECT 1;"
    )
    assert parse_statements(sql) == [
        Statement("CREATE TABLE a (id int);", 2, sql.index("CREATE TABLE a")),
        Statement("CREATE TABLE b (\n  id int\n);", 5, sql.index("CREATE TABLE b")),
        Statement("SELECT 1;", 7, sql.index("SELECT 1")),
    ]


def test_offsets_count_characters_not_bytes() -> None:
    sql = "-- café\nCREATE TABLE é (id int);\nSELECT 'ü';"
    found = [(s.text, s.line, sql[s.offset :].startswith(s.text)) for s in parse_statements(sql)]
    assert found == [("CREATE TABLE é (id int);", 2, True), ("SELECT 'ü';", 3, True)]


@pytest.mark.parametrize(
    ("sql", "line"),
    [
        ("SELECT 'a; SELECT 2;", 1),  # an unterminated literal
        ("SELECT 1;\n\nCREATE TABLE (id int);\n", 3),
    ],
)
def test_sql_that_does_not_parse_names_its_line(sql: str, line: int) -> None:
    with pytest.raises(SqlSyntaxError) as raised:
        parse_statements(sql)
    assert raised.value.line == line


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN", "BEGIN WORK", "BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "START TRANSACTION", "COMMIT", "COMMIT WORK", "COMMIT AND CHAIN", "END",
        "END TRANSACTION", "ROLLBACK", "ABORT", "ROLLBACK AND NO CHAIN", "SAVEPOINT x",
        "RELEASE SAVEPOINT x", "RELEASE x", "ROLLBACK TO x", "ROLLBACK TO SAVEPOINT x",
        "PREPARE TRANSACTION 'x'", "COMMIT PREPARED 'x'", "ROLLBACK PREPARED 'x'",
    ],
)  # fmt: skip
def test_transaction_control_is_found_in_every_spelling(sql: str) -> None:
    [statement] = parse_statements(sql)
    assert transaction_control(statement.node)


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("CREATE INDEX CONCURRENTLY i ON t (a)", "CREATE INDEX CONCURRENTLY"),
        ("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)", "CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY i", "DROP INDEX CONCURRENTLY"),
        ("REINDEX TABLE CONCURRENTLY t", "REINDEX ... CONCURRENTLY"),
        ("REINDEX (CONCURRENTLY) INDEX i", "REINDEX ... CONCURRENTLY"),
        ("REINDEX SCHEMA s", "REINDEX SCHEMA"),
        ("REINDEX DATABASE", "REINDEX DATABASE"),
        ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY",
         "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY"),
        ("VACUUM", "VACUUM"),
        ("VACUUM (ANALYZE) t", "VACUUM"),
        ("CLUSTER", "CLUSTER (every table)"),
        ("DISCARD ALL", "DISCARD ALL"),
        ("ALTER SYSTEM SET work_mem = '8MB'", "ALTER SYSTEM"),
        ("CREATE DATABASE d", "CREATE DATABASE"),
        ("ALTER DATABASE d SET TABLESPACE x", "ALTER DATABASE ... SET TABLESPACE"),
        ("CREATE TABLESPACE x LOCATION '/x'", "CREATE TABLESPACE"),
        # what may run in a transaction
        ("CREATE INDEX i ON t (a)", None),
        ("DROP INDEX i", None),
        ("REINDEX TABLE t", None),
        ("ANALYZE t", None),
        ("CLUSTER t USING i", None),
        ("DISCARD PLANS", None),
        ("ALTER DATABASE d SET work_mem = '8MB'", None),
        ("ALTER TABLE p DETACH PARTITION c", None),
        ("ALTER TYPE mood ADD VALUE 'happy'", None),  # since PostgreSQL 12 (if not used)
    ],
)  # fmt: skip
def test_what_cannot_run_in_a_transaction_is_read_from_the_statement(
    sql: str, name: str | None
) -> None:
    [statement] = parse_statements(sql)
    assert must_run_outside_transaction(statement.node) == name


def _problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "0001_one.sql").write_text(text)
    return load_migrations(tmp_path)[1]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("CREATE TABLE a (id int);\nCOMMIT AND CHAIN;\nCREATE TABLE b (id int);\n",
         "0001_one.sql:2: transaction control in a migration file"),
        ("-- migrate: no-transaction\nSELECT 1;\nEND TRANSACTION;\n",
         "0001_one.sql:3: transaction control in a migration file"),
        ("CREATE TABLE a (id int);\nSAVEPOINT x;\nROLLBACK TO x;\n",
         "0001_one.sql:2: transaction control in a migration file"),
        ("CREATE TABLE t (a int);\nCREATE INDEX CONCURRENTLY i ON t (a);\n",
         "0001_one.sql:2: CREATE INDEX CONCURRENTLY cannot run inside a transaction"),
        ("VACUUM ANALYZE;\n", "0001_one.sql:1: VACUUM cannot run inside a transaction"),
        ("DO $$\nBEGIN\n  CREATE TABLE a (id int);\n  COMMIT;\nEND\n$$;\n",
         "0001_one.sql:1: a DO block that commits or rolls back would end the file's transaction"),
        ("CREATE TYPE mood AS ENUM ('sad');\nALTER TYPE mood ADD VALUE 'happy';\n"
         "CREATE TABLE t (m mood DEFAULT 'happy');\n",
         "0001_one.sql:3: uses enum value 'happy', added on line 2 in the same transaction"),
        ("ALTER TYPE mood ADD VALUE 'happy';\n"
         "CREATE FUNCTION f() RETURNS mood LANGUAGE sql BEGIN ATOMIC SELECT 'happy'::mood; END;\n",
         "0001_one.sql:2: uses enum value 'happy'"),
        ("ALTER TYPE mood ADD VALUE 'happy';\nDO $$ BEGIN PERFORM 'happy'::mood; END $$;\n",
         "0001_one.sql:2: uses enum value 'happy'"),
        ("SELECT 1;\nCREATE TABLE (id int);\n", "0001_one.sql:2: syntax error at or near \"(\""),
    ],
)  # fmt: skip
def test_a_file_is_refused_before_anything_runs(tmp_path: Path, text: str, problem: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "text",
    [
        # the same statements in a file that runs outside a transaction
        "-- migrate: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);\nVACUUM t;\n",
        "-- migrate: no-transaction\nALTER TYPE mood ADD VALUE 'happy';\n"
        "UPDATE t SET m = 'happy';\n",
        "-- migrate: no-transaction\nDO $$ BEGIN COMMIT; END $$;\n",
        # a value added, and another one used; a DO block that does not end the transaction
        "ALTER TYPE mood ADD VALUE 'happy';\nUPDATE t SET m = 'sad';\n",
        "DO $$ BEGIN RAISE NOTICE 'commit; rollback;'; END $$;\n",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n",
    ],
)
def test_a_file_postgresql_would_run_is_accepted(tmp_path: Path, text: str) -> None:
    assert _problems(tmp_path, text) == []


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("SELECT  1;\n", "select 1;", False),  # case is not white space
        ("SELECT  1; -- why\n", "SELECT 1;", True),
        ("SELECT /* x */ 1;", "SELECT 1;", True),
        ("SELECT 'a  b';", "SELECT 'a b';", False),  # literals are kept verbatim
        ("CREATE TABLE t (\r\n  id int\r\n);", "CREATE TABLE t ( id int );", True),
        ("SELECT a,b;", "SELECT a, b;", False),  # as before: adjacent tokens stay adjacent
    ],
)
def test_the_loose_form_ignores_only_comments_and_white_space(a: str, b: str, same: bool) -> None:
    assert (loose_form(a) == loose_form(b)) is same


def test_the_loose_form_is_the_one_recorded_before_the_parser() -> None:
    """Histories hold loose checksums made by the hand-written lexer this replaced: the same
    text must give the same form, or a cosmetic edit would read as drift."""
    assert loose_form("CREATE TABLE t (\n  id int, -- the key\n  n text /* ; */\n);\n") == (
        "CREATE TABLE t ( id int, n text );"
    )
