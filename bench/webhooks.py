"""Stripe webhook figures: signed deliveries per second through the service.

Deliveries are built and signed here (stripe-python's own algorithm, the service's secret), all
distinct events, so each one is verified, stored in the inbox and queued for processing (the
bench service runs no worker: processing is not part of the delivery figure).
"""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import stripe

from bench.harness import WEBHOOK_SECRET, Service, query_value, run_wrk

# A donation as Stripe reports it: the session, the payment, the charge; now and then a refund.
KINDS = ("checkout.session.completed", "payment_intent.succeeded", "charge.succeeded")


def _object(kind: str, n: int, rules: int) -> dict[str, Any]:
    pi = f"pi_bench{n:09d}"
    meta = {"authorId": f"usr_{1 + n % 1000}", "ruleId": f"rul_{1 + n % rules}"}
    if kind == "checkout.session.completed":
        return {
            "id": f"cs_bench{n:09d}",
            "object": "checkout.session",
            "amount_total": 500,
            "currency": "usd",
            "metadata": meta,
            "mode": "payment",
            "payment_intent": pi,
            "payment_status": "paid",
            "status": "complete",
        }
    if kind == "payment_intent.succeeded":
        return {
            "id": pi,
            "object": "payment_intent",
            "amount": 500,
            "amount_received": 500,
            "currency": "usd",
            "metadata": meta,
            "status": "succeeded",
        }
    return {
        "id": f"ch_bench{n:09d}",
        "object": "charge",
        "amount": 500,
        "amount_captured": 500,
        "amount_refunded": 0,
        "currency": "usd",
        "metadata": meta,
        "paid": True,
        "payment_intent": pi,
        "refunded": False,
        "status": "succeeded",
    }


def signed_deliveries(path: Path, *, count: int, rules: int) -> None:
    """Write `count` distinct signed events, one `<signature>\\t<body>` line each."""
    run = uuid.uuid4().hex[:8]
    created = int(time.time())
    with path.open("w") as out:
        for n, kind in zip(range(count), itertools.cycle(KINDS), strict=False):
            event = {
                "id": f"evt_bench{run}{n:09d}",
                "object": "event",
                "api_version": "2025-10-29.clover",
                "created": created,
                "data": {"object": _object(kind, n // len(KINDS), rules)},
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": kind,
            }
            body = orjson.dumps(event).decode()
            signature = stripe.WebhookSignature.generate_signature_header(body, WEBHOOK_SECRET)
            out.write(f"{signature}\t{body}\n")


def count_inbox(db_url: str) -> int:
    return int(query_value(db_url, "SELECT count(*) FROM stripe_events"))


def deliveries(
    svc: Service, db_url: str, *, work_dir: Path, rules: int, connections: int, seconds: int
) -> dict[str, float]:
    """Deliveries/s answered 200, and how many distinct events reached the inbox per second."""
    path = work_dir / "deliveries.tsv"
    # Enough distinct events for a fast run; the signatures stay inside Stripe's 5-minute
    # tolerance because they are made right before the run.
    signed_deliveries(path, count=max(2000, 2500 * seconds), rules=rules)
    before = count_inbox(db_url)
    figures = run_wrk(
        svc.url,
        script="webhook.lua",
        connections=connections,
        seconds=seconds,
        env={"BENCH_DELIVERIES": str(path)},
    )
    stored = count_inbox(db_url) - before
    path.unlink(missing_ok=True)
    duration = figures["duration_s"]
    figures["deliveries_per_s"] = (figures["requests"] - figures["errors_status"]) / duration
    figures["events_stored_per_s"] = stored / duration
    return figures
