-- name: metrics_rollup_runs()^
-- The last successful rollup run (finish time in epoch seconds, duration) and failed runs in the
-- last day, from rollup_runs: the same figures whichever process ran the rollup.
SELECT extract(epoch FROM s.finished_at)::float8 AS finished,
       s.duration_ms / 1000.0 AS duration_s,
       (SELECT count(*) FROM rollup_runs
        WHERE status = 'failed' AND started_at > now() - interval '1 day') AS failed_last_day
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT finished_at, duration_ms FROM rollup_runs
    WHERE status = 'succeeded' ORDER BY finished_at DESC NULLS LAST LIMIT 1
) AS s ON true;

-- name: metrics_rollup_freshness(floor)^
-- How far the published numbers are behind the stored facts: the dirty days the rollup will roll
-- (those older than the retention floor, which it leaves alone, excluded) and the age of the
-- oldest change they hold (0 when none).
SELECT count(*)::int AS dirty_days,
       coalesce(extract(epoch FROM now() - min(changed_since)), 0)::float8 AS oldest_change_age_s
FROM rollup_dirty_days
WHERE :floor::date IS NULL OR day >= :floor::date;

-- name: metrics_oldest_todo_jobs()
-- Per queue, how long its oldest job has been due and waiting (deferred, or scheduled for a
-- time now past): the backlog, whatever the number of jobs.
SELECT j.queue_name,
       extract(epoch FROM now() - min(greatest(e.at, coalesce(j.scheduled_at, e.at))))::float8
           AS age_s
FROM procrastinate_jobs j
JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'deferred'
WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
GROUP BY j.queue_name;

-- name: metrics_stripe_inbox()^
-- The webhook inbox: events stored but not applied, the oldest one's age, and how many of
-- them failed their last attempt (partial index stripe_events_unprocessed_idx).
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(received_at)), 0)::float8 AS oldest_age_s,
       count(*) FILTER (WHERE outcome = 'failed') AS failing
FROM stripe_events
WHERE processed_at IS NULL;
