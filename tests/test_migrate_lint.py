"""`studio migrate lint [DIR]`: squawk and our rules, file:line, exit codes, allowances."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli_migrate import json_lines, studio

ROOT = Path(__file__).resolve().parent.parent


def lint(folder: Path, *more: str) -> tuple[int, list[str], str]:
    result = studio("migrate", "lint", str(folder), *more)
    return result.returncode, result.stdout.splitlines(), result.stderr


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_the_built_in_files_pass_and_say_why_where_they_break_a_rule() -> None:
    code, lines, err = lint(ROOT / "migrations_sql")
    assert (code, lines) == (0, []), err
    assert f"0 finding(s) in {len(list((ROOT / 'migrations_sql').rglob('*.sql')))} file(s)" in err
    allowed = [
        line
        for path in sorted((ROOT / "migrations_sql").rglob("*.sql"))
        for line in path.read_text().splitlines()
        if line.startswith("-- lint: allow")
    ]
    assert len(allowed) == 11  # 0004, 0007, 0008, 0009 and 0011, each with its reason
    assert all(" because " in line for line in allowed)


def test_each_rule_names_the_file_and_line_and_exits_2(tmp_path: Path) -> None:
    write(tmp_path, "0001_create.sql", "CREATE TABLE t (id bigint PRIMARY KEY, a int);\n")
    write(tmp_path, "0002_change.sql", "\n".join([
        "-- on a table the file did not create: every rule",
        "CREATE INDEX t_a_idx ON t (a);",
        "ALTER TABLE t ADD COLUMN b int NOT NULL;",
        "ALTER TABLE t ADD CONSTRAINT t_a_check CHECK (a > 0);",
        "ALTER TABLE t ALTER COLUMN a TYPE bigint;",
        "ALTER TABLE t ADD CONSTRAINT t_a_key UNIQUE (a);",
        "ALTER TABLE t ADD CONSTRAINT t_a_pos CHECK (a >= 0) NOT VALID;",
        "ALTER TABLE t VALIDATE CONSTRAINT t_a_pos;",
        "UPDATE t SET a = 0 WHERE a IS NULL;",
        "DO $$ BEGIN",
        "  ALTER TABLE t ADD CONSTRAINT t_fk FOREIGN KEY (a) REFERENCES t (id);",
        "END $$;",
        "ALTER TABLE t ALTER COLUMN a SET NOT NULL;",
        "",
    ]))  # fmt: skip

    code, lines, _ = lint(tmp_path)

    assert code == 2
    found = {(line.split(": ")[0].rsplit(":", 1)[1], line.split(": ")[1]) for line in lines}
    assert found == {
        ("2", "index-without-concurrently"),
        ("3", "not-null-without-default"),
        ("4", "constraint-without-not-valid"),
        ("5", "rewrite-or-lock"),
        ("6", "index-without-concurrently"),
        ("8", "validate-in-same-transaction"),
        ("9", "backfill-in-transaction"),
        ("11", "constraint-without-not-valid"),  # inside the DO block, on its own line
        ("13", "rewrite-or-lock"),  # SET NOT NULL with no validated IS NOT NULL check
    }
    assert all(line.startswith(f"{tmp_path}/0002_change.sql:") for line in lines)


def test_a_table_created_in_the_same_file_is_not_an_existing_one(tmp_path: Path) -> None:
    write(tmp_path, "0001_create.sql", "\n".join([
        "CREATE TABLE t (id bigint PRIMARY KEY, a int);",
        "CREATE INDEX t_a_idx ON t (a);",
        "ALTER TABLE t ADD COLUMN b int NOT NULL;",
        "ALTER TABLE t ADD CONSTRAINT t_a_check CHECK (a > 0);",
        "",
    ]))  # fmt: skip
    code, lines, err = lint(tmp_path)
    assert (code, lines) == (0, []), err


def test_well_written_new_files_pass(tmp_path: Path) -> None:
    write(tmp_path, "0001_create.sql", "CREATE TABLE t (id bigint PRIMARY KEY, a int);\n")
    write(tmp_path, "0002_add.sql", "\n".join([
        "ALTER TABLE t ADD COLUMN IF NOT EXISTS note text;",
        "ALTER TABLE t ADD COLUMN IF NOT EXISTS n bigint NOT NULL DEFAULT 0;",
        "ALTER TABLE t ADD COLUMN IF NOT EXISTS at timestamptz NOT NULL DEFAULT now();",
        "ALTER TABLE t ADD CONSTRAINT t_a_check CHECK (a > 0) NOT VALID;",
        "",
    ]))  # fmt: skip
    write(tmp_path, "0003_validate.sql", "ALTER TABLE t VALIDATE CONSTRAINT t_a_check;\n")
    write(tmp_path, "0004_index.sql", "-- migrate: no-transaction\n"
          "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_a_idx ON t (a);\n")  # fmt: skip
    # NOT NULL the safe way: a CHECK added NOT VALID, validated later, then SET NOT NULL
    write(tmp_path, "0005_check.sql",
          "ALTER TABLE t ADD CONSTRAINT t_a_nn CHECK (a IS NOT NULL) NOT VALID;\n")  # fmt: skip
    write(tmp_path, "0006_validate.sql", "ALTER TABLE t VALIDATE CONSTRAINT t_a_nn;\n")
    # (squawk's ban-drop-constraint asks why a guarantee goes: here, it stays, as NOT NULL)
    write(tmp_path, "0007_not_null.sql", "ALTER TABLE t ALTER COLUMN a SET NOT NULL;\n"
          "-- lint: allow ban-drop-constraint because NOT NULL above holds the same rule\n"
          "ALTER TABLE t DROP CONSTRAINT t_a_nn;\n")  # fmt: skip
    code, lines, err = lint(tmp_path)
    assert (code, lines) == (0, []), err


def test_allowances_need_a_reason_cover_one_statement_or_the_file_and_must_be_used(
    tmp_path: Path,
) -> None:
    write(tmp_path, "0001_create.sql", "CREATE TABLE t (id bigint PRIMARY KEY, a int);\n")
    write(tmp_path, "0002_statement.sql", "\n".join([
        "-- lint: allow index-without-concurrently because t holds ten rows on every tenant",
        "CREATE INDEX t_a_idx ON t (a);",
        "CREATE INDEX t_id_a_idx ON t (id, a);",
        "",
    ]))  # fmt: skip
    write(tmp_path, "0003_file.sql", "\n".join([
        "SELECT 1;",
        "-- lint: allow-file index-without-concurrently because t holds ten rows everywhere",
        "CREATE INDEX t_b_idx ON t (a, id);",
        "CREATE INDEX t_c_idx ON t (id);",
        "",
    ]))  # fmt: skip
    write(tmp_path, "0004_bad.sql", "\n".join([
        "SELECT 1;",
        "-- lint: allow index-without-concurrently",
        "SELECT 2;",
        "-- lint: allow rewrite-or-lock because nothing here rewrites",
        "SELECT 3;",
        "",
    ]))  # fmt: skip

    code, lines, _ = lint(tmp_path, "--json")

    assert code == 2
    found = [
        (Path(str(f["file"])).name, f["line"], f["rule"]) for f in json_lines("\n".join(lines))
    ]
    assert found == [
        ("0002_statement.sql", 3, "index-without-concurrently"),  # the second one: not covered
        ("0004_bad.sql", 2, "bad-allow"),
        ("0004_bad.sql", 4, "unused-allow"),
    ]


def test_squawk_runs_too_with_its_rule_names_and_our_lines(tmp_path: Path) -> None:
    write(tmp_path, "0001_create.sql", "CREATE TABLE t (id bigint PRIMARY KEY, a int);\n")
    write(tmp_path, "0002_drop.sql", "-- a column nobody reads\n\nALTER TABLE t DROP COLUMN a;\n")
    code, lines, _ = lint(tmp_path)
    assert code == 2
    [line] = lines
    assert line.startswith(f"{tmp_path}/0002_drop.sql:3: ban-drop-column: squawk: ")

    (tmp_path / "0002_drop.sql").write_text(
        "-- lint: allow ban-drop-column because no release reads it since 2.0\n"
        "ALTER TABLE t DROP COLUMN a;\n"
    )
    assert lint(tmp_path)[:2] == (0, [])


def test_what_the_runner_refuses_is_a_finding_too(tmp_path: Path) -> None:
    write(tmp_path, "0001_bad.sql", "SELECT 1;\nCREATE INDEX CONCURRENTLY i ON t (a);\n")
    write(tmp_path, "2_badly_named.sql", "SELECT 1;\n")
    code, lines, _ = lint(tmp_path)
    assert code == 2
    assert any(x.startswith(f"{tmp_path}/0001_bad.sql:2: refused: CREATE INDEX CONCURRENTLY")
               for x in lines), lines  # fmt: skip
    assert any(x.startswith(f"{tmp_path}/2_badly_named.sql:1: refused: not named")
               for x in lines), lines  # fmt: skip


def test_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    code, lines, err = lint(tmp_path / "nope")
    assert (code, lines) == (1, [])
    assert "not a folder" in err


def test_a_lint_annotation_added_to_an_applied_file_is_not_an_edit(
    fresh_db: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "0001_t.sql", "CREATE TABLE t (a int);\nCREATE INDEX i ON t (a);\n")
    assert studio("migrate", "up", "--database-url", fresh_db,
                  "--migrations-dir", str(tmp_path)).returncode == 0  # fmt: skip
    path.write_text("CREATE TABLE t (a int);\n"
                    "-- lint: allow index-without-concurrently because t is new\n"
                    "CREATE INDEX i ON t (a);\n")  # fmt: skip
    status = studio("migrate", "status", "--database-url", fresh_db,
                    "--migrations-dir", str(tmp_path), "--json")  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    [report, _summary] = json_lines(status.stdout)
    assert report["warnings"] == []

    path.write_text("CREATE TABLE t (a int);\n-- any other comment\nCREATE INDEX i ON t (a);\n")
    status = studio("migrate", "status", "--database-url", fresh_db,
                    "--migrations-dir", str(tmp_path), "--json")  # fmt: skip
    [report, _summary] = json_lines(status.stdout)
    assert "in comments or white space only" in json.dumps(report["warnings"])
