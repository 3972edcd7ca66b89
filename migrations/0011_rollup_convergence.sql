-- Rollups that converge to the stored facts (docs/rollups.md, "Which days a run rolls").
--
-- 1. VIEWs are counted from the stored views alone, whatever order they arrived in: at most one
--    view per (client IP hash, rule, 10-minute slot of UTC time), then at most 5 per
--    (client IP hash, rule, UTC day). Intake stores every valid view (the forward-only window
--    state, view_dedupe, goes). Slots start at 00:00, 00:10, ... UTC, so none crosses midnight.
-- 2. Each rolled day records `facts_as_of`: every event received and every donation changed up
--    to that instant was visible to the run that rolled it. A day is dirty when a fact is newer;
--    the view rollup_dirty_days lists those days and why, and every run rolls them.

CREATE OR REPLACE FUNCTION rollup_rule_counts_of_day(day date, view_cap integer)
RETURNS TABLE (rule_id text, views integer, copies integer, saves integer, forks integer,
               votes integer)
LANGUAGE sql STABLE
AS $$
WITH per_slot AS (
    -- One group per (rule, type) for the other types and for views without an IP hash; one
    -- per (rule, client, 10-minute slot) for the views of a known client.
    SELECT e.rule_id, e.type, CASE WHEN e.type = 'VIEW' THEN e.ip_hash END AS viewer,
           CASE WHEN e.type = 'VIEW' AND e.ip_hash IS NOT NULL
                THEN date_bin('10 minutes', e.ts, timestamptz '2000-01-01 00:00:00+00') END
               AS slot,
           count(*) AS n
    FROM events e
    WHERE e.ts >= ($1)::timestamp AT TIME ZONE 'UTC'
      AND e.ts < ($1 + 1)::timestamp AT TIME ZONE 'UTC'
    GROUP BY 1, 2, 3, 4
),
per_viewer AS (
    -- A known client's views: its slots with a view, capped; the rest as they are.
    SELECT p.rule_id, p.type,
           CASE WHEN p.viewer IS NOT NULL THEN least(count(*), $2) ELSE sum(p.n) END AS n
    FROM per_slot p
    GROUP BY p.rule_id, p.type, p.viewer
)
SELECT p.rule_id,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'VIEW'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'COPY'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'SAVE'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'FORK'), 0)::int,
       coalesce(sum(p.n) FILTER (WHERE p.type = 'VOTE'), 0)::int
FROM per_viewer p
GROUP BY p.rule_id
$$;

DROP TABLE view_dedupe;
DROP FUNCTION view_dedupe_counted(timestamptz, timestamptz[]);

-- Which facts a day's numbers include. '-infinity' for days rolled before this migration: every
-- fact of theirs is newer, so each such day with facts is rolled once more, by the new counting.
ALTER TABLE rollup_days
    ADD COLUMN facts_as_of timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN reasons text[] NOT NULL DEFAULT '{}';
ALTER TABLE rollup_days ALTER COLUMN facts_as_of DROP DEFAULT;
ALTER TABLE rollup_runs ADD COLUMN day_reasons jsonb NOT NULL DEFAULT '{}';

-- "Which events of day D arrived after D was rolled?" in one index descent per day, on a table of
-- any size: the index is ordered by UTC day, then by arrival. Intake appends at the right edge
-- of today's part of it. Built here in the migration's transaction: writes to events wait for
-- the build (about a minute per 30 M events on the development machine).
CREATE INDEX events_day_received_at_idx ON events (((ts AT TIME ZONE 'UTC')::date), received_at);
-- The same question for donations (a refund or a dispute moves `updated_at`).
CREATE INDEX donations_day_updated_at_idx
    ON donations (((created_at AT TIME ZONE 'UTC')::date), updated_at);

-- Updates and deletions of facts, which leave no newer row behind: statement triggers note the
-- UTC days they touched (both the old and the new day of an update), with the time of the
-- writing transaction's start. A roll of the day removes the notes its numbers include.
CREATE TABLE rollup_fact_changes (
    day         date NOT NULL,
    source      text NOT NULL CHECK (source IN ('events', 'donations')),
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollup_fact_changes_day_idx ON rollup_fact_changes (day, changed_at);

CREATE FUNCTION rollup_note_fact_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'events' THEN
        INSERT INTO rollup_fact_changes (day, source)
        SELECT DISTINCT (o.ts AT TIME ZONE 'UTC')::date, 'events' FROM old_rows o;
        IF TG_OP = 'UPDATE' THEN
            INSERT INTO rollup_fact_changes (day, source)
            SELECT DISTINCT (n.ts AT TIME ZONE 'UTC')::date, 'events' FROM new_rows n;
        END IF;
    ELSE
        INSERT INTO rollup_fact_changes (day, source)
        SELECT DISTINCT (o.created_at AT TIME ZONE 'UTC')::date, 'donations' FROM old_rows o;
        IF TG_OP = 'UPDATE' THEN
            INSERT INTO rollup_fact_changes (day, source)
            SELECT DISTINCT (n.created_at AT TIME ZONE 'UTC')::date, 'donations' FROM new_rows n;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_rollup_deleted AFTER DELETE ON events
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION rollup_note_fact_changes();
CREATE TRIGGER events_rollup_updated AFTER UPDATE ON events
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION rollup_note_fact_changes();
CREATE TRIGGER donations_rollup_deleted AFTER DELETE ON donations
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION rollup_note_fact_changes();
CREATE TRIGGER donations_rollup_updated AFTER UPDATE ON donations
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION rollup_note_fact_changes();

-- Days whose numbers do not yet include every stored fact, and why: a day with facts (events,
-- donations) that was never rolled; events received, or donations created or changed, after the
-- day was rolled; events or donations of the day updated or deleted after it (the notes above).
-- `changed_since` is the oldest such change. Every rollup run rolls these days; /metrics and
-- `ingest rollup --status` show them. Days without any fact are rolled only when asked for (the
-- nightly run's days, an operator's).
CREATE VIEW rollup_dirty_days AS
WITH first_fact AS (
    SELECT least((SELECT min((e.ts AT TIME ZONE 'UTC')::date) FROM events e),
                 (SELECT min((d.created_at AT TIME ZONE 'UTC')::date) FROM donations d)) AS day
),
calendar AS (
    -- Up to tomorrow (UTC): intake accepts a few minutes of clock skew into the future.
    SELECT g.day::date AS day
    FROM first_fact f,
         generate_series(f.day, (now() AT TIME ZONE 'UTC')::date + 1, interval '1 day') AS g (day)
),
probed AS (
    -- One descent of events_day_received_at_idx and one of donations_day_updated_at_idx a day.
    SELECT c.day,
           (SELECT min(e.received_at) FROM events e
            WHERE (e.ts AT TIME ZONE 'UTC')::date = c.day
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
