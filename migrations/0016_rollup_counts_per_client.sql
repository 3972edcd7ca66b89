-- A day's rollup count groups the index's rows once per (rule, type, client) instead of passing
-- every row through a window first (docs/rollups.md, "How a day is counted").
--
-- The count is unchanged (migration 0011): per (rule, client IP hash), the 10-minute slots of UTC
-- time with a VIEW, at most `view_cap` of them; every other event (and a VIEW without an IP hash)
-- once. Migration 0015 read the day's rows from the index (rule_id, type, ip_hash, ts) in that
-- order and marked each view that opens a slot with `lag(slot)`, a window over each (rule, type,
-- client). That window was most of the statement's time: nearly every client of a rule is a
-- partition of one row (a client seldom views a rule twice in a day), and a window pays for each
-- partition: about 0.75 s of the 1.8 s a day of a million events took.
--
-- Now the rows of each (rule, type, client) are grouped as they stream out of the index, keeping
-- their number and their first and last instant. That decides the group's slots in nearly every
-- case: one view, or views whose first and last share a slot: one slot; two views in different
-- slots: two. Only a client with three views or more of a rule in a day, spread over more than
-- one slot, needs its views read again, a few index entries found by the same index. The groups
-- are then summed per (rule, type) and per rule as they come. The same numbers, in about half
-- the time.
--
-- The planner cannot know that a day has nearly one group per event (it guesses a tenth), so it
-- would hash them; the rollup turns hash aggregation off for this statement's transaction
-- (sql/rollup.sql, rollup_count_settings).

CREATE OR REPLACE FUNCTION rollup_rule_counts_of_day(day date, view_cap integer)
RETURNS TABLE (rule_id text, views integer, copies integer, saves integer, forks integer,
               votes integer)
LANGUAGE sql STABLE
AS $$
WITH per_client AS (
    SELECT e.rule_id, e.type, e.ip_hash, count(*) AS n, min(e.ts) AS first_ts,
           max(e.ts) AS last_ts
    FROM events e
    WHERE e.ts >= ($1)::timestamp AT TIME ZONE 'UTC'
      AND e.ts < ($1 + 1)::timestamp AT TIME ZONE 'UTC'
    GROUP BY e.rule_id, e.type, e.ip_hash
),
counted AS (
    -- A known client's views of a rule: its slots, capped; anything else as many as there are.
    SELECT c.rule_id, c.type,
           CASE WHEN c.type <> 'VIEW' OR c.ip_hash IS NULL THEN c.n
                WHEN c.n = 1
                  OR date_bin('10 minutes', c.first_ts, timestamptz '2000-01-01 00:00:00+00')
                     = date_bin('10 minutes', c.last_ts, timestamptz '2000-01-01 00:00:00+00')
                  THEN least(1, $2)
                WHEN c.n = 2 THEN least(2, $2)
                ELSE least($2, (
                    SELECT count(DISTINCT date_bin('10 minutes', v.ts,
                                                   timestamptz '2000-01-01 00:00:00+00'))
                    FROM events v
                    WHERE v.rule_id = c.rule_id AND v.type = 'VIEW' AND v.ip_hash = c.ip_hash
                      AND v.ts >= ($1)::timestamp AT TIME ZONE 'UTC'
                      AND v.ts < ($1 + 1)::timestamp AT TIME ZONE 'UTC'))
           END AS n
    FROM per_client c
),
per_type AS (
    SELECT t.rule_id, t.type, sum(t.n) AS n
    FROM counted t
    GROUP BY t.rule_id, t.type
)
SELECT p.rule_id,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'VIEW'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'COPY'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'SAVE'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'FORK'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'VOTE'), 0)::int
FROM per_type p
GROUP BY p.rule_id
$$;
