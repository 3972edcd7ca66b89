"""The Stripe webhook inbox: verify, store durably and answer; apply each event exactly once.

Stripe retries a delivery for days, out of order, sometimes twice at once. The webhook only
verifies the signature and inserts the event into `stripe_events` (`ON CONFLICT DO NOTHING`);
a job applies it later (`apply_stored_event`) under a row lock on the event, marking it
processed in the same transaction as its effect, so however many deliveries and jobs there
are, the effect happens once. Reconciliation (app/stripe_reconcile.py) stores the events no
delivery brought through the same `store_event`. docs/stripe.md describes the whole flow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
import orjson
import stripe

from app import audit, donations
from app.db import UNAVAILABLE_ERRORS, queries, transaction
from app.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    StripeEventInvalid,
    StripeEventNotFound,
    StripeSignatureInvalid,
)
from app.http.auth import fingerprint

logger = logging.getLogger("ingest.stripe")

UNVERIFIED_ACTOR = "stripe:unverified"
MAX_ERROR_LENGTH = 1000
# Stripe's ids and type names are a few dozen characters; a primary key cannot hold megabytes.
MAX_ID_LENGTH = 255

# Why a signature was refused, most telling first: with several secrets (rotation), the
# reason kept is the most telling one any secret gave.
REJECTION_MESSAGES = {
    "timestamp_outside_tolerance": "the Stripe-Signature timestamp is older than the "
    "{tolerance} s tolerance (a replayed or long-delayed delivery)",
    "signature_mismatch": "the Stripe-Signature header does not match the body for any "
    "configured webhook secret",
    "malformed_signature": "the Stripe-Signature header is malformed (expected t=...,v1=...)",
    "missing_signature": "the Stripe-Signature header is missing",
}
REASON_RANK = list(REJECTION_MESSAGES)


@dataclass(frozen=True)
class VerifiedEvent:
    """A Stripe event whose signature verified, as Stripe sent it."""

    id: str
    type: str
    created: datetime
    livemode: bool | None
    payload: dict[str, Any]
    secret_fingerprint: str
    source: ClassVar[str] = "webhook"

    @property
    def actor(self) -> str:
        """Audit actor: which configured secret verified it (useful while rotating)."""
        return f"stripe:{self.secret_fingerprint}"


@dataclass(frozen=True)
class RecoveredEvent:
    """A Stripe event listed from Stripe's Events API (authenticated by the secret key over
    TLS) because no webhook delivery brought it; `actor` is the reconciliation run's."""

    id: str
    type: str
    created: datetime
    livemode: bool | None
    payload: dict[str, Any]
    actor: str
    source: ClassVar[str] = "reconciliation"


InboxEvent = VerifiedEvent | RecoveredEvent

# The audit action of an inbox write, by (source, already in the inbox). An event that
# reconciliation finds already stored is the normal case and leaves no row per event (the
# run's own audit row counts them).
STORE_ACTIONS: dict[tuple[str, bool], str | None] = {
    ("webhook", False): "stripe.event_received",
    ("webhook", True): "stripe.event_redelivered",
    ("reconciliation", False): "stripe.event_recovered",
    ("reconciliation", True): None,
}


@dataclass(frozen=True)
class Receipt:
    """The answer to one delivery."""

    event_id: str
    duplicate: bool
    processed: bool

    def as_json(self) -> dict[str, Any]:
        return {"received": True, "eventId": self.event_id, "duplicate": self.duplicate}


@dataclass(frozen=True)
class ProcessResult:
    """What processing a stored event did."""

    event_id: str
    outcome: str  # applied | ignored | already_processed
    payment_intent_id: str | None = None
    donation_id: str | None = None
    status: str | None = None
    changed: bool = False
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "eventId": self.event_id,
            "outcome": self.outcome,
            "paymentIntentId": self.payment_intent_id,
            "donationId": self.donation_id,
            "status": self.status,
            "changed": self.changed,
            "reason": self.reason,
        }


# --- verification ----------------------------------------------------------------------


def _rejection_reason(exc: stripe.SignatureVerificationError) -> str:
    text = str(exc)
    if "Timestamp outside the tolerance" in text:
        return "timestamp_outside_tolerance"
    if "matching the expected signature" in text:
        return "signature_mismatch"
    if "No Stripe-Signature header" in text:
        return "missing_signature"
    return "malformed_signature"


def _most_telling(reasons: list[str]) -> str:
    return min(reasons, key=REASON_RANK.index) if reasons else "signature_mismatch"


def rejection(reason: str, *, tolerance_s: int) -> StripeSignatureInvalid:
    message = REJECTION_MESSAGES[reason].format(tolerance=tolerance_s)
    return StripeSignatureInvalid(message, details=[{"reason": reason}])


