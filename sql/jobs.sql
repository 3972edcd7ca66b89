-- name: jobs_queue_depth()
-- Jobs per queue and status, for `ingest jobs` and /metrics.
SELECT queue_name, status::text AS status, count(*) AS jobs
FROM procrastinate_jobs
WHERE status IN ('todo', 'doing', 'failed')
GROUP BY queue_name, status
ORDER BY queue_name, status;

-- name: jobs_failed(limit_)
SELECT j.id, j.task_name, j.queue_name, j.attempts, j.args,
       (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id) AS failed_at
FROM procrastinate_jobs j
WHERE j.status = 'failed'
ORDER BY j.id DESC
LIMIT :limit_;

-- name: jobs_get(job_id)^
SELECT id, task_name, queue_name, status::text AS status, args, queueing_lock, lock, attempts
FROM procrastinate_jobs
WHERE id = :job_id;

-- name: jobs_waiting_with_lock(queueing_lock)$
-- The job waiting under a queueing lock, so a second request can answer with the same job.
SELECT id
FROM procrastinate_jobs
WHERE queueing_lock = :queueing_lock AND status = 'todo'
ORDER BY id
LIMIT 1;
