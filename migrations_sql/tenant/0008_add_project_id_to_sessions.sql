-- A session may belong to a project (an album's recording sessions) or stand alone (an hourly
-- booking). Existing sessions keep project_id NULL. Deleting a project keeps its sessions and
-- unlinks them (ON DELETE SET NULL).
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS project_id bigint;

-- lint: allow constraint-without-not-valid because project_id was just added: NULL everywhere
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                   WHERE conrelid = 'sessions'::regclass
                     AND conname = 'sessions_project_id_projects_id_fk') THEN
        ALTER TABLE sessions ADD CONSTRAINT sessions_project_id_projects_id_fk
            FOREIGN KEY (project_id) REFERENCES projects (id)
            ON DELETE SET NULL ON UPDATE NO ACTION;
    END IF;
END $$;

-- project_id leads, so the index serves the foreign key (SET NULL on delete) and
-- "all sessions of this album" in the API's (start_time, id) page order.
-- lint: allow index-without-concurrently because the fleet's sessions were small then
CREATE INDEX IF NOT EXISTS sessions_project_id_idx ON sessions (project_id, start_time, id);
