"""What the schema copy leaves out: column options the target PostgreSQL would refuse."""

from __future__ import annotations

from db.database_copy import portable_schema

SCRIPT = """CREATE TABLE public.clients (
    id bigint NOT NULL
);
ALTER TABLE ONLY public.clients ALTER COLUMN id SET (pg_attver=885972736);
ALTER TABLE ONLY public.clients ALTER COLUMN id SET (n_distinct=100);
ALTER TABLE public.rooms ALTER COLUMN name SET (pg_attver=1, n_distinct_inherited=-1);
COMMENT ON TABLE public.clients IS 'ALTER TABLE ONLY x ALTER COLUMN y SET (pg_attver=1);';
"""


def test_unknown_column_options_are_left_out_and_the_rest_is_kept() -> None:
    assert portable_schema(SCRIPT) == SCRIPT.replace(
        "ALTER TABLE ONLY public.clients ALTER COLUMN id SET (pg_attver=885972736);\n", ""
    )
