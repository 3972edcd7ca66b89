-- name: events_ip_hash_secret()$
-- The service-managed key of the client-IP HMAC (created by migration 0002).
SELECT secret FROM ip_hash_secret WHERE singleton;

-- name: events_ingest_batch(idx, types, rule_ids, user_ids, ip_hashes, tss, idempotency_keys, shared_pairs, received_at, check_refs, actor, request_id, received, early_rejected, early_duplicates)^
-- The whole batch in one statement: rule and user checks, idempotency, VIEW dedupe, insert and
-- the request's audit row. Arrays are parallel, one element per event that passed the checks
-- done in Python; `idx` is the event's position in the request; `shared_pairs` is true for a
-- VIEW whose (ip_hash, rule) pair has other views in this batch; a NULL in `tss` is an event
-- sent without `ts`, which happened at `received_at` (NULLs are cheaper to send than times).
-- `check_refs` false skips the per-event rule and user probes: the foreign keys of `events`
-- check every inserted event anyway and refuse the whole statement if one names an unknown
-- rule or user; the caller then runs it again with `check_refs` true, which names them.
-- VIEW dedupe: a view alone in its batch goes straight to the upsert, whose guard (the stored
-- window has ended by the view's ts) decides against the latest committed row. Views sharing a
-- pair are collapsed first (ON CONFLICT cannot touch a row twice in one statement): the
-- counted ones are decided against the stored window by view_dedupe_counted, and the guard
-- re-checks the first of them against the latest committed row. So concurrent batches never
-- count two views of a pair less than 10 minutes apart.
-- Writes are ordered by their keys so that concurrent batches take row locks in one order.
WITH batch AS (
    SELECT b.idx, b.type, b.rule_id COLLATE "C" AS rule_id, b.user_id COLLATE "C" AS user_id,
           b.ip_hash COLLATE "C" AS ip_hash, coalesce(b.ts, :received_at::timestamptz) AS ts,
           b.idempotency_key COLLATE "C" AS idempotency_key,
           b.shared_pair
    FROM unnest(:idx::int[], :types::text[], :rule_ids::text[], :user_ids::text[],
                :ip_hashes::text[], :tss::timestamptz[], :idempotency_keys::text[],
                :shared_pairs::bool[])
         AS b(idx, type, rule_id, user_id, ip_hash, ts, idempotency_key, shared_pair)
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
views AS (
    SELECT c.ip_hash, c.rule_id,
           array_agg(c.ts ORDER BY c.ts, c.idx) AS tss,
           array_agg(c.idx ORDER BY c.ts, c.idx) AS idxs
    FROM checked c
    WHERE c.outcome IS NULL AND c.type = 'VIEW' AND c.shared_pair
    GROUP BY c.ip_hash, c.rule_id
),
decided AS MATERIALIZED (
    SELECT v.ip_hash, v.rule_id, v.tss, v.idxs,
           view_dedupe_counted(d.last_counted_at, v.tss) AS counted
    FROM views v
    LEFT JOIN view_dedupe d ON d.ip_hash = v.ip_hash AND d.rule_id = v.rule_id
),
moved AS (
    INSERT INTO view_dedupe AS d (ip_hash, rule_id, last_counted_at, first_counted_at)
    SELECT w.ip_hash, w.rule_id, w.last_counted_at, w.first_counted_at
    FROM (
        SELECT c.ip_hash, c.rule_id, c.ts AS last_counted_at, c.ts AS first_counted_at
        FROM checked c
        WHERE c.outcome IS NULL AND c.type = 'VIEW' AND NOT c.shared_pair
        UNION ALL
        SELECT dc.ip_hash, dc.rule_id, dc.tss[dc.counted[cardinality(dc.counted)]],
               dc.tss[dc.counted[1]]
        FROM decided dc
        WHERE cardinality(dc.counted) > 0
    ) w
    ORDER BY w.ip_hash, w.rule_id
    ON CONFLICT (ip_hash, rule_id) DO UPDATE
    SET last_counted_at = excluded.last_counted_at,
        first_counted_at = excluded.first_counted_at
    WHERE d.last_counted_at <= excluded.first_counted_at - interval '10 minutes'
    RETURNING d.ip_hash, d.rule_id
),
counted_views AS (
    SELECT dc.idxs[pos] AS idx
    FROM decided dc
    CROSS JOIN LATERAL unnest(dc.counted) AS pos
),
inserted AS (
    INSERT INTO events (type, rule_id, user_id, ip_hash, ts, idempotency_key)
    SELECT c.type, c.rule_id, c.user_id, c.ip_hash, c.ts, c.idempotency_key
    FROM checked c
    WHERE c.outcome IS NULL
      AND (c.type <> 'VIEW'
           -- counted here, and its pair's window moved (a concurrent batch may have won it);
           -- IN inside OR keeps both as hashed subplans whatever the row estimates say
           OR ((NOT c.shared_pair OR c.idx IN (SELECT cv.idx FROM counted_views cv))
               AND (c.ip_hash, c.rule_id) IN (SELECT m.ip_hash, m.rule_id FROM moved m)))
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

-- name: events_purge_view_dedupe(keep_days)$
-- Windows that can no longer decide anything: no event older than `keep_days` is accepted, so a
-- row last counted more than that (plus the 10-minute window) ago would never dedupe again.
WITH gone AS (
    DELETE FROM view_dedupe
    WHERE last_counted_at < now() - make_interval(days => :keep_days) - interval '10 minutes'
    RETURNING 1
)
SELECT count(*)::int FROM gone;
