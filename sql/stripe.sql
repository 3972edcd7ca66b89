-- Stripe donations (docs/stripe.md). The inbox `stripe_events` and the `donations` rows.

-- name: stripe_store_event(id, type, payload, created, livemode, source)^
-- The inbox write, for a webhook delivery and for an event recovered by reconciliation
-- alike: a redelivery stores nothing. `processed` is the state before this statement (NULL
-- for a new event), so a redelivery of an unprocessed event re-queues it.
WITH inserted AS (
    INSERT INTO stripe_events (id, type, payload, created, livemode, source)
    VALUES (:id, :type, :payload, :created::timestamptz, :livemode::boolean, :source)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM inserted) AS inserted,
       (SELECT processed_at IS NOT NULL FROM stripe_events WHERE id = :id) AS processed;

-- name: stripe_lock_event(id)^
-- The event row, locked for this transaction: one processing of an event at a time.
SELECT id, type, payload, created, processed_at, outcome, attempts
FROM stripe_events
WHERE id = :id
FOR UPDATE;

-- name: stripe_mark_processed(id, outcome, payment_intent_id, note)!
UPDATE stripe_events
SET processed_at = now(), outcome = :outcome, payment_intent_id = :payment_intent_id,
    note = :note, error = NULL, attempts = attempts + 1, last_attempt_at = now()
WHERE id = :id;

-- name: stripe_mark_failed(id, error)$
-- A failed attempt: the row stays unprocessed, so the retry or the sweeper takes it again.
UPDATE stripe_events
SET outcome = 'failed', error = :error, attempts = attempts + 1, last_attempt_at = now()
WHERE id = :id AND processed_at IS NULL
RETURNING attempts;

-- name: stripe_payment_intent_for_charge(charge_id)$
SELECT payment_intent_id FROM donations WHERE charge_id = :charge_id ORDER BY id LIMIT 1;

-- name: stripe_donation_by_payment_intent(payment_intent_id)^
SELECT id, status FROM donations WHERE payment_intent_id = :payment_intent_id;

-- name: stripe_merge_donation_facts(payment_intent_id, event_at, created_at, author_ref, rule_ref, donor_ref, amount_cents, currency, paid, pending, failed, refunded_cents, charge_id, checkout_session_id, dispute_id, dispute_status, dispute_amount_cents)^
-- One event's facts merged into the payment's row. Every merge is order-independent:
-- earliest (least), latest (greatest), maximum, or a fixed rank; the trigger
-- `donations_stripe_derive` then derives status and the resolved ids, and skips an update
-- that changes nothing (no row is returned then). least/greatest ignore NULLs.
WITH facts AS (
    SELECT :payment_intent_id::text AS payment_intent_id,
           :event_at::timestamptz AS event_at,
           :created_at::timestamptz AS created_at,
           :author_ref::text AS author_ref, :rule_ref::text AS rule_ref,
           :donor_ref::text AS donor_ref,
           :amount_cents::bigint AS amount_cents, :currency::text AS currency,
           CASE WHEN :paid::boolean THEN :event_at::timestamptz END AS paid_at,
           CASE WHEN :pending::boolean THEN :event_at::timestamptz END AS pending_at,
           CASE WHEN :failed::boolean THEN :event_at::timestamptz END AS failed_at,
           :refunded_cents::bigint AS refunded_cents,
           :charge_id::text AS charge_id, :checkout_session_id::text AS checkout_session_id,
           :dispute_id::text AS dispute_id, :dispute_status::text AS dispute_status,
           :dispute_amount_cents::bigint AS dispute_amount_cents
)
INSERT INTO donations AS d (
    payment_intent_id, author_ref, rule_ref, donor_ref, charge_id, checkout_session_id,
    amount_cents, currency, amount_at, paid_at, pending_at, failed_at,
    refunded_cents, refunded_at, dispute_id, dispute_status, dispute_amount_cents, dispute_at,
    created_at, last_event_at)
SELECT f.payment_intent_id, f.author_ref, f.rule_ref, f.donor_ref, f.charge_id,
       f.checkout_session_id, coalesce(f.amount_cents, 0), coalesce(f.currency, 'usd'),
       CASE WHEN f.amount_cents IS NOT NULL THEN f.event_at END,
       f.paid_at, f.pending_at, f.failed_at,
       coalesce(f.refunded_cents, 0), CASE WHEN f.refunded_cents > 0 THEN f.event_at END,
       f.dispute_id, f.dispute_status, coalesce(f.dispute_amount_cents, 0),
       CASE WHEN f.dispute_status IS NOT NULL THEN f.event_at END,
       f.created_at, f.event_at
