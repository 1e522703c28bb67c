-- Booking rules a studio expects, enforced by the database for every write: a deposit is at
-- most the session's total, and a session lasts at most 31 days (a lockout, not a mistake
-- typed in years). The API states the same rules in the protos (studio.v1.Session); an update
-- of one field is checked here against the stored others, and the violation is reported at
-- the rule's field (server/error_mapping.py CHECKS).
--
-- Existing rows may break them. Each rule is added NOT VALID (it holds for every write from
-- now on), then validated when no row breaks it; otherwise it stays NOT VALID, the run
-- reports the sessions that break it per studio (a WARNING the migration runner lists), and
-- an update of such a session is refused until it fixes the field. Running this file again
-- validates a rule once its rows are fixed.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'sessions'::regclass
                     AND conname = 'sessions_deposit_check') THEN
        ALTER TABLE sessions ADD CONSTRAINT sessions_deposit_check
            CHECK (deposit_amount <= total_amount) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'sessions'::regclass
                     AND conname = 'sessions_duration_check') THEN
        ALTER TABLE sessions ADD CONSTRAINT sessions_duration_check
            CHECK (end_time - start_time <= interval '31 days') NOT VALID;
    END IF;
END $$;

DO $$
DECLARE
    rule record;
    breaking bigint[];
BEGIN
    FOR rule IN SELECT * FROM (VALUES
        ('sessions_deposit_check', 'deposit_amount > total_amount',
         'a deposit above their total'),
        ('sessions_duration_check', 'end_time - start_time > interval ''31 days''',
         'a length over 31 days')
    ) AS rules (name, broken, says) LOOP
        CONTINUE WHEN (SELECT convalidated FROM pg_constraint
                       WHERE conrelid = 'sessions'::regclass AND conname = rule.name);
        EXECUTE format('SELECT array_agg(id ORDER BY id) FROM sessions WHERE %s', rule.broken)
            INTO breaking;
        IF breaking IS NULL THEN
            EXECUTE format('ALTER TABLE sessions VALIDATE CONSTRAINT %I', rule.name);
        ELSE
            RAISE WARNING '% session(s) have %, which new writes may not: % is NOT VALID until they are fixed (sessions %)',
                cardinality(breaking), rule.says, rule.name,
                array_to_string(breaking[1:20], ', ')
                || CASE WHEN cardinality(breaking) > 20 THEN ', ...' ELSE '' END;
        END IF;
    END LOOP;
END $$;
