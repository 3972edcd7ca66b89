-- name: metrics_last_rollup()^
-- Finish time (epoch seconds) of the last successful rollup run, from the audit trail.
SELECT extract(epoch FROM max(at))::float8 AS finished
FROM audit_log
WHERE action = 'rollup.run';
