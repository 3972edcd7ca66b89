-- Reconciliation with Stripe's Events API (docs/stripe.md): where each inbox row came from,
-- and how far back the inbox is known to hold every event Stripe has.

-- `webhook`: a verified delivery; `reconciliation`: listed from the Events API because no
-- delivery had brought it (any such row means webhook delivery failed for a while).
ALTER TABLE stripe_events
    ADD COLUMN source text NOT NULL DEFAULT 'webhook',
    ADD CONSTRAINT stripe_events_source_check CHECK (source IN ('webhook', 'reconciliation'));
CREATE INDEX stripe_events_recovered_idx ON stripe_events (received_at)
    WHERE source = 'reconciliation';

-- One row: every event Stripe created up to `watermark` (Stripe's clock) has been checked
-- against the inbox. It only moves forward.
CREATE TABLE stripe_reconcile_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    watermark   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
