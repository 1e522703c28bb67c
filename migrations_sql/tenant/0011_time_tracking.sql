-- What the API's tracks and time tracking need (TrackService, TaskTypeService,
-- TimeEntryService).
--
-- Track numbers are unique within a project. Task types and time entries get the idempotency
-- key the other resources have. A time entry's length and amount are derived by the database
-- from its times, never taken from a caller: duration_minutes (rounded to the nearest minute)
-- and billable_amount (those minutes at the rate snapshotted when the entry was made, rounded
-- to the cent; 0 for a non-billable task type, whose category is snapshotted too). At most
-- one timer runs per session, project or track (a partial unique index).
--
-- Existing rows may break the new rules; they are repaired, reported per studio (a WARNING the
-- migration runner lists), never refused: a duplicated track number stays with the first track
-- made (the others lose their number), and of several timers running for one context only the
-- last started keeps running, each earlier one ending when the next one started (marked
-- manually adjusted).
--
-- Tracks, task types and time entries had no procedure before this release: a studio holds the
-- few rows an import made, if any. Building indexes in the transaction and rewriting
-- time_entries for its generated columns lock those small tables for moments.
-- lint: allow-file backfill-in-transaction, index-without-concurrently, rewrite-or-lock, adding-field-with-default, require-concurrent-index-deletion because these tables had no API until this file: each studio's rows are few

ALTER TABLE task_types ADD COLUMN IF NOT EXISTS create_request_id uuid;
ALTER TABLE time_entries ADD COLUMN IF NOT EXISTS create_request_id uuid;

DO $$
DECLARE
    renumbered bigint[];
    stopped bigint[];
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'time_entries'::regclass
                     AND attname = 'billable' AND NOT attisdropped) THEN
        ALTER TABLE time_entries ADD COLUMN billable boolean NOT NULL DEFAULT true;
        -- the entries made before: billable as their task type is now
        UPDATE time_entries e SET billable = (t.category = 'billable')
        FROM task_types t WHERE t.id = e.task_type_id;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'task_types'::regclass
                     AND conname = 'task_types_create_request_id_key') THEN
        ALTER TABLE task_types ADD CONSTRAINT task_types_create_request_id_key
            UNIQUE (create_request_id);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'time_entries'::regclass
                     AND conname = 'time_entries_create_request_id_key') THEN
        ALTER TABLE time_entries ADD CONSTRAINT time_entries_create_request_id_key
            UNIQUE (create_request_id);
    END IF;

    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'tracks'::regclass
                     AND conname = 'tracks_project_id_track_number_key') THEN
        WITH repeated AS (
            SELECT id, row_number() OVER (PARTITION BY project_id, track_number
                                          ORDER BY created_at, id) AS nth
            FROM tracks WHERE track_number IS NOT NULL
        ), cleared AS (
            UPDATE tracks t SET track_number = NULL, version = version + 1, updated_at = now()
            FROM repeated r WHERE r.id = t.id AND r.nth > 1
            RETURNING t.id
        )
        SELECT array_agg(id ORDER BY id) INTO renumbered FROM cleared;
        IF renumbered IS NOT NULL THEN
            RAISE WARNING '% track(s) had the number of an earlier track of their project and now have none: tracks %',
                cardinality(renumbered), array_to_string(renumbered, ', ');
        END IF;
        ALTER TABLE tracks ADD CONSTRAINT tracks_project_id_track_number_key
            UNIQUE (project_id, track_number);
    END IF;

    IF to_regclass('time_entries_running_timer_idx') IS NULL THEN
        WITH running AS (
            SELECT id, lead(start_time) OVER (PARTITION BY session_id, project_id, track_id
                                              ORDER BY start_time, id) AS superseded_at
            FROM time_entries WHERE end_time IS NULL
        ), ended AS (
            UPDATE time_entries e
            SET end_time = r.superseded_at, manually_adjusted = true, version = version + 1,
                updated_at = now()
            FROM running r WHERE r.id = e.id AND r.superseded_at IS NOT NULL
            RETURNING e.id
        )
        SELECT array_agg(id ORDER BY id) INTO stopped FROM ended;
        IF stopped IS NOT NULL THEN
            RAISE WARNING '% timer(s) ran beside a later timer of the same context and now end when it started: time entries %',
                cardinality(stopped), array_to_string(stopped, ', ');
        END IF;
        CREATE UNIQUE INDEX time_entries_running_timer_idx
            ON time_entries (session_id, project_id, track_id) NULLS NOT DISTINCT
            WHERE end_time IS NULL;
    END IF;

    -- Derived columns replace the stored duration (a generated column cannot be altered into).
    IF (SELECT attgenerated FROM pg_attribute WHERE attrelid = 'time_entries'::regclass
          AND attname = 'duration_minutes') = '' THEN
        ALTER TABLE time_entries DROP COLUMN duration_minutes;
    END IF;
END $$;

ALTER TABLE time_entries ADD COLUMN IF NOT EXISTS duration_minutes integer
    GENERATED ALWAYS AS (round(extract(epoch FROM end_time - start_time) / 60)::integer) STORED;
ALTER TABLE time_entries ADD COLUMN IF NOT EXISTS billable_amount numeric(14,2)
    GENERATED ALWAYS AS (
        CASE WHEN end_time IS NULL THEN NULL
             WHEN billable THEN round(round(extract(epoch FROM end_time - start_time) / 60)
                                      * hourly_rate_snapshot / 60, 2)
             ELSE 0
        END
    ) STORED;

-- Entries are listed per context in time order, and totalled (ListTimeEntries,
-- GetProjectSummary, ListClientProjects) from the index alone: it holds what the totals read.
DROP INDEX IF EXISTS time_entries_session_id_idx;
DROP INDEX IF EXISTS time_entries_project_id_idx;
DROP INDEX IF EXISTS time_entries_track_id_idx;
CREATE INDEX time_entries_session_id_idx ON time_entries (session_id, start_time, id)
    INCLUDE (duration_minutes, billable_amount, end_time);
CREATE INDEX time_entries_project_id_idx ON time_entries (project_id, start_time, id)
    INCLUDE (duration_minutes, billable_amount, end_time);
CREATE INDEX time_entries_track_id_idx ON time_entries (track_id, start_time, id)
    INCLUDE (duration_minutes, billable_amount, end_time);
