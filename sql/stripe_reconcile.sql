-- Reconciliation of the Stripe inbox with Stripe's Events API (docs/stripe.md). Events the
-- inbox lacks are stored through `stripe_store_event` (sql/stripe.sql), as a delivery is.

-- name: stripe_reconcile_watermark()$
-- Up to when (Stripe's event time) the inbox is known complete; NULL before the first run.
SELECT watermark FROM stripe_reconcile_state WHERE singleton;

-- name: stripe_reconcile_advance_watermark(watermark)$
-- Forward only: a slower run finishing after a newer one never moves it back.
INSERT INTO stripe_reconcile_state AS s (singleton, watermark)
VALUES (true, :watermark::timestamptz)
ON CONFLICT (singleton) DO UPDATE
SET watermark = greatest(s.watermark, EXCLUDED.watermark),
    updated_at = CASE WHEN EXCLUDED.watermark > s.watermark THEN now() ELSE s.updated_at END
RETURNING watermark;

-- name: stripe_reconcile_missing(ids)
-- Which of one listed page's event ids the inbox lacks (one round trip per page).
SELECT listed.id
FROM unnest(:ids::text[]) WITH ORDINALITY AS listed (id, n)
WHERE NOT EXISTS (SELECT 1 FROM stripe_events e WHERE e.id = listed.id)
ORDER BY listed.n;

-- name: metrics_stripe_reconcile()^
-- For /metrics: inbox rows recovered by reconciliation (never deleted, so it only grows) and
-- the watermark's age in seconds (NULL before the first run).
SELECT (SELECT count(*) FROM stripe_events WHERE source = 'reconciliation') AS recovered,
       (SELECT extract(epoch FROM now() - watermark)::float8
        FROM stripe_reconcile_state WHERE singleton) AS watermark_age_s;
