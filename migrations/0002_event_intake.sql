-- Event intake: idempotency, exact VIEW dedupe, the IP-hash secret, the shared rate limiter.

-- An idempotency key makes an event count once. The key lives on the event itself (a partial
-- unique index: only keyed events pay for it), so it is remembered as long as the event is;
-- event retention must therefore stay at 30 days or more (docs/events.md).
CREATE UNIQUE INDEX events_idempotency_key_idx
    ON events (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The last counted VIEW per (client IP hash, rule): a VIEW is counted only when its ts is at
-- least 10 minutes after `last_counted_at`. Upserted by the intake statement with
-- ON CONFLICT ... DO UPDATE ... WHERE, so the window holds across processes and instances.
-- `first_counted_at` is the earliest view counted by the write that last moved the row: the
-- upsert's guard compares the stored window with the incoming value of this column.
-- Rows whose last_counted_at is older than 30 days + 10 minutes can no longer decide anything
-- (no event that old is accepted) and are deleted by the `purge_event_dedupe` task.
CREATE TABLE view_dedupe (
    ip_hash           text COLLATE "C" NOT NULL,
    rule_id           text COLLATE "C" NOT NULL,
    last_counted_at   timestamptz NOT NULL,
    first_counted_at  timestamptz NOT NULL,
    PRIMARY KEY (ip_hash, rule_id)
) WITH (fillfactor = 80);  -- room on each page so that updates stay HOT (no index write)
CREATE INDEX view_dedupe_last_counted_at_idx ON view_dedupe USING brin (last_counted_at);

-- The key of the client-IP HMAC, generated here once so that every instance shares it.
-- IP_HASH_SECRET overrides it. Never logged, never returned by the API.
CREATE TABLE ip_hash_secret (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ip_hash_secret (secret)
VALUES (replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '')
        || replace(gen_random_uuid()::text, '-', ''));

-- The PostgreSQL rate limiter's token buckets (RATE_LIMIT_BACKEND=postgres). Unlogged: losing
-- the buckets in a crash only refills them, and no WAL is written per request.
CREATE UNLOGGED TABLE rate_limit_buckets (
    key         text COLLATE "C" PRIMARY KEY,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL,
    allowed     boolean NOT NULL  -- the outcome of the last request, for RETURNING
);

-- Views of one (IP, rule) pair inside a single batch, sorted by ts, given the stored last
-- counted ts: the 1-based positions of the views that count (each at least 10 minutes after
-- the previous counted one). Only called for pairs with two or more views in one batch.
CREATE FUNCTION view_dedupe_counted(last_counted timestamptz, tss timestamptz[])
RETURNS int[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    counted int[] := '{}';
    i int;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(tss), 0) LOOP
        IF last_counted IS NULL OR tss[i] >= last_counted + interval '10 minutes' THEN
            counted := counted || i;
            last_counted := tss[i];
        END IF;
    END LOOP;
    RETURN counted;
END
$$;
