"""POST /ingest/stripe/webhook: verify on the raw body, store in the inbox, answer 200.

No x-app-token here (Stripe cannot send one): the Stripe-Signature header is the credential.
"""

from __future__ import annotations

import logging

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from app import metrics, stripe_inbox
from app.db import transaction
from app.errors import DatabaseUnavailable, StripeEventInvalid, StripeSignatureInvalid
from app.http.render import json_response
from jobs.stripe import defer_processing

bp = Blueprint("stripe")
logger = logging.getLogger("ingest.stripe")

# Stripe events are a few KB; the largest (expanded objects) stay well under this.
MAX_BODY_BYTES = 1024 * 1024


@bp.post("/ingest/stripe/webhook", ctx_body_limit=MAX_BODY_BYTES)
async def stripe_webhook(request: Request) -> HTTPResponse:
    """200 once the event is committed to the inbox (a redelivery too); 400 when unverified."""
    settings = request.app.ctx.settings
    timeout = settings.db_acquire_timeout_s
    body = request.body or b""
    try:
        event = stripe_inbox.verify_webhook(
            body,
            request.headers.get("stripe-signature"),
            secrets=settings.stripe_webhook_secrets,
            tolerance_s=settings.stripe_webhook_tolerance_s,
        )
    except (StripeSignatureInvalid, StripeEventInvalid) as exc:
        metrics.WEBHOOKS.labels("unverified", "rejected").inc()
        await _audit_rejection(request, exc, len(body))
        raise
    async with transaction(request.app.ctx.pool, timeout=timeout) as conn:
        receipt = await stripe_inbox.store_event(
            conn, event=event, request_id=request.ctx.request_id
        )
    metrics.WEBHOOKS.labels(event.type, "duplicate" if receipt.duplicate else "stored").inc()
    if not receipt.processed:
        await _defer(request, event.id)
    return json_response(receipt.as_json())


async def _audit_rejection(
    request: Request, error: StripeSignatureInvalid | StripeEventInvalid, body_bytes: int
) -> None:
    """Audit the refusal; with the database down, the 400 still stands (nothing was stored)."""
    try:
        await stripe_inbox.record_rejection(
            request.app.ctx.pool,
            error=error,
            body_bytes=body_bytes,
            request_id=request.ctx.request_id,
            timeout=request.app.ctx.settings.db_acquire_timeout_s,
        )
    except DatabaseUnavailable:
        logger.warning(
            "Stripe webhook refused; audit row not written (database unavailable)",
            extra={"request_id": request.ctx.request_id, "code": error.code},
        )


async def _defer(request: Request, event_id: str) -> None:
    """Queue processing after the commit; if that fails, the sweeper queues it within minutes."""
    try:
        await defer_processing(request.app.ctx.jobs, event_id=event_id)
    except Exception:
        logger.warning(
            "Stripe event stored but not queued; the sweeper will queue it",
            exc_info=True,
            extra={"event_id": event_id, "request_id": request.ctx.request_id},
        )
