-- name: events_ip_hash_secret()$
-- The service-managed key of the client-IP HMAC (created by migration 0002).
SELECT secret FROM ip_hash_secret WHERE singleton;

-- name: events_ingest_batch(idx, types, rule_ids, user_ids, ip_hashes, tss, idempotency_keys, received_at, check_refs, actor, request_id, received, early_rejected, early_duplicates)^
-- The whole batch in one statement: rule and user checks, idempotency, insert and the request's
-- audit row. Arrays are parallel, one element per event that passed the checks done in Python;
-- `idx` is the event's position in the request; a NULL in `tss` is an event sent without `ts`,
-- which happened at `received_at` (NULLs are cheaper to send than times).
-- `check_refs` false skips the per-event rule and user probes: the foreign keys of `events`
-- check every inserted event anyway and refuse the whole statement if one names an unknown
-- rule or user; the caller then runs it again with `check_refs` true, which names them.
-- Every valid VIEW is stored: which views count (10-minute slots, 5 per client, rule and day)
-- is decided by the rollup from the stored views, whatever order they arrived in
-- (docs/rollups.md). Only an idempotency key already stored makes an event a duplicate here.
-- Writes are ordered by their keys so that concurrent batches take row locks in one order.
WITH batch AS (
    SELECT b.idx, b.type, b.rule_id COLLATE "C" AS rule_id, b.user_id COLLATE "C" AS user_id,
           b.ip_hash COLLATE "C" AS ip_hash, coalesce(b.ts, :received_at::timestamptz) AS ts,
           b.idempotency_key COLLATE "C" AS idempotency_key
    FROM unnest(:idx::int[], :types::text[], :rule_ids::text[], :user_ids::text[],
                :ip_hashes::text[], :tss::timestamptz[], :idempotency_keys::text[])
         AS b(idx, type, rule_id, user_id, ip_hash, ts, idempotency_key)
),
checked AS MATERIALIZED (
    -- One index probe per event and check (keys by the partial unique index; rules and users
    -- by primary key, only with `check_refs`). Scalar subqueries, not joins or EXISTS: the
    -- planner cannot turn them into a hash of the whole table, which it prefers for small
    -- tables and stale statistics. `check_refs` comes first in its ANDs, so that when it is
    -- false the probes never run (a generic plan keeps it as a parameter). A repeated key is a
    -- duplicate whatever the event's other fields say, so it is decided first: with or without
    -- `check_refs`, the same event gets the same outcome.
    SELECT b.*,
           CASE
               WHEN b.idempotency_key IS NOT NULL
                    AND (SELECT true FROM events e
                         WHERE e.idempotency_key = b.idempotency_key
                           AND e.idempotency_key IS NOT NULL)
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
inserted AS (
    INSERT INTO events (type, rule_id, user_id, ip_hash, ts, idempotency_key)
    SELECT c.type, c.rule_id, c.user_id, c.ip_hash, c.ts, c.idempotency_key
    FROM checked c
    WHERE c.outcome IS NULL
    ORDER BY c.idempotency_key
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
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
