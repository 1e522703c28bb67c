-- A studio being moved to another PostgreSQL server (`studio tenants move`): one row while the
-- move runs and until its source database is dropped (`--drop-source`), so that a move
-- interrupted at any step is continued by running the command again. `step` is the last step
-- completed; source_* say where the studio lived before (server_url NULL: the master's
-- server), target_server_url where it goes (a libpq URL without a database name). The
-- database keeps its name. pause_ms: how long its writes were held, once it has switched.
CREATE TABLE IF NOT EXISTS tenant_moves (
    organization_id   bigint      NOT NULL,
    source_server_url text,
    source_database   varchar(63) NOT NULL,
    target_server_url text        NOT NULL,
    step              text        NOT NULL,
    last_error        text,
    pause_ms          integer,
    started_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_moves_pkey PRIMARY KEY (organization_id),
    CONSTRAINT tenant_moves_organization_id_organizations_id_fk FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT tenant_moves_step_check
        CHECK (step IN ('planned', 'checked', 'held', 'copied', 'verified', 'switched', 'done'))
);
