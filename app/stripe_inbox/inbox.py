"""The inbox table: store an event once (whoever brought it first), audit refused
deliveries, and find the rows no job is handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from app import audit
from app.errors import StripeEventInvalid, StripeSignatureInvalid
from app.sql import queries
from app.stripe_inbox.events import InboxEvent

UNVERIFIED_ACTOR = "stripe:unverified"


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
    conn: asyncpg.Connection,
    *,
    error: StripeSignatureInvalid | StripeEventInvalid,
    body_bytes: int,
    request_id: str | None,
) -> None:
    """Audit a refused delivery: the reason, never the secret or the signature."""
    reason = error.details[0]["reason"] if error.details else "invalid_event"
    await audit.record(
        conn,
        actor=UNVERIFIED_ACTOR,
        action="stripe.webhook_rejected",
        subject=None,
        request_id=request_id,
        details={"reason": reason, "message": error.message, "bodyBytes": body_bytes},
    )


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
