-- name: events_ip_hash_secret()$
-- The service-managed key of the client-IP HMAC (created by migration 0002).
SELECT secret FROM ip_hash_secret WHERE singleton;

-- name: events_ingest_batch(idx, types, rule_ids, user_ids, ip_hashes, tss, idempotency_keys, received_at, check_refs, actor, request_id, received, early_rejected, early_duplicates)^
-- The whole batch in one statement: rule and user checks, idempotency keys, insert and the
-- request's audit row. Arrays are parallel, one element per event that passed the checks done
-- in Python; `idx` is the event's position in the request; a NULL in `tss` is an event sent without `ts`,
-- which happened at `received_at` (NULLs are cheaper to send than times).
-- `check_refs` false skips the per-event rule and user probes: the foreign keys of `events`
-- check every inserted event anyway and refuse the whole statement if one names an unknown
-- rule or user; the caller then runs it again with `check_refs` true, which names them.
-- Every valid VIEW is stored: which views count (10-minute slots, 5 per client, rule and day)
-- is decided by the rollup from the stored views, whatever order they arrived in
-- (docs/rollups.md). Only an idempotency key already stored makes an event a duplicate here:
-- keys live in event_idempotency_keys (unique across the day partitions of `events`), written
-- in this same statement, so a key is stored exactly when its event is. Keys are written in
-- key order so that concurrent batches wait on each other's keys in one order.
WITH batch AS (
    SELECT b.idx, b.type, b.rule_id COLLATE "C" AS rule_id, b.user_id COLLATE "C" AS user_id,
           b.ip_hash COLLATE "C" AS ip_hash, coalesce(b.ts, :received_at::timestamptz) AS ts,
           b.idempotency_key COLLATE "C" AS idempotency_key
    FROM unnest(:idx::int[], :types::text[], :rule_ids::text[], :user_ids::text[],
                :ip_hashes::text[], :tss::timestamptz[], :idempotency_keys::text[])
         AS b(idx, type, rule_id, user_id, ip_hash, ts, idempotency_key)
),
checked AS MATERIALIZED (
    -- One index probe per event and check, only with `check_refs` (keys by the primary key of
    -- event_idempotency_keys, rules and users by theirs). Scalar subqueries, not joins or
    -- EXISTS: the planner cannot turn them into a hash of the whole table, which it prefers for
    -- small tables and stale statistics. `check_refs` comes first in its ANDs, so that when it
    -- is false the probes never run (a generic plan keeps it as a parameter). A repeated key is
    -- a duplicate whatever the event's other fields say, so it is decided first; without
    -- `check_refs` the key insert below decides it, with the same outcome.
    SELECT b.*,
           CASE
               WHEN :check_refs::bool AND b.idempotency_key IS NOT NULL
                    AND (SELECT true FROM event_idempotency_keys k
                         WHERE k.key = b.idempotency_key)
                   THEN 'duplicate'
               WHEN :check_refs::bool
                    AND (SELECT true FROM rules r WHERE r.id = b.rule_id) IS NULL
                   THEN 'unknown_rule'
               WHEN :check_refs::bool AND b.user_id IS NOT NULL
                    AND (SELECT true FROM users u WHERE u.id = b.user_id) IS NULL
                   THEN 'unknown_user'
           END AS outcome
    FROM batch b
),
keys AS (
    -- The keys not stored yet, stored now: the unique index makes a concurrent batch with the
    -- same key wait for this one and then find it (or take it over if this one rolls back).
    INSERT INTO event_idempotency_keys (key, ts)
    SELECT c.idempotency_key, c.ts
    FROM checked c
    WHERE c.outcome IS NULL AND c.idempotency_key IS NOT NULL
    ORDER BY c.idempotency_key
    ON CONFLICT (key) DO NOTHING
    RETURNING key
),
inserted AS (
    INSERT INTO events (type, rule_id, user_id, ip_hash, ts, idempotency_key)
    SELECT c.type, c.rule_id, c.user_id, c.ip_hash, c.ts, c.idempotency_key
    FROM checked c
    WHERE c.outcome IS NULL
      AND (c.idempotency_key IS NULL OR c.idempotency_key IN (SELECT k.key FROM keys k))
    RETURNING 1
),
summary AS MATERIALIZED (
    SELECT (SELECT count(*) FROM inserted)::int AS accepted,
           coalesce((SELECT array_agg(c.idx ORDER BY c.idx) FROM checked c
                     WHERE c.outcome = 'unknown_rule'), '{}') AS unknown_rule,
           coalesce((SELECT array_agg(c.idx ORDER BY c.idx) FROM checked c
                     WHERE c.outcome = 'unknown_user'), '{}') AS unknown_user
),
counts AS (
    SELECT s.*,
           :early_rejected::int + cardinality(s.unknown_rule) + cardinality(s.unknown_user)
               AS rejected,
           :early_duplicates::int + cardinality(:idx::int[]) - s.accepted
               - cardinality(s.unknown_rule) - cardinality(s.unknown_user) AS duplicates
    FROM summary s
),
audit AS (
    INSERT INTO audit_log (actor, action, request_id, details)
    SELECT :actor::text, 'events.accepted', :request_id::text,
           jsonb_build_object('received', :received::int, 'accepted', c.accepted,
                              'duplicates', c.duplicates, 'rejected', c.rejected)
    FROM counts c
)
SELECT accepted, duplicates, unknown_rule, unknown_user FROM counts;

