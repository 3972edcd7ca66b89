-- Stripe donations (docs/stripe.md): the webhook inbox's bookkeeping, and per-donation facts
-- from which `status` is derived, so that applying a payment's events in any order, any
-- number of times, yields the same row.

-- The inbox: Stripe's own event time orders the facts; attempts, outcome and note (why an
-- event was ignored) are for operators; `error` holds the last failure while unprocessed.
ALTER TABLE stripe_events
    ADD COLUMN created          timestamptz,
    ADD COLUMN livemode         boolean,
    ADD COLUMN attempts         integer NOT NULL DEFAULT 0,
    ADD COLUMN last_attempt_at  timestamptz,
    ADD COLUMN outcome          text,
    ADD COLUMN note             text,
    ADD COLUMN payment_intent_id text COLLATE "C",
    ADD CONSTRAINT stripe_events_outcome_check
        CHECK (outcome IN ('applied', 'ignored', 'failed'));
CREATE INDEX stripe_events_payment_intent_idx ON stripe_events (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;

-- Facts about one payment, each merged order-independently (earliest, latest, maximum):
--   *_ref          the raw metadata ids (authorId, ruleId, userId), kept even when the row
--                  they name does not exist (yet); author_id/rule_id/donor_user_id hold the
--                  ids only when they resolve, so the foreign keys never fail an event.
--   paid_at        earliest evidence the payment succeeded (a refund or a dispute is such
--                  evidence too: only a paid charge can be refunded or disputed).
--   pending_at     latest "payment started, not yet settled" (async Checkout methods).
--   failed_at      latest payment failure.
--   refunded_cents maximum charge.amount_refunded seen (Stripe's value is cumulative).
--   dispute_*      the dispute: open < won < lost (a closed dispute never reopens).
--   amount_at      Stripe time of the event the amount and currency were taken from.
--   last_event_at  latest Stripe event time applied; set only on rows this service manages.
ALTER TABLE donations
    ADD COLUMN author_ref           text COLLATE "C",
    ADD COLUMN rule_ref             text COLLATE "C",
    ADD COLUMN donor_ref            text COLLATE "C",
    ADD COLUMN charge_id            text COLLATE "C",
    ADD COLUMN checkout_session_id  text COLLATE "C",
    ADD COLUMN paid_at              timestamptz,
    ADD COLUMN pending_at           timestamptz,
    ADD COLUMN failed_at            timestamptz,
    ADD COLUMN refunded_at          timestamptz,
    ADD COLUMN dispute_id           text COLLATE "C",
    ADD COLUMN dispute_status       text,
    ADD COLUMN dispute_amount_cents bigint NOT NULL DEFAULT 0,
    ADD COLUMN dispute_at           timestamptz,
    ADD COLUMN amount_at            timestamptz,
    ADD COLUMN last_event_at        timestamptz,
    ADD CONSTRAINT donations_dispute_status_check
        CHECK (dispute_status IN ('open', 'won', 'lost')),
    ADD CONSTRAINT donations_dispute_amount_check CHECK (dispute_amount_cents >= 0);
CREATE INDEX donations_charge_id_idx ON donations (charge_id) WHERE charge_id IS NOT NULL;
CREATE INDEX donations_created_at_idx ON donations (created_at);

-- The documented precedence, highest first: lost dispute, open dispute, fully refunded,
-- partially refunded, paid, failed (when the latest failure is not older than the latest
-- pending), pending. A won dispute falls through to the refund and payment facts.
CREATE FUNCTION stripe_donation_status(
    paid_at timestamptz, pending_at timestamptz, failed_at timestamptz,
    amount_cents bigint, refunded_cents bigint, dispute_status text
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN dispute_status = 'lost' THEN 'lost'
        WHEN dispute_status = 'open' THEN 'disputed'
        WHEN refunded_cents > 0 AND refunded_cents >= amount_cents THEN 'refunded'
        WHEN refunded_cents > 0 THEN 'partially_refunded'
        WHEN paid_at IS NOT NULL THEN 'succeeded'
        WHEN failed_at IS NOT NULL AND failed_at >= coalesce(pending_at, '-infinity') THEN 'failed'
        ELSE 'pending'
    END
$$;

-- On every row this service manages (last_event_at set), `status` and the resolved ids are
-- derived here from the facts, never written directly: one place, whatever the writer. An
-- update that changes nothing is skipped (RETURNING then yields no row).
CREATE FUNCTION stripe_donation_derive() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.status := stripe_donation_status(NEW.paid_at, NEW.pending_at, NEW.failed_at,
                                         NEW.amount_cents, NEW.refunded_cents,
                                         NEW.dispute_status);
    NEW.rule_id := (SELECT r.id FROM rules r WHERE r.id = NEW.rule_ref);
    NEW.author_id := coalesce((SELECT u.id FROM users u WHERE u.id = NEW.author_ref),
                              (SELECT r.author_id FROM rules r WHERE r.id = NEW.rule_ref));
    NEW.donor_user_id := (SELECT u.id FROM users u WHERE u.id = NEW.donor_ref);
    IF TG_OP = 'UPDATE' THEN
        -- An event that adds nothing writes nothing: `updated_at` moves only on a change
        -- (rollups re-roll a day whose donations changed after it was rolled).
        NEW.updated_at := OLD.updated_at;
        IF NEW IS NOT DISTINCT FROM OLD THEN
            RETURN NULL;
        END IF;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER donations_stripe_derive
BEFORE INSERT OR UPDATE ON donations
FOR EACH ROW WHEN (NEW.last_event_at IS NOT NULL)
EXECUTE FUNCTION stripe_donation_derive();

-- Money kept per donation, for rollups and reports: what was paid, minus refunds, minus the
-- amount of an open or lost dispute (Stripe withdraws it when the dispute opens and returns
-- it only when the dispute is won). Nothing for pending or failed payments.
CREATE VIEW donations_kept AS
SELECT d.id, d.payment_intent_id, d.author_id, d.rule_id, d.donor_user_id, d.currency,
       d.status, d.created_at, d.updated_at, d.amount_cents, d.refunded_cents,
       d.dispute_status, d.dispute_amount_cents,
       CASE WHEN d.status IN ('pending', 'failed') THEN 0
            ELSE greatest(d.amount_cents - d.refunded_cents
                          - CASE WHEN d.dispute_status IN ('open', 'lost')
                                 THEN d.dispute_amount_cents ELSE 0 END,
                          0)
       END AS kept_cents
FROM donations d;
