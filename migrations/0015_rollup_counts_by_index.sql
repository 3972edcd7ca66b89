-- A day's rollup count reads one index of the day's partition, in the order it groups, instead
-- of hashing the day's rows three times over (docs/rollups.md, "How a day is counted").
--
-- The count (migration 0011) is: per (rule, client IP hash), the 10-minute slots of UTC time with
-- a VIEW, at most `view_cap` of them; every other event (and a VIEW without an IP hash) once.
-- Three nested hash aggregates did it, each over nearly one group per event (a client seldom
-- views a rule twice in a day), with hash tables of some 200 MB a day: about 2 s per million
-- events alone, 3.4 s with the rollup's two lanes side by side (measured: docs/scaling.md).
--
-- Now every partition has the index (rule_id, type, ip_hash, ts). A day's events come out of it
-- in (rule, type, client, time) order, by an index-only scan once the day's pages are all
-- visible (autovacuum, and `vacuum_closed_event_days` for each day that ended); a view opens a
-- new slot when its slot differs from the previous view of the same client and rule (the rows
-- of a client and rule come in time order, so equal slots are adjacent); the sums stream in
-- that order, with a few kilobytes of memory. The same numbers, in about half the time.
--
-- The index takes the place of (rule_id, ts), which only the foreign key's ON DELETE CASCADE
-- read (a rule's events, by its leading column: the new index serves it the same way), so
-- intake still maintains three indexes per event. The build locks `events` against writes for
-- its duration (about 2 s per million events here); on a live database with a large history,
-- build each partition's index beforehand with CREATE INDEX CONCURRENTLY, and this migration
-- attaches them instead of building (docs/scaling.md, "Indexes").

SET LOCAL maintenance_work_mem = '256MB';

CREATE INDEX events_rule_type_client_ts_idx ON events (rule_id, type, ip_hash, ts);
DROP INDEX events_rule_id_ts_idx;

CREATE OR REPLACE FUNCTION rollup_rule_counts_of_day(day date, view_cap integer)
RETURNS TABLE (rule_id text, views integer, copies integer, saves integer, forks integer,
               votes integer)
LANGUAGE sql STABLE
AS $$
WITH ordered AS (
    SELECT e.rule_id, e.type, e.ip_hash, e.ts,
           date_bin('10 minutes', e.ts, timestamptz '2000-01-01 00:00:00+00') AS slot
    FROM events e
    WHERE e.ts >= ($1)::timestamp AT TIME ZONE 'UTC'
      AND e.ts < ($1 + 1)::timestamp AT TIME ZONE 'UTC'
),
marked AS (
    -- 1 where a known client's view opens a slot: the first of its views of the rule that day,
    -- or one in a later slot than the view before it.
    SELECT o.rule_id, o.type, o.ip_hash,
           CASE WHEN o.type = 'VIEW' AND o.ip_hash IS NOT NULL
                THEN (o.slot IS DISTINCT FROM lag(o.slot) OVER client)::int
           END AS opens_slot
    FROM ordered o
    WINDOW client AS (PARTITION BY o.rule_id, o.type, o.ip_hash ORDER BY o.ts)
),
per_client AS (
    -- A known client's views of a rule: its slots, capped; anything else as many as there are.
    SELECT m.rule_id, m.type,
           CASE WHEN m.type = 'VIEW' AND m.ip_hash IS NOT NULL
                THEN least(sum(m.opens_slot), $2)
                ELSE count(*)
           END AS n
    FROM marked m
    GROUP BY m.rule_id, m.type, m.ip_hash
)
SELECT p.rule_id,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'VIEW'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'COPY'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'SAVE'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'FORK'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'VOTE'), 0)::int
FROM per_client p
GROUP BY p.rule_id
$$;