-- name: events_ensure_partitions(first_day, last_day)$
-- The day partitions of `events` from `first_day` to `last_day` that do not exist yet, created
-- (rows of theirs in the default partition move in); returns how many (migrations/0014).
SELECT events_ensure_partitions(:first_day::date, :last_day::date);

-- name: events_drop_partitions_before(before)$
-- Retention: the day partitions wholly before `before` detached and dropped, and the default
-- partition's rows older than it deleted; returns the number of events removed (migrations/0014).
SELECT events_drop_partitions_before(:before::timestamptz);

-- name: events_closed_days_to_vacuum(first_day, before_day)
-- The day partitions of `first_day` .. the day before `before_day` (days that have ended) with
-- rows written since their last vacuum, or pages not yet marked all-visible: the rollup's day
-- count reads a day by an index-only scan, which visits the table for every row on such a page
-- (migrations/0015). Oldest day first.
SELECT c.relname AS partition
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE i.inhparent = 'events'::regclass
  AND c.relname ~ '^events_[0-9]{8}$'
  AND to_date(substr(c.relname, 8), 'YYYYMMDD') >= :first_day::date
  AND to_date(substr(c.relname, 8), 'YYYYMMDD') < :before_day::date
  AND (s.n_ins_since_vacuum > 0 OR s.n_dead_tup > 0 OR c.relallvisible < c.relpages)
ORDER BY c.relname;

-- name: events_purge_idempotency_keys(before, batch)$
-- One batch of idempotency keys whose event is older than `before`: no copy of such an event
-- is accepted any more (ts_too_old), so the key can decide nothing. The task loops until a batch
-- comes back short, so no statement holds many row locks for long.
WITH doomed AS (
    SELECT ctid FROM event_idempotency_keys WHERE ts < :before::timestamptz LIMIT :batch::int
),
deleted AS (
    DELETE FROM event_idempotency_keys k USING doomed d WHERE k.ctid = d.ctid RETURNING 1
)
SELECT count(*)::int FROM deleted;

-- name: events_state_sizes()^
-- How much state intake keeps besides the events, for operators and the scale benchmark.
SELECT (SELECT count(*) FROM event_idempotency_keys)::bigint AS idempotency_keys,
       pg_total_relation_size('event_idempotency_keys') AS idempotency_keys_bytes,
       (SELECT count(*) FROM rate_limit_buckets)::bigint AS rate_limit_buckets,
       pg_total_relation_size('rate_limit_buckets') AS rate_limit_buckets_bytes,
       (SELECT count(*) FROM events_default)::bigint AS default_partition_events,
       (SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass)::int
           AS partitions;
