"""The Stripe webhook inbox: verify, store durably and answer; apply each event exactly once.

Stripe retries a delivery for days, out of order, sometimes twice at once. The webhook only
verifies the signature and inserts the event into `stripe_events` (`ON CONFLICT DO NOTHING`);
a job applies it later (`apply_stored_event`) under a row lock on the event, marking it
processed in the same transaction as its effect, so however many deliveries and jobs there
are, the effect happens once. Reconciliation (app/stripe_reconcile.py) stores the events no
delivery brought through the same `store_event`. docs/stripe.md describes the whole flow.

Modules: `events` (the event shapes), `signature` (the webhook's check), `inbox` (the table),
`processing` (applying an event once).
"""

from __future__ import annotations

from app.stripe_inbox.events import (
    MAX_ID_LENGTH,
    InboxEvent,
    RecoveredEvent,
    VerifiedEvent,
    recovered_event,
)
from app.stripe_inbox.inbox import (
    UNVERIFIED_ACTOR,
    Receipt,
    pending_events,
    record_rejection,
    record_sweep,
    store_event,
    sweep_candidates,
)
from app.stripe_inbox.processing import (
    ProcessResult,
    apply_stored_event,
    process_stored_event,
    record_failure,
)
from app.stripe_inbox.signature import rejection, verify_webhook

__all__ = [
    "MAX_ID_LENGTH",
    "UNVERIFIED_ACTOR",
    "InboxEvent",
    "ProcessResult",
    "Receipt",
    "RecoveredEvent",
    "VerifiedEvent",
    "apply_stored_event",
    "pending_events",
    "process_stored_event",
    "record_failure",
    "record_rejection",
    "record_sweep",
    "recovered_event",
    "rejection",
    "store_event",
    "sweep_candidates",
    "verify_webhook",
]
