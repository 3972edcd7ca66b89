-- Transaction-local session settings (never session-wide: pooled connections are shared).

-- name: session_set_lock_timeout(ms)$
-- For the rest of the transaction: give up on a lock after `ms` (the attempt fails and is
-- retried later) instead of parking a worker or queueing readers behind it.
SELECT set_config('lock_timeout', :ms::integer || 'ms', true);
