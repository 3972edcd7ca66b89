-- name: ratelimit_take(key, capacity, per_second)^
-- Token bucket in one atomic statement: refill by the time elapsed, then take one token if
-- there is one. Concurrent requests for one key serialise on its row; the table is unlogged.
WITH refill AS (
    SELECT now() AS at
)
INSERT INTO rate_limit_buckets AS b (key, tokens, updated_at, allowed)
SELECT :key, :capacity::float8 - 1, r.at, true FROM refill r
ON CONFLICT (key) DO UPDATE
SET tokens = least(:capacity::float8,
                   b.tokens + greatest(0, extract(epoch FROM excluded.updated_at - b.updated_at))
                       * :per_second::float8)
             - CASE WHEN least(:capacity::float8,
                               b.tokens + greatest(0, extract(epoch FROM excluded.updated_at
                                                                 - b.updated_at))
                                   * :per_second::float8) >= 1 THEN 1 ELSE 0 END,
    allowed = least(:capacity::float8,
                    b.tokens + greatest(0, extract(epoch FROM excluded.updated_at - b.updated_at))
                        * :per_second::float8) >= 1,
    updated_at = greatest(b.updated_at, excluded.updated_at)
RETURNING allowed, tokens;

-- name: ratelimit_purge_idle(idle_seconds)$
-- Buckets untouched for longer than it takes to refill are full: dropping them changes nothing.
WITH gone AS (
    DELETE FROM rate_limit_buckets
    WHERE updated_at < now() - make_interval(secs => :idle_seconds)
    RETURNING 1
)
SELECT count(*)::int FROM gone;