def _event_from_body(body: bytes, secret: str) -> VerifiedEvent:
    """The stored form of a verified body: the JSON exactly as sent, plus its key fields."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise StripeEventInvalid(f"the signed body is not valid JSON: {exc.msg}") from exc
    event_id, event_type, created_at, livemode = _key_fields(payload)
    return VerifiedEvent(
        id=event_id,
        type=event_type,
        created=created_at,
        livemode=livemode,
        payload=payload,
        secret_fingerprint=fingerprint(secret),
    )


def recovered_event(payload: Any, *, actor: str) -> RecoveredEvent:
    """An event from Stripe's Events API, checked as a delivered one is."""
    event_id, event_type, created_at, livemode = _key_fields(payload)
    return RecoveredEvent(
        id=event_id,
        type=event_type,
        created=created_at,
        livemode=livemode,
        payload=payload,
        actor=actor,
    )


def _key_fields(payload: Any) -> tuple[str, str, datetime, bool | None]:
    """(id, type, created, livemode) of an event, or `StripeEventInvalid`."""
    event_id = payload.get("id") if isinstance(payload, dict) else None
    event_type = payload.get("type") if isinstance(payload, dict) else None
    created = payload.get("created") if isinstance(payload, dict) else None
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str)):
        raise StripeEventInvalid("the signed body is not a Stripe event (no id or type)")
    if isinstance(created, float) and created.is_integer():
        created = int(created)  # `1790000000.0` is the integer JSON Schema says it is
    if not isinstance(created, int) or isinstance(created, bool):
        raise StripeEventInvalid("the signed body is not a Stripe event (no created time)")
    if len(event_id) > MAX_ID_LENGTH or len(event_type) > MAX_ID_LENGTH:
        raise StripeEventInvalid(f"the event id and type are at most {MAX_ID_LENGTH} characters")
    try:
        created_at = datetime.fromtimestamp(created, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise StripeEventInvalid("the event's created time is out of range") from exc
    assert isinstance(payload, dict)
    livemode = payload.get("livemode")
    return event_id, event_type, created_at, livemode if isinstance(livemode, bool) else None


def verify_webhook(
    body: bytes, signature: str | None, *, secrets: tuple[str, ...], tolerance_s: int
) -> VerifiedEvent:
    """Check the signature on the raw body against each configured secret in turn.

    Raises `StripeSignatureInvalid` (with a reason in `details`) when no secret verifies it,
    `StripeEventInvalid` when it verifies but is not an event."""
    if not secrets:
        raise ConfigurationError("STRIPE_WEBHOOK_SECRET is not set: webhooks cannot be verified")
    if not signature:
        raise rejection("missing_signature", tolerance_s=tolerance_s)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StripeEventInvalid("the body is not UTF-8 text") from exc
    reasons: list[str] = []
    for secret in secrets:
        try:
            stripe.Webhook.construct_event(body, signature, secret, tolerance=tolerance_s)
        except stripe.SignatureVerificationError as exc:
            reasons.append(_rejection_reason(exc))
            continue
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            # Only parsing is left once the signature verified: a signed non-event.
            raise StripeEventInvalid(f"the signed body is not a Stripe event: {exc}") from exc
        return _event_from_body(body, secret)
    raise rejection(_most_telling(reasons), tolerance_s=tolerance_s)


# --- the inbox -------------------------------------------------------------------------


async def store_event(
    conn: asyncpg.Connection, *, event: InboxEvent, request_id: str | None
) -> Receipt:
    """Insert the event unless already there (whoever brought it first), and audit it."""
    row = await queries.stripe_store_event(
        conn,
        id=event.id,
        type=event.type,
        payload=event.payload,
        created=event.created,
        livemode=event.livemode,
        source=event.source,
    )
    duplicate = not row["inserted"]
    action = STORE_ACTIONS[(event.source, duplicate)]
    if action is not None:
        await audit.record(
            conn,
            actor=event.actor,
            action=action,
            subject=f"stripe_event:{event.id}",
            request_id=request_id,
            details={"type": event.type, "created": event.created.isoformat()},
        )
    return Receipt(event_id=event.id, duplicate=duplicate, processed=bool(row["processed"]))


async def record_rejection(
    pool: asyncpg.Pool,
    *,
    error: StripeSignatureInvalid | StripeEventInvalid,
    body_bytes: int,
    request_id: str | None,
    timeout: float,
) -> None:
    """Audit a refused delivery: the reason, never the secret or the signature."""
    reason = error.details[0]["reason"] if error.details else "invalid_event"
    async with transaction(pool, timeout=timeout) as conn:
        await audit.record(
            conn,
            actor=UNVERIFIED_ACTOR,
            action="stripe.webhook_rejected",
            subject=None,
            request_id=request_id,
            details={"reason": reason, "message": error.message, "bodyBytes": body_bytes},
        )


# --- processing ------------------------------------------------------------------------


async def _record_outcome(
    conn: asyncpg.Connection, *, event: asyncpg.Record, result: ProcessResult, actor: str
) -> None:
    await queries.stripe_mark_processed(
        conn,
        id=result.event_id,
        outcome=result.outcome,
        payment_intent_id=result.payment_intent_id,
        note=result.reason,
    )
    details: dict[str, Any] = {"type": event["type"], "attempt": event["attempts"] + 1}
    if result.outcome == "ignored":
        details["reason"] = result.reason
    else:
        details.update(
            paymentIntentId=result.payment_intent_id,
            donationId=result.donation_id,
            status=result.status,
            changed=result.changed,
        )
    await audit.record(
        conn,
        actor=actor,
        action=f"stripe.event_{result.outcome}",
        subject=f"stripe_event:{result.event_id}",
        details=details,
    )


async def apply_stored_event(
    conn: asyncpg.Connection,
    *,
    event_id: str,
    actor: str,
    lock_timeout_ms: int,
    force: bool = False,
) -> ProcessResult:
    """Apply one inbox event inside the caller's transaction, once (`force` re-applies:
    the merge is idempotent, so a replay can only repair, never double count)."""
    await queries.stripe_set_lock_timeout(conn, ms=lock_timeout_ms)
    event = await queries.stripe_lock_event(conn, id=event_id)
    if event is None:
        raise StripeEventNotFound(f"no Stripe event {event_id!r} in the inbox")
    if event["processed_at"] is not None and not force:
        return ProcessResult(event_id=event_id, outcome="already_processed")
    facts = donations.facts_from_event(event["payload"])
    if isinstance(facts, donations.Ignored):
        result = ProcessResult(event_id=event_id, outcome="ignored", reason=facts.reason)
    else:
        change = await donations.apply_facts(conn, facts=facts)
        result = ProcessResult(
            event_id=event_id,
            outcome="applied",
            payment_intent_id=change.payment_intent_id,
            donation_id=change.donation_id,
            status=change.status,
            changed=change.changed,
        )
    await _record_outcome(conn, event=event, result=result, actor=actor)
    return result


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]


