"""Applying a stored event: once, under a lock on its inbox row, marked processed in the
transaction of its effect; a failed attempt is kept on the row for the retry."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from app import audit, donations
from app.db import Database
from app.errors import DatabaseUnavailable, StripeEventNotFound
from app.sql import queries

logger = logging.getLogger("ingest.stripe")

MAX_ERROR_LENGTH = 1000


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
    await queries.session_set_lock_timeout(conn, ms=lock_timeout_ms)
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


async def _mark_failed(
    conn: asyncpg.Connection, *, event_id: str, actor: str, error: BaseException
) -> None:
    attempts = await queries.stripe_mark_failed(conn, id=event_id, error=_describe(error))
    await audit.record(
        conn,
        actor=actor,
        action="stripe.event_failed",
        subject=f"stripe_event:{event_id}",
        details={"error": _describe(error), "attempt": attempts},
    )


async def record_failure(db: Database, *, event_id: str, actor: str, error: BaseException) -> None:
    """Keep the failed attempt on the inbox row and in the audit trail (best effort: when
    the database itself is down there is nowhere to write, and the retry will tell)."""
    try:
        await db.run(
            "stripe.record_failure", _mark_failed, event_id=event_id, actor=actor, error=error
        )
    except (asyncpg.PostgresError, DatabaseUnavailable) as exc:
        logger.warning(
            "could not record a failed Stripe event",
            extra={"event_id": event_id, "error": _describe(exc)},
        )


async def process_stored_event(
    db: Database,
    *,
    event_id: str,
    actor: str,
    lock_timeout_ms: int,
    force: bool = False,
) -> ProcessResult:
    """One transaction applies the event; a failure is recorded, then raised for a retry."""
    try:
        return await db.run(
            "stripe.apply_stored_event",
            apply_stored_event,
            event_id=event_id,
            actor=actor,
            lock_timeout_ms=lock_timeout_ms,
            force=force,
        )
    except StripeEventNotFound:
        raise
    except Exception as exc:
        await record_failure(db, event_id=event_id, actor=actor, error=exc)
        raise
