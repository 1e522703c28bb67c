-- A time entry may now be logged against a track too: exactly one of session, project, track.
ALTER TABLE time_entries ADD COLUMN IF NOT EXISTS track_id bigint;

-- lint: allow constraint-without-not-valid because track_id was just added: NULL in every row
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                   WHERE conrelid = 'time_entries'::regclass
                     AND conname = 'time_entries_track_id_tracks_id_fk') THEN
        ALTER TABLE time_entries ADD CONSTRAINT time_entries_track_id_tracks_id_fk
            FOREIGN KEY (track_id) REFERENCES tracks (id) ON DELETE RESTRICT;
    END IF;
END $$;

-- The two-parent rule gives way to the three-parent one, as one step.
-- lint: allow ban-drop-constraint because the three-parent rule below replaces it
ALTER TABLE time_entries DROP CONSTRAINT IF EXISTS time_entries_one_parent_check;
-- lint: allow constraint-without-not-valid because it replaces a checked rule in one step
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                   WHERE conrelid = 'time_entries'::regclass
                     AND conname = 'time_entries_exactly_one_parent_check') THEN
        ALTER TABLE time_entries ADD CONSTRAINT time_entries_exactly_one_parent_check
            CHECK (num_nonnulls(session_id, project_id, track_id) = 1);
    END IF;
END $$;

-- lint: allow index-without-concurrently because the fleet's time_entries were small then
CREATE INDEX IF NOT EXISTS time_entries_track_id_idx ON time_entries (track_id);
