-- Views for the questions on-call engineers ask with psql (README, "Operating with psql").

CREATE VIEW audit_recent AS
SELECT id, at, actor, action, subject, request_id, details
FROM audit_log
WHERE at > now() - interval '24 hours'
ORDER BY at DESC, id DESC;

CREATE VIEW audit_by_actor_day AS
SELECT actor, (at AT TIME ZONE 'UTC')::date AS day, action, count(*) AS operations
FROM audit_log
GROUP BY actor, (at AT TIME ZONE 'UTC')::date, action;

-- Everything that went wrong: refused credentials or signatures, failed effects, failed jobs.
CREATE VIEW audit_failures AS
SELECT id, at, actor, action, subject, request_id, details
FROM audit_log
WHERE action ~ '\.(failed|rejected|refused|invalid|error)$'
   OR details ? 'error'
ORDER BY at DESC, id DESC;

CREATE VIEW stripe_inbox_pending AS
SELECT id, type, received_at, now() - received_at AS waiting, error
FROM stripe_events
WHERE processed_at IS NULL
ORDER BY received_at;

CREATE VIEW jobs_failed AS
SELECT j.id, j.task_name, j.queue_name, j.args, j.attempts,
       (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id) AS failed_at
FROM procrastinate_jobs j
WHERE j.status = 'failed'
ORDER BY j.id DESC;