async def record_failure(
    pool: asyncpg.Pool, *, event_id: str, actor: str, error: BaseException, timeout: float
) -> None:
    """Keep the failed attempt on the inbox row and in the audit trail (best effort: when
    the database itself is down there is nowhere to write, and the retry will tell)."""
    try:
        async with transaction(pool, timeout=timeout) as conn:
            attempts = await queries.stripe_mark_failed(conn, id=event_id, error=_describe(error))
            await audit.record(
                conn,
                actor=actor,
                action="stripe.event_failed",
                subject=f"stripe_event:{event_id}",
                details={"error": _describe(error), "attempt": attempts},
            )
    except (asyncpg.PostgresError, DatabaseUnavailable, *UNAVAILABLE_ERRORS) as exc:
        logger.warning(
            "could not record a failed Stripe event",
            extra={"event_id": event_id, "error": _describe(exc)},
        )


async def process_stored_event(
    pool: asyncpg.Pool,
    *,
    event_id: str,
    actor: str,
    timeout: float,
    lock_timeout_ms: int,
    force: bool = False,
) -> ProcessResult:
    """One transaction applies the event; a failure is recorded, then raised for a retry."""
    try:
        async with transaction(pool, timeout=timeout) as conn:
            return await apply_stored_event(
                conn, event_id=event_id, actor=actor, lock_timeout_ms=lock_timeout_ms, force=force
            )
    except StripeEventNotFound:
        raise
    except Exception as exc:
        await record_failure(pool, event_id=event_id, actor=actor, error=exc, timeout=timeout)
        raise


async def sweep_candidates(conn: asyncpg.Connection, *, grace_s: float, limit: int) -> list[str]:
    """Inbox rows left unprocessed with no job waiting or running for them."""
    return [
        row["id"]
        async for row in queries.stripe_sweep_candidates(conn, grace_s=grace_s, limit_=limit)
    ]


async def record_sweep(
    conn: asyncpg.Connection, *, event_ids: list[str], actor: str = "job:sweep_stripe_inbox"
) -> None:
    """Audit the events the sweeper re-queued: each one was stranded for a while."""
    await audit.record(
        conn,
        actor=actor,
        action="stripe.inbox_swept",
        subject=None,
        details={"requeued": event_ids[:100], "count": len(event_ids)},
    )


async def pending_events(conn: asyncpg.Connection, *, limit: int) -> list[dict[str, Any]]:
    """Unprocessed inbox rows (never tried, retrying, or failed), oldest first."""
    return [dict(row) async for row in queries.stripe_pending_events(conn, limit_=limit)]