FROM facts f
ON CONFLICT (payment_intent_id) DO UPDATE SET
    author_ref = least(d.author_ref, EXCLUDED.author_ref),
    rule_ref = least(d.rule_ref, EXCLUDED.rule_ref),
    donor_ref = least(d.donor_ref, EXCLUDED.donor_ref),
    charge_id = least(d.charge_id, EXCLUDED.charge_id),
    checkout_session_id = least(d.checkout_session_id, EXCLUDED.checkout_session_id),
    -- Amount and currency from the latest event that carried them (ties: the larger).
    amount_cents = CASE
        WHEN (coalesce(EXCLUDED.amount_at, '-infinity'), EXCLUDED.amount_cents, EXCLUDED.currency)
           > (coalesce(d.amount_at, '-infinity'), d.amount_cents, d.currency)
        THEN EXCLUDED.amount_cents ELSE d.amount_cents END,
    currency = CASE
        WHEN (coalesce(EXCLUDED.amount_at, '-infinity'), EXCLUDED.amount_cents, EXCLUDED.currency)
           > (coalesce(d.amount_at, '-infinity'), d.amount_cents, d.currency)
        THEN EXCLUDED.currency ELSE d.currency END,
    amount_at = greatest(d.amount_at, EXCLUDED.amount_at),
    paid_at = least(d.paid_at, EXCLUDED.paid_at),
    pending_at = greatest(d.pending_at, EXCLUDED.pending_at),
    failed_at = greatest(d.failed_at, EXCLUDED.failed_at),
    -- charge.amount_refunded is cumulative: the largest value seen is the total.
    refunded_cents = greatest(d.refunded_cents, EXCLUDED.refunded_cents),
    refunded_at = greatest(d.refunded_at, EXCLUDED.refunded_at),
    dispute_id = least(d.dispute_id, EXCLUDED.dispute_id),
    -- open < won < lost: a closed dispute never reopens, whatever arrives later.
    dispute_status = CASE
        WHEN array_position(ARRAY['open', 'won', 'lost'], EXCLUDED.dispute_status)
           > coalesce(array_position(ARRAY['open', 'won', 'lost'], d.dispute_status), 0)
        THEN EXCLUDED.dispute_status ELSE d.dispute_status END,
    dispute_amount_cents = greatest(d.dispute_amount_cents, EXCLUDED.dispute_amount_cents),
    dispute_at = greatest(d.dispute_at, EXCLUDED.dispute_at),
    created_at = least(d.created_at, EXCLUDED.created_at),
    last_event_at = greatest(d.last_event_at, EXCLUDED.last_event_at)
RETURNING d.id, d.status, (d.xmax = 0) AS inserted;

-- name: stripe_sweep_candidates(grace_s, limit_)
-- Unprocessed inbox rows no job is waiting for or running: left behind by a crash between
-- commit and defer, or by a job whose retries ran out. A row that keeps failing waits
-- longer each time (10 s x 2^attempts, at most 6 hours), so it is retried forever but
-- never hammers the database.
WITH running AS (
    SELECT j.queueing_lock
    FROM procrastinate_jobs j
    WHERE j.status = 'doing' AND j.queueing_lock LIKE 'stripe\_event:%'
)
SELECT e.id
FROM stripe_events e
WHERE e.processed_at IS NULL
  AND e.received_at < now() - make_interval(secs => :grace_s::float8)
  AND (e.last_attempt_at IS NULL
       OR e.last_attempt_at < now() - least(
              make_interval(secs => 10 * power(2, least(e.attempts, 16))), interval '6 hours'))
  AND NOT EXISTS (
        SELECT 1 FROM procrastinate_jobs j
        WHERE j.status = 'todo' AND j.queueing_lock = 'stripe_event:' || e.id)
  AND NOT EXISTS (SELECT 1 FROM running r WHERE r.queueing_lock = 'stripe_event:' || e.id)
ORDER BY e.received_at
LIMIT :limit_::int;

-- name: stripe_pending_events(limit_)
-- What `ingest stripe pending` lists: unprocessed rows (never tried, retrying or failed).
SELECT id, type, received_at, created, attempts, last_attempt_at, outcome, error, note,
       now() - received_at AS waiting
FROM stripe_events
WHERE processed_at IS NULL
ORDER BY received_at
LIMIT :limit_::int;
