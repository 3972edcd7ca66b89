"""POST /ingest/stripe/webhook: verify on the raw body, store in the inbox, answer 200.

No x-app-token here (Stripe cannot send one): the Stripe-Signature header is the credential.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from app import metrics, stripe_inbox
from app.errors import DatabaseUnavailable, StripeEventInvalid, StripeSignatureInvalid
from app.http.openapi import (
    STRIPE_SIGNATURE,
    ResponseModel,
    error_responses,
    json_body,
    json_response_of,
)
from app.http.render import json_response, unstorable

bp = Blueprint("stripe")
logger = logging.getLogger("ingest.stripe")

# Stripe events are a few KB; the largest (expanded objects) stay well under this.
MAX_BODY_BYTES = 1024 * 1024


class StripeEvent(BaseModel):
    """A Stripe event as Stripe sends it. Verified on the raw body (`stripe_inbox.
    verify_webhook`), which needs exactly these fields; the rest is stored as sent."""

    id: str = Field(min_length=1, max_length=stripe_inbox.MAX_ID_LENGTH, description="evt_...")
    type: str = Field(
        max_length=stripe_inbox.MAX_ID_LENGTH,
        description="e.g. checkout.session.completed, charge.refunded",
    )
    created: int = Field(
        ge=-62135596800, le=253402300799, description="Unix time (years 1 to 9999)"
    )
    livemode: Any = Field(default=None, description="true for live-mode events; stored as sent")
    data: Any = Field(default=None, description="`data.object` is what the event is about")


class WebhookReceipt(ResponseModel):
    received: Literal[True]
    event_id: str
    duplicate: bool = Field(description="this event was already in the inbox")


@bp.post("/ingest/stripe/webhook", ctx_body_limit=MAX_BODY_BYTES)
@openapi.definition(
    summary="Receive a Stripe webhook delivery",
    body=json_body(StripeEvent),
    response=[
        json_response_of(200, WebhookReceipt, "Committed to the inbox (a redelivery too)"),
        *error_responses(400, 401, 403, 413, 503),
    ],
    secured=STRIPE_SIGNATURE,
)
async def stripe_webhook(request: Request) -> HTTPResponse:
    """200 once the event is committed to the inbox (a redelivery too); 401 when unverified."""
    settings = request.app.ctx.settings
    body = request.body or b""
    try:
        _refuse_unstorable(body)
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
    receipt = await request.app.ctx.res.db.run(
        "stripe.store_event",
        stripe_inbox.store_event,
        event=event,
        request_id=request.ctx.request_id,
    )
    metrics.WEBHOOKS.labels(event.type, "duplicate" if receipt.duplicate else "stored").inc()
    if not receipt.processed:
        await _defer(request, event.id)
    answer = WebhookReceipt(received=True, event_id=receipt.event_id, duplicate=receipt.duplicate)
    return json_response(answer.as_json())


def _refuse_unstorable(body: bytes) -> None:
    """NUL characters or nesting past what jsonb is written with: not a Stripe event, whatever
    the signature (checked first: Stripe's own parser would overflow the stack on deep JSON)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return  # verification reports it
    reason = unstorable(body, data)
    if reason is not None:
        raise StripeEventInvalid(reason)


async def _audit_rejection(
    request: Request, error: StripeSignatureInvalid | StripeEventInvalid, body_bytes: int
) -> None:
    """Audit the refusal; with the database down, the 400 still stands (nothing was stored)."""
    try:
        await request.app.ctx.res.db.run(
            "stripe.record_rejection",
            stripe_inbox.record_rejection,
            error=error,
            body_bytes=body_bytes,
            request_id=request.ctx.request_id,
        )
    except DatabaseUnavailable:
        logger.warning(
            "Stripe webhook refused; audit row not written (database unavailable)",
            extra={"request_id": request.ctx.request_id, "code": error.code},
        )


async def _defer(request: Request, event_id: str) -> None:
    """Queue processing after the commit; if that fails, the sweeper queues it within minutes."""
    try:
        await request.app.ctx.res.queue.stripe_event(event_id)
    except Exception:
        logger.warning(
            "Stripe event stored but not queued; the sweeper will queue it",
            exc_info=True,
            extra={"event_id": event_id, "request_id": request.ctx.request_id},
        )
