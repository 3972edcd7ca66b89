-- One UTC day of events counted per rule and type: the rollup's one expensive statement and the
-- only one that reads `events` (docs/rollups.md), defined once for its two callers in
-- sql/rollup.sql: `rollup_stage_rule_day` inserts it into the stage on the primary in one
-- statement, and `rollup_day_rule_counts` selects it on a read replica (ROLLUP_DATABASE_URL, a
-- standby refuses every write) for the rows to be copied to the primary. A single-SELECT SQL
-- function, STABLE and not STRICT, is inlined by the planner into the calling statement: the plan
-- is the one the statement had when this SELECT was written inside it (the BRIN index on ts
-- finds the day's blocks; aggregation in memory).
--
-- VIEWs are first counted per client IP hash and capped at `view_cap` per (IP, rule, day); views
-- without an IP hash are not capped. A change to the counting is a new migration replacing this
-- function (CREATE OR REPLACE FUNCTION), which a streaming replica receives with the rest.
CREATE FUNCTION rollup_rule_counts_of_day(day date, view_cap integer)
RETURNS TABLE (rule_id text, views integer, copies integer, saves integer, forks integer,
               votes integer)
LANGUAGE sql STABLE
AS $$
WITH per_viewer AS (
    SELECT e.rule_id, e.type, CASE WHEN e.type = 'VIEW' THEN e.ip_hash END AS viewer,
           count(*) AS n
    FROM events e
    WHERE e.ts >= ($1)::timestamp AT TIME ZONE 'UTC'
      AND e.ts < ($1 + 1)::timestamp AT TIME ZONE 'UTC'
    GROUP BY 1, 2, 3
)
SELECT p.rule_id,
       coalesce(sum(CASE WHEN p.viewer IS NOT NULL THEN least(p.n, $2) ELSE p.n END)
                FILTER (WHERE p.type = 'VIEW'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'COPY'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'SAVE'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'FORK'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'VOTE'), 0)::int
FROM per_viewer p
GROUP BY p.rule_id
$$;
