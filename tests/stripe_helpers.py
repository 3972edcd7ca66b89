"""Stripe test payloads, shaped like Stripe's own, and the real signing algorithm."""

from __future__ import annotations

import itertools
import time
from typing import Any

import asyncpg
import httpx
import orjson
import stripe

from app import stripe_inbox
from app.credentials import fingerprint
from app.db import Database
from tests.conftest import WEBHOOK_SECRET

WEBHOOK_PATH = "/ingest/stripe/webhook"
BASE_TIME = 1_790_000_000  # a fixed Stripe `created` (2026-09-21); events add offsets to it
_counter = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_test{next(_counter):06d}{int(time.time() * 1000) % 100000:05d}"


def body_of(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def sign(body: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe would send, from stripe-python's own algorithm."""
    return str(
        stripe.WebhookSignature.generate_signature_header(
            body.decode(), secret, timestamp=timestamp
        )
    )


def event(
    event_type: str, obj: dict[str, Any], *, at: int = 0, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": "2025-10-29.clover",
        "created": BASE_TIME + at,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def metadata(author: str | None, rule: str | None = None, donor: str | None = None) -> dict:
    found = {"authorId": author, "ruleId": rule, "userId": donor}
    return {k: v for k, v in found.items() if v is not None}


def checkout_session(
    pi: str, *, amount: int = 500, payment_status: str = "paid", meta: dict | None = None
) -> dict[str, Any]:
    return {
        "id": new_id("cs"),
        "object": "checkout.session",
        "amount_total": amount,
        "currency": "usd",
        "created": BASE_TIME - 60,
        "metadata": meta or {},
        "mode": "payment",
        "payment_intent": pi,
        "payment_status": payment_status,
        "status": "complete",
    }


def payment_intent(
    pi: str,
    *,
    amount: int = 500,
    status: str = "succeeded",
    meta: dict | None = None,
    charge: str | None = None,
) -> dict[str, Any]:
    return {
        "id": pi,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount if status == "succeeded" else 0,
        "currency": "usd",
        "created": BASE_TIME - 60,
        "latest_charge": charge,
        "metadata": meta or {},
        "status": status,
    }


def charge(
    pi: str, charge_id: str, *, amount: int = 500, refunded: int = 0, meta: dict | None = None
) -> dict[str, Any]:
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": refunded,
        "currency": "usd",
        "created": BASE_TIME - 50,
        "metadata": meta or {},
        "paid": True,
        "payment_intent": pi,
        "refunded": refunded >= amount,
        "status": "succeeded",
    }


def dispute(
    pi: str | None, charge_id: str, *, status: str = "needs_response", amount: int = 500
) -> dict[str, Any]:
    return {
        "id": new_id("dp"),
        "object": "dispute",
        "amount": amount,
        "charge": charge_id,
        "currency": "usd",
        "created": BASE_TIME + 1000,
        "metadata": {},
        "payment_intent": pi,
        "reason": "fraudulent",
        "status": status,
    }


async def deliver(
    client: httpx.AsyncClient,
    evt: dict[str, Any],
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
) -> httpx.Response:
    body = body_of(evt)
    headers = {"stripe-signature": sign(body, secret=secret, timestamp=timestamp)}
    headers["content-type"] = "application/json"
    return await client.post(WEBHOOK_PATH, content=body, headers=headers)


async def store(pool: asyncpg.Pool, evt: dict[str, Any]) -> None:
    """Put an event in the inbox as the webhook would, without HTTP (effect tests)."""
    verified = stripe_inbox.verify_webhook(
        body_of(evt), sign(body_of(evt)), secrets=(WEBHOOK_SECRET,), tolerance_s=300
    )
    assert verified.secret_fingerprint == fingerprint(WEBHOOK_SECRET)
    async with pool.acquire() as conn, conn.transaction():
        await stripe_inbox.store_event(conn, event=verified, request_id=None)


async def apply(pool: asyncpg.Pool, evt: dict[str, Any]) -> stripe_inbox.ProcessResult:
    """Store then process one event, as the webhook and its job would."""
    await store(pool, evt)
    return await stripe_inbox.process_stored_event(
        Database(pool), event_id=evt["id"], actor="test", lock_timeout_ms=2000
    )


async def donation(pool: asyncpg.Pool, pi: str) -> dict[str, Any] | None:
    row = await pool.fetchrow("SELECT * FROM donations WHERE payment_intent_id = $1", pi)
    return dict(row) if row else None


async def kept(pool: asyncpg.Pool, pi: str) -> int:
    value = await pool.fetchval(
        "SELECT kept_cents FROM donations_kept WHERE payment_intent_id = $1", pi
    )
    return int(value)
