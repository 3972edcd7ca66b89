"""POST /ingest/stripe/webhook: verification on the raw body, the durable inbox, redeliveries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import APP_HEADERS, WEBHOOK_SECRET, RunningServer, make_settings
from tests.integration.test_http_foundation import assert_error
from tests.stripe_helpers import (
    WEBHOOK_PATH,
    body_of,
    charge,
    checkout_session,
    deliver,
    event,
    metadata,
    new_id,
    payment_intent,
    sign,
)

OLD_SECRET = "whsec_previous_secret"


def paid_event() -> dict:
    return event("payment_intent.succeeded", payment_intent(new_id("pi")))


async def inbox_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM stripe_events"))


async def process_jobs(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'process_stripe_event'"
        )
    )


async def rejections(pool: asyncpg.Pool) -> list[dict]:
    rows = await pool.fetch(
        "SELECT actor, details FROM audit_log WHERE action = 'stripe.webhook_rejected' ORDER BY id"
    )
    return [dict(r) for r in rows]


async def test_valid_signature_is_stored_and_answered_200(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    evt = paid_event()
    response = await deliver(http, evt)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "eventId": evt["id"], "duplicate": False}
    row = await pool.fetchrow("SELECT * FROM stripe_events WHERE id = $1", evt["id"])
    assert row["type"] == "payment_intent.succeeded"
    assert row["payload"] == evt
    assert row["processed_at"] is None and row["created"].timestamp() == evt["created"]
    audit = await pool.fetchrow(
        "SELECT actor, subject, details FROM audit_log WHERE action = 'stripe.event_received'"
    )
    assert audit["subject"] == f"stripe_event:{evt['id']}"
    assert audit["actor"].startswith("stripe:") and WEBHOOK_SECRET not in str(dict(audit))
    job = await pool.fetchrow(
        "SELECT task_name, args, queueing_lock FROM procrastinate_jobs WHERE status = 'todo'"
    )
    assert job["task_name"] == "process_stripe_event"
    assert job["queueing_lock"] == f"stripe_event:{evt['id']}"


async def test_no_app_token_needed_but_browsers_are_refused(http: httpx.AsyncClient) -> None:
    evt = paid_event()
    body = body_of(evt)
    headers = {"stripe-signature": sign(body), "origin": "https://evil.example"}
    refused = await http.post(WEBHOOK_PATH, content=body, headers=headers)
    assert_error(refused, 403, "browser_forbidden")
    with_token = await deliver(http, evt)  # x-app-token is neither needed nor looked at
    assert with_token.status_code == 200


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_secret", "signature_mismatch"),
        ("expired", "timestamp_outside_tolerance"),
        ("tampered", "signature_mismatch"),
        ("missing", "missing_signature"),
        ("malformed", "malformed_signature"),
    ],
)
async def test_bad_signatures_are_401_store_nothing_and_are_audited(
    http: httpx.AsyncClient, pool: asyncpg.Pool, case: str, reason: str
) -> None:
    evt = paid_event()
    body = body_of(evt)
    headers = {"content-type": "application/json", **APP_HEADERS}
    if case == "wrong_secret":
        headers["stripe-signature"] = sign(body, secret="whsec_not_ours")
    elif case == "expired":
        headers["stripe-signature"] = sign(body, timestamp=int(time.time()) - 301)
    elif case == "tampered":
        headers["stripe-signature"] = sign(body)
        evt["data"]["object"]["amount"] = 1
        body = body_of(evt)
    elif case == "malformed":
        headers["stripe-signature"] = "v1=abc"
    response = await http.post(WEBHOOK_PATH, content=body, headers=headers)
    error = assert_error(response, 401, "invalid_stripe_signature")
    assert error["details"] == [{"reason": reason}]
    assert await inbox_count(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM procrastinate_jobs") == 0
    [audit] = await rejections(pool)
    assert audit["details"]["reason"] == reason
    assert audit["actor"] == "stripe:unverified"
    assert WEBHOOK_SECRET not in orjson.dumps(audit["details"]).decode()


async def test_timestamp_just_inside_tolerance_is_accepted(http: httpx.AsyncClient) -> None:
    response = await deliver(http, paid_event(), timestamp=int(time.time()) - 290)
    assert response.status_code == 200


async def test_rotated_secrets_both_verify(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, pool: asyncpg.Pool
) -> None:
    settings = make_settings(db_url, stripe_webhook_secret=f"{WEBHOOK_SECRET}, {OLD_SECRET}")
    client = (await start_server(settings)).client
    old, new = paid_event(), paid_event()
    assert (await deliver(client, old, secret=OLD_SECRET)).status_code == 200
    assert (await deliver(client, new, secret=WEBHOOK_SECRET)).status_code == 200
    assert await inbox_count(pool) == 2
    actors = await pool.fetch(
        "SELECT DISTINCT actor FROM audit_log WHERE action = 'stripe.event_received'"
    )
    assert len(actors) == 2  # which secret verified each delivery, by fingerprint
    expired = await deliver(client, paid_event(), secret=OLD_SECRET, timestamp=1_000_000)
    assert assert_error(expired, 401, "invalid_stripe_signature")["details"] == [
        {"reason": "timestamp_outside_tolerance"}
    ]


async def test_signed_body_that_is_not_an_event_is_400(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    for body in (b"not json", b'{"hello": "world"}', b"[1, 2]"):
        response = await http.post(
            WEBHOOK_PATH, content=body, headers={"stripe-signature": sign(body)}
        )
        assert_error(response, 400, "invalid_stripe_event")
    assert await inbox_count(pool) == 0
    assert len(await rejections(pool)) == 3


async def test_body_over_one_mebibyte_is_413(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    evt = paid_event()
    evt["data"]["object"]["metadata"] = {"padding": "x" * (1024 * 1024)}
    response = await deliver(http, evt)
    assert_error(response, 413, "payload_too_large")
    assert await inbox_count(pool) == 0


async def test_redelivery_answers_200_and_stores_nothing_new(
    http: httpx.AsyncClient, pool: asyncpg.Pool, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    evt = paid_event()
    assert (await deliver(http, evt)).json()["duplicate"] is False
    again = await deliver(http, evt)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert await inbox_count(pool) == 1
    assert await process_jobs(pool) == 1
    await run_jobs()
    third = await deliver(http, evt)  # already processed: no new job either
    assert third.json()["duplicate"] is True
    assert await process_jobs(pool) == 1
    actions = await pool.fetch(
        "SELECT action FROM audit_log WHERE action LIKE 'stripe.%' ORDER BY id"
    )
    assert [a["action"] for a in actions] == [
        "stripe.event_received",
        "stripe.event_redelivered",
        "stripe.event_applied",
        "stripe.event_redelivered",
    ]


async def test_twenty_concurrent_deliveries_give_one_row_and_one_effect(
    http: httpx.AsyncClient, pool: asyncpg.Pool, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    pi, author = new_id("pi"), new_id("usr")
    evt = event(
        "checkout.session.completed", checkout_session(pi, amount=700, meta=metadata(author))
    )
    responses = await asyncio.gather(*(deliver(http, evt) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    assert await inbox_count(pool) == 1
    await run_jobs()
    # A redelivery racing the worker may queue a second job; it finds the event processed.
    await asyncio.gather(*(deliver(http, evt) for _ in range(5)))
    await run_jobs()
    rows = await pool.fetch("SELECT * FROM donations")
    assert len(rows) == 1
    assert (rows[0]["payment_intent_id"], rows[0]["amount_cents"]) == (pi, 700)
    assert rows[0]["status"] == "succeeded" and rows[0]["author_ref"] == author
    applied = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'stripe.event_applied'"
    )
    assert applied == 1
    received = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action IN "
        "('stripe.event_received', 'stripe.event_redelivered')"
    )
    assert received == 25
    event_row = await pool.fetchrow("SELECT * FROM stripe_events")
    assert event_row["outcome"] == "applied" and event_row["attempts"] == 1


async def test_shuffled_signed_deliveries_with_duplicates_end_in_the_right_rows(
    http: httpx.AsyncClient, pool: asyncpg.Pool, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    """As Stripe delivers: out of order, duplicated, concurrent; then read back with SQL."""
    import random

    author = new_id("usr")
    await pool.execute("INSERT INTO users (id, handle) VALUES ($1, 'author')", author)
    kept_pi, refunded_pi, lost_pi = new_id("pi"), new_id("pi"), new_id("pi")
    ch1, ch2 = new_id("ch"), new_id("ch")
    meta = metadata(author)
    events = [
        event("checkout.session.completed", checkout_session(kept_pi, meta=meta), at=1),
        event("payment_intent.succeeded", payment_intent(kept_pi, meta=meta), at=2),
        event("checkout.session.completed", checkout_session(refunded_pi, meta=meta), at=1),
        event("payment_intent.succeeded", payment_intent(refunded_pi, meta=meta), at=2),
        event("charge.refunded", charge(refunded_pi, ch1, refunded=200, meta=meta), at=10),
        event("charge.refunded", charge(refunded_pi, ch1, refunded=500, meta=meta), at=20),
        event("payment_intent.succeeded", payment_intent(lost_pi, meta=meta), at=2),
        event("charge.dispute.created", charge_dispute(lost_pi, ch2, "needs_response"), at=30),
        event("charge.dispute.closed", charge_dispute(lost_pi, ch2, "lost"), at=40),
        event("customer.created", {"id": new_id("cus"), "object": "customer"}, at=3),
    ]
    deliveries = events * 3
    random.Random(7).shuffle(deliveries)
    responses = await asyncio.gather(*(deliver(http, e) for e in deliveries))
    assert {r.status_code for r in responses} == {200}
    await run_jobs()
    rows = {
        r["payment_intent_id"]: (r["status"], r["amount_cents"], r["refunded_cents"], r["kept"])
        for r in await pool.fetch(
            "SELECT d.payment_intent_id, d.status, d.amount_cents, d.refunded_cents, "
            "k.kept_cents AS kept FROM donations d JOIN donations_kept k USING (id)"
        )
    }
    assert rows == {
        kept_pi: ("succeeded", 500, 0, 500),
        refunded_pi: ("refunded", 500, 500, 0),
        lost_pi: ("lost", 500, 0, 0),
    }
    outcomes = await pool.fetch("SELECT outcome, count(*) FROM stripe_events GROUP BY 1")
    assert {r["outcome"]: r["count"] for r in outcomes} == {"applied": 9, "ignored": 1}
    assert await pool.fetchval("SELECT count(*) FROM stripe_events WHERE processed_at IS NULL") == 0


def charge_dispute(pi: str, charge_id: str, status: str) -> dict:
    from tests.stripe_helpers import dispute

    return dispute(pi, charge_id, status=status)
