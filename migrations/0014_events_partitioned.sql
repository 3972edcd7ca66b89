-- `events` partitioned by UTC day (docs/scaling.md, "Partitioned events"): the cost of intake and
-- of a day's rollup no longer depends on how much history the table holds, and retention drops
-- whole days instead of deleting rows (no vacuum debt).
--
-- 1. Idempotency keys move to their own table, `event_idempotency_keys` (a unique index on a
--    partitioned table must contain the partition key, so `events` can no longer hold a key
--    unique across days). Intake writes the key and the event in the same statement; the key's
--    unique index decides, race-proof, which copy is stored. Keys are kept 31 days after their
--    event's time (`purge_event_state`), the longest a copy can still be accepted.
-- 2. Every UTC day is a partition `events_YYYYMMDD`, FROM its midnight TO the next; a DEFAULT
--    partition `events_default` takes whatever no day partition covers, so no insert is ever
--    refused for a missing partition. `events_ensure_partitions` (the `ensure_event_partitions`
--    task, hourly) creates the days from 31 days back to 7 days ahead, moving any of their rows
--    out of the default partition; `events_drop_partitions_before` (the `purge_old_events` task)
--    drops whole days for EVENT_RETENTION_DAYS.
-- 3. Each partition has the indexes something reads, and no more (docs/scaling.md, "Indexes"):
--    the primary key, now (ts, id); (rule_id, ts); (received_at). Gone: the BRIN index on ts
--    (a day's rollup reads its whole partition), the UTC-day expression of
--    events_day_received_at_idx (a partition is one day), the partial unique index on
--    idempotency_key (item 1).
--
-- The conversion copies every row into the new table (same ids, same values), checks that the
-- counts agree, and drops the old table, all in this migration's transaction: `events` is locked
-- for writes and reads until it commits (measured: docs/scaling.md, "Converting a database").

SET LOCAL maintenance_work_mem = '256MB';

ALTER TABLE events RENAME TO events_unpartitioned;
DROP VIEW rollup_dirty_days;

CREATE TABLE events (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    type             text NOT NULL,
    rule_id          text COLLATE "C" NOT NULL,
    user_id          text COLLATE "C",
    ip_hash          text COLLATE "C",
    ts               timestamptz NOT NULL,
    idempotency_key  text COLLATE "C",
    received_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_type_check CHECK (type IN ('VIEW', 'COPY', 'SAVE', 'FORK', 'VOTE'))
) PARTITION BY RANGE (ts);

CREATE TABLE events_default PARTITION OF events DEFAULT;

-- The name of a day's partition.
CREATE FUNCTION events_partition_name(day date) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 'events_' || to_char($1, 'YYYYMMDD') $$;

-- One partition per UTC day that holds events, plus the days intake may write to (31 days back
-- for late events, 7 ahead). Days are found by one descent of the old table's day index each.
DO $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    d date;
BEGIN
    FOR d IN
        WITH RECURSIVE days (day) AS (
            SELECT min((ts AT TIME ZONE 'UTC')::date) FROM events_unpartitioned
            UNION ALL
            SELECT (SELECT min((e.ts AT TIME ZONE 'UTC')::date) FROM events_unpartitioned e
                    WHERE (e.ts AT TIME ZONE 'UTC')::date > days.day)
            FROM days WHERE days.day IS NOT NULL
        )
        SELECT day FROM days WHERE day IS NOT NULL
        UNION
        SELECT g::date FROM generate_series(today - 31, today + 7, interval '1 day') AS g
        ORDER BY 1
    LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       events_partition_name(d), d::timestamp AT TIME ZONE 'UTC',
                       (d + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END
$$;

-- Every row, before any index exists (indexes are built once, sorted, below).
INSERT INTO events (id, type, rule_id, user_id, ip_hash, ts, idempotency_key, received_at)
OVERRIDING SYSTEM VALUE
SELECT id, type, rule_id, user_id, ip_hash, ts, idempotency_key, received_at
FROM events_unpartitioned;

DO $$
DECLARE
    copied bigint := (SELECT count(*) FROM events);
    kept bigint := (SELECT count(*) FROM events_unpartitioned);
    last_id bigint := (SELECT max(id) FROM events_unpartitioned);
BEGIN
    IF copied <> kept THEN
        RAISE EXCEPTION 'events conversion: % rows copied of %', copied, kept;
    END IF;
    PERFORM setval(pg_get_serial_sequence('events', 'id'), coalesce(last_id, 1), last_id IS NOT NULL);
END
$$;

-- Idempotency keys, unique on their own. `ts` is the event's time: a key is kept until its event
-- is older than any event intake accepts (30 days, plus a day of margin for clocks).
CREATE TABLE event_idempotency_keys (
    key  text COLLATE "C" PRIMARY KEY,
    ts   timestamptz NOT NULL
);
-- The hourly purge's `ts < horizon`: keys arrive roughly in time order, so a BRIN index finds the
-- oldest blocks; inserts into the last, unsummarized block range cost it nothing.
CREATE INDEX event_idempotency_keys_ts_idx ON event_idempotency_keys USING brin (ts);
INSERT INTO event_idempotency_keys (key, ts)
SELECT idempotency_key, ts FROM events_unpartitioned
WHERE idempotency_key IS NOT NULL AND ts >= now() - interval '31 days'
ORDER BY idempotency_key
ON CONFLICT (key) DO NOTHING;

DROP TABLE events_unpartitioned;
DO $$
BEGIN
    EXECUTE format('ALTER SEQUENCE %s RENAME TO events_id_seq',
                   pg_get_serial_sequence('events', 'id'));
END
$$;

-- The indexes, built on every partition (and created on each new one as it is attached).
-- (ts, id): the key, unique per partition as PostgreSQL requires (it contains the partition key);
-- ts first, so that it also serves time ranges inside a day (new FORKs for notifications) and the
-- first stored day (the dirty-day view), with inserts at the right edge of today's partition.
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (ts, id);
-- Deleting a rule deletes its events (the foreign key's cascade), and per-rule reads.
CREATE INDEX events_rule_id_ts_idx ON events (rule_id, ts);
-- "Which events of day D arrived after D was rolled?": one descent in D's partition.
CREATE INDEX events_received_at_idx ON events (received_at);

ALTER TABLE events
    ADD CONSTRAINT events_rule_id_fkey FOREIGN KEY (rule_id) REFERENCES rules (id)
        ON DELETE CASCADE,
    ADD CONSTRAINT events_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id)
        ON DELETE SET NULL;

-- Statement triggers with transition tables, as migration 0011 made them: allowed on a
-- partitioned table (not on its partitions), they see the rows of every partition a statement
-- on `events` touches, rows moved from one day to another included.
CREATE TRIGGER events_rollup_deleted AFTER DELETE ON events
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION rollup_note_fact_changes();
CREATE TRIGGER events_rollup_updated AFTER UPDATE ON events
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION rollup_note_fact_changes();

ANALYZE events;

-- Creates the day partitions of `first_day` .. `last_day` that do not exist yet; returns how many.
-- Rows of such a day already in the default partition move into it. A new partition is created
-- as a table of its own and then attached, which locks `events` only in SHARE UPDATE EXCLUSIVE
-- mode (intake and readers go on; CREATE TABLE ... PARTITION OF would lock it exclusively), and
-- `rules` and `users` in SHARE ROW EXCLUSIVE mode while it adds the foreign keys (writes to them
-- wait, reads and intake's key checks do not); the default partition is locked for the move and
-- the attach (`lock_timeout` 5 s: the task fails and is retried rather than wait behind a long
-- reader).
CREATE FUNCTION events_ensure_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    d date;
    name text;
    lo timestamptz;
    hi timestamptz;
    made integer := 0;
BEGIN
    FOR d IN SELECT g::date FROM generate_series(first_day, last_day, interval '1 day') AS g LOOP
        name := events_partition_name(d);
        CONTINUE WHEN to_regclass(format('%I', name)) IS NOT NULL;
        IF made = 0 THEN
            PERFORM set_config('lock_timeout', '5s', true);
            PERFORM pg_advisory_xact_lock(hashtext('ingest.events.partitions'));
            CONTINUE WHEN to_regclass(format('%I', name)) IS NOT NULL;  -- made meanwhile
            LOCK TABLE events_default IN ACCESS EXCLUSIVE MODE;
        END IF;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       name);
        EXECUTE format(
            'WITH moved AS (DELETE FROM events_default WHERE ts >= $1 AND ts < $2 '
            'RETURNING id, type, rule_id, user_id, ip_hash, ts, idempotency_key, received_at) '
            'INSERT INTO %I (id, type, rule_id, user_id, ip_hash, ts, idempotency_key, '
            'received_at) SELECT * FROM moved', name) USING lo, hi;
        EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       name, lo, hi);
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;

-- Retention: drops every day partition whose whole day is before `before`, and deletes the
-- default partition's rows older than it. Returns the number of events removed. Dropping a
-- partition detaches it too, with `events` in ACCESS EXCLUSIVE mode for a moment (DETACH
-- CONCURRENTLY is refused beside a default partition); a separate DETACH and DROP would also
-- lock `rules` and `users` exclusively, to give the detached table's foreign keys triggers of
-- their own and then drop them. `lock_timeout` 2 s bounds how long intake can wait behind it;
-- the task is retried when a long reader held it off.
CREATE FUNCTION events_drop_partitions_before(before timestamptz) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    doomed text[];
    name text;
    removed bigint := 0;
    n bigint;
BEGIN
    SELECT coalesce(array_agg(c.relname ORDER BY c.relname), '{}') INTO doomed
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events'::regclass
      AND c.relname ~ '^events_[0-9]{8}$'
      AND (to_date(substr(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC'
          <= before;
    FOREACH name IN ARRAY doomed LOOP
        EXECUTE format('SELECT count(*) FROM %I', name) INTO n;
        removed := removed + n;
    END LOOP;
    PERFORM set_config('lock_timeout', '2s', true);
    FOREACH name IN ARRAY doomed LOOP
        EXECUTE format('DROP TABLE %I', name);
    END LOOP;
    DELETE FROM events_default WHERE ts < before;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN removed + n;
END
$$;

-- The dirty days of migration 0011, with each day's probe bounded by the day's time range so
-- that it reads the day's partition alone (pruned at run time), by its (received_at) index, and
-- the first stored day read from the primary keys' (ts, id) order.
CREATE VIEW rollup_dirty_days AS
WITH first_fact AS (
    SELECT least((SELECT (min(e.ts) AT TIME ZONE 'UTC')::date FROM events e),
                 (SELECT min((d.created_at AT TIME ZONE 'UTC')::date) FROM donations d)) AS day
),
calendar AS (
    -- Up to tomorrow (UTC): intake accepts a few minutes of clock skew into the future.
    SELECT g.day::date AS day
    FROM first_fact f,
         generate_series(f.day, (now() AT TIME ZONE 'UTC')::date + 1, interval '1 day') AS g (day)
),
probed AS (
    SELECT c.day,
           (SELECT min(e.received_at) FROM events e
            WHERE e.ts >= c.day::timestamp AT TIME ZONE 'UTC'
              AND e.ts < (c.day + 1)::timestamp AT TIME ZONE 'UTC'
              AND e.received_at > coalesce(r.facts_as_of, '-infinity')) AS events_since,
           (SELECT min(d.updated_at) FROM donations d
            WHERE (d.created_at AT TIME ZONE 'UTC')::date = c.day
              AND d.updated_at > coalesce(r.facts_as_of, '-infinity')) AS donations_since
    FROM calendar c
    LEFT JOIN rollup_days r ON r.day = c.day
),
rewritten AS (
    SELECT c.day, c.source, min(c.changed_at) AS since
    FROM rollup_fact_changes c
    JOIN rollup_days r ON r.day = c.day
    WHERE c.changed_at > r.facts_as_of
    GROUP BY 1, 2
),
changes AS (
    SELECT day, 'events' AS source, events_since AS since FROM probed
    WHERE events_since IS NOT NULL
    UNION ALL
    SELECT day, 'donations', donations_since FROM probed WHERE donations_since IS NOT NULL
    UNION ALL
    SELECT day, source, since FROM rewritten
)
SELECT c.day,
       CASE WHEN r.day IS NULL THEN ARRAY['never_rolled']
            ELSE array_agg(DISTINCT c.source ORDER BY c.source)
       END AS reasons,
       min(c.since) AS changed_since, r.rolled_at, r.facts_as_of
FROM changes c
LEFT JOIN rollup_days r ON r.day = c.day
GROUP BY c.day, r.day, r.rolled_at, r.facts_as_of;
