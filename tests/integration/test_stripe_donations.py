"""Stripe events into donations: every handled type, and the same row whatever the order."""

from __future__ import annotations

import itertools
import random

import asyncpg
import pytest

from app import donations
from tests.factories import create_rule, create_user
from tests.stripe_helpers import (
    BASE_TIME,
    apply,
    charge,
    checkout_session,
    dispute,
    donation,
    event,
    kept,
    metadata,
    new_id,
    payment_intent,
)

FACT_COLUMNS = (
    "status",
    "amount_cents",
    "refunded_cents",
    "currency",
    "author_id",
    "rule_id",
    "donor_user_id",
    "author_ref",
    "rule_ref",
    "donor_ref",
    "charge_id",
    "paid_at",
    "pending_at",
    "failed_at",
    "dispute_status",
    "dispute_amount_cents",
    "created_at",
    "last_event_at",
)


@pytest.fixture
async def people(pool: asyncpg.Pool) -> dict[str, str]:
    author = await create_user(pool)
    donor = await create_user(pool)
    rule = await create_rule(pool, author_id=author)
    return {"author": author, "donor": donor, "rule": rule}


def meta_of(people: dict[str, str]) -> dict:
    return metadata(people["author"], people["rule"], people["donor"])


# --- each handled type ------------------------------------------------------------------


async def test_checkout_completed_paid_creates_a_succeeded_donation(
    pool: asyncpg.Pool, people: dict[str, str]
) -> None:
    pi = new_id("pi")
    result = await apply(
        pool, event("checkout.session.completed", checkout_session(pi, meta=meta_of(people)))
    )
    assert result.outcome == "applied" and result.changed and result.status == "succeeded"
    row = await donation(pool, pi)
    assert row is not None
    assert (row["author_id"], row["rule_id"], row["donor_user_id"]) == (
        people["author"],
        people["rule"],
        people["donor"],
    )
    assert (row["amount_cents"], row["currency"], row["status"]) == (500, "usd", "succeeded")
    assert row["created_at"].timestamp() == BASE_TIME - 60  # when the payment was made
    assert await kept(pool, pi) == 500


async def test_async_checkout_is_pending_then_succeeds_or_fails(pool: asyncpg.Pool) -> None:
    ok, bad = new_id("pi"), new_id("pi")
    for pi in (ok, bad):
        pending = checkout_session(pi, payment_status="unpaid")
        await apply(pool, event("checkout.session.completed", pending, at=1))
        assert (await donation(pool, pi) or {})["status"] == "pending"
        assert await kept(pool, pi) == 0
    await apply(pool, event("checkout.session.async_payment_succeeded", checkout_session(ok), at=9))
    failed = checkout_session(bad, payment_status="unpaid")
    await apply(pool, event("checkout.session.async_payment_failed", failed, at=9))
    assert (await donation(pool, ok) or {})["status"] == "succeeded"
    assert (await donation(pool, bad) or {})["status"] == "failed"
    assert (await kept(pool, ok), await kept(pool, bad)) == (500, 0)


async def test_payment_intent_succeeded_and_failed(pool: asyncpg.Pool) -> None:
    ok, bad = new_id("pi"), new_id("pi")
    await apply(pool, event("payment_intent.succeeded", payment_intent(ok, amount=1234)))
    failing = payment_intent(bad, status="requires_payment_method")
    await apply(pool, event("payment_intent.payment_failed", failing))
    assert (await donation(pool, ok) or {})["amount_cents"] == 1234
    assert (await donation(pool, ok) or {})["status"] == "succeeded"
    assert (await donation(pool, bad) or {})["status"] == "failed"


async def test_failed_payment_retried_successfully_is_succeeded(pool: asyncpg.Pool) -> None:
    pi = new_id("pi")
    failing = payment_intent(pi, status="requires_payment_method")
    await apply(pool, event("payment_intent.succeeded", payment_intent(pi), at=20))
    await apply(pool, event("payment_intent.payment_failed", failing, at=10))
    assert (await donation(pool, pi) or {})["status"] == "succeeded"


async def test_full_and_partial_refunds(pool: asyncpg.Pool) -> None:
    full, part = new_id("pi"), new_id("pi")
    for pi in (full, part):
        await apply(pool, event("payment_intent.succeeded", payment_intent(pi, amount=1000)))
    await apply(
        pool, event("charge.refunded", charge(full, new_id("ch"), amount=1000, refunded=1000), at=5)
    )
    await apply(
        pool, event("charge.refunded", charge(part, new_id("ch"), amount=1000, refunded=300), at=5)
    )
    assert (await donation(pool, full) or {})["status"] == "refunded"
    partial = await donation(pool, part) or {}
    assert (partial["status"], partial["refunded_cents"]) == ("partially_refunded", 300)
    assert (await kept(pool, full), await kept(pool, part)) == (0, 700)


async def test_partial_refunds_sum_correctly_in_any_order(pool: asyncpg.Pool) -> None:
    """charge.amount_refunded is cumulative: 200, then 500, then 1000 of 1000."""
    pi, ch = new_id("pi"), new_id("ch")
    refunds = [
        event("charge.refunded", charge(pi, ch, amount=1000, refunded=total), at=at)
        for at, total in ((10, 200), (20, 500), (30, 700))
    ]
    await apply(pool, refunds[2])
    await apply(pool, refunds[0])
    row = await donation(pool, pi) or {}
    assert (row["refunded_cents"], row["status"]) == (700, "partially_refunded")
    await apply(pool, refunds[1])
    await apply(pool, event("payment_intent.succeeded", payment_intent(pi, amount=1000), at=1))
    row = await donation(pool, pi) or {}
    assert (row["refunded_cents"], row["status"]) == (700, "partially_refunded")
    assert await kept(pool, pi) == 300
    last = event("charge.refunded", charge(pi, ch, amount=1000, refunded=1000), at=40)
    await apply(pool, last)
    assert (await donation(pool, pi) or {})["status"] == "refunded"
    assert await kept(pool, pi) == 0


async def test_dispute_created_then_won_or_lost(pool: asyncpg.Pool) -> None:
    won, lost = new_id("pi"), new_id("pi")
    for pi in (won, lost):
        ch = new_id("ch")
        await apply(pool, event("payment_intent.succeeded", payment_intent(pi, charge=ch)))
        await apply(pool, event("charge.dispute.created", dispute(pi, ch), at=10))
        assert (await donation(pool, pi) or {})["status"] == "disputed"
        assert await kept(pool, pi) == 0
        outcome = "won" if pi == won else "lost"
        await apply(pool, event("charge.dispute.closed", dispute(pi, ch, status=outcome), at=20))
    assert (await donation(pool, won) or {})["status"] == "succeeded"
    assert (await donation(pool, lost) or {})["status"] == "lost"
    assert (await kept(pool, won), await kept(pool, lost)) == (500, 0)


async def test_dispute_naming_only_its_charge_maps_through_the_charge(
    pool: asyncpg.Pool,
) -> None:
    pi, ch = new_id("pi"), new_id("ch")
    await apply(pool, event("payment_intent.succeeded", payment_intent(pi, charge=ch)))
    result = await apply(pool, event("charge.dispute.created", dispute(None, ch), at=5))
    assert result.payment_intent_id == pi and result.status == "disputed"


async def test_unknown_and_unusable_events_are_stored_and_ignored(pool: asyncpg.Pool) -> None:
    unknown = event("customer.created", {"id": new_id("cus"), "object": "customer"})
    subscription = checkout_session(new_id("pi"))
    subscription["payment_intent"] = None
    for evt in (unknown, event("checkout.session.completed", subscription)):
        result = await apply(pool, evt)
        assert result.outcome == "ignored" and result.reason
        row = await pool.fetchrow("SELECT * FROM stripe_events WHERE id = $1", evt["id"])
        assert row["outcome"] == "ignored" and row["processed_at"] is not None
        assert row["note"] == result.reason
    assert await pool.fetchval("SELECT count(*) FROM donations") == 0
    audited = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'stripe.event_ignored'"
    )
    assert audited == 2


async def test_metadata_naming_missing_rows_keeps_the_raw_ids(pool: asyncpg.Pool) -> None:
    pi = new_id("pi")
    ghost = metadata("usr_missing", "rul_missing", "usr_missing_donor")
    await apply(pool, event("payment_intent.succeeded", payment_intent(pi, meta=ghost)))
    row = await donation(pool, pi) or {}
    assert (row["author_id"], row["rule_id"], row["donor_user_id"]) == (None, None, None)
    assert (row["author_ref"], row["rule_ref"], row["donor_ref"]) == (
        "usr_missing",
        "rul_missing",
        "usr_missing_donor",
    )
    assert row["status"] == "succeeded"
    # Once the author exists, the documented re-resolve statement links the row.
    await create_user(pool, id="usr_missing")
    await pool.execute("UPDATE donations SET author_ref = author_ref WHERE author_id IS NULL")
    assert (await donation(pool, pi) or {})["author_id"] == "usr_missing"


async def test_author_comes_from_the_rule_when_metadata_has_only_the_rule(
    pool: asyncpg.Pool, people: dict[str, str]
) -> None:
    pi = new_id("pi")
    await apply(
        pool,
        event("payment_intent.succeeded", payment_intent(pi, meta=metadata(None, people["rule"]))),
    )
    assert (await donation(pool, pi) or {})["author_id"] == people["author"]


async def test_deleting_the_author_or_rule_keeps_the_donation(
    pool: asyncpg.Pool, people: dict[str, str]
) -> None:
    pi = new_id("pi")
    await apply(pool, event("payment_intent.succeeded", payment_intent(pi, meta=meta_of(people))))
    await pool.execute("DELETE FROM rules WHERE id = $1", people["rule"])
    await pool.execute("DELETE FROM users WHERE id = $1", people["donor"])
    row = await donation(pool, pi) or {}
    assert (row["rule_id"], row["donor_user_id"], row["author_id"]) == (
        None,
        None,
        people["author"],
    )
    assert row["status"] == "succeeded"


async def test_an_event_adding_nothing_does_not_touch_the_row(pool: asyncpg.Pool) -> None:
    pi = new_id("pi")
    first = event("payment_intent.succeeded", payment_intent(pi), at=5)
    await apply(pool, first)
    before = await donation(pool, pi) or {}
    same_again = event("payment_intent.succeeded", payment_intent(pi), at=5)
    result = await apply(pool, same_again)
    assert result.outcome == "applied" and not result.changed
    assert (await donation(pool, pi) or {})["updated_at"] == before["updated_at"]


# --- order independence -----------------------------------------------------------------


async def test_refund_before_payment_ends_refunded(pool: asyncpg.Pool) -> None:
    pi, ch = new_id("pi"), new_id("ch")
    await apply(pool, event("charge.refunded", charge(pi, ch, refunded=500), at=30))
    assert (await donation(pool, pi) or {})["status"] == "refunded"
    await apply(pool, event("payment_intent.succeeded", payment_intent(pi), at=2))
    await apply(pool, event("checkout.session.completed", checkout_session(pi), at=1))
    row = await donation(pool, pi) or {}
    assert (row["status"], row["refunded_cents"], row["amount_cents"]) == ("refunded", 500, 500)
    assert await kept(pool, pi) == 0


async def test_dispute_lost_after_refund_is_lost(pool: asyncpg.Pool) -> None:
    pi, ch = new_id("pi"), new_id("ch")
    await apply(pool, event("payment_intent.succeeded", payment_intent(pi, amount=1000), at=1))
    await apply(pool, event("charge.refunded", charge(pi, ch, amount=1000, refunded=400), at=5))
    lost = dispute(pi, ch, status="lost", amount=600)
    await apply(pool, event("charge.dispute.closed", lost, at=50))
    await apply(pool, event("charge.dispute.created", dispute(pi, ch, amount=600), at=40))
    late = event("payment_intent.succeeded", payment_intent(pi, amount=1000), at=3)
    await apply(pool, late)
    row = await donation(pool, pi) or {}
    assert (row["status"], row["refunded_cents"]) == ("lost", 400)
    assert await kept(pool, pi) == 0


async def test_late_success_never_overwrites_a_refund_or_a_lost_dispute(
    pool: asyncpg.Pool,
) -> None:
    refunded, lost = new_id("pi"), new_id("pi")
    await apply(pool, event("charge.refunded", charge(refunded, new_id("ch"), refunded=500), at=9))
    ch = new_id("ch")
    await apply(pool, event("charge.dispute.closed", dispute(lost, ch, status="lost"), at=9))
    for pi in (refunded, lost):
        await apply(pool, event("payment_intent.succeeded", payment_intent(pi), at=99))
        await apply(pool, event("checkout.session.completed", checkout_session(pi), at=98))
    assert (await donation(pool, refunded) or {})["status"] == "refunded"
    assert (await donation(pool, lost) or {})["status"] == "lost"


def lifecycle(author: str) -> list[dict]:
    """One payment's whole life: checkout, success, two partial refunds, a lost dispute."""
    pi, ch = "pi_lifecycle", "ch_lifecycle"
    meta = metadata(author)
    return [
        event(
            "checkout.session.completed",
            checkout_session(pi, amount=1000, payment_status="unpaid", meta=meta),
            at=1,
        ),
        event(
            "checkout.session.async_payment_succeeded",
            checkout_session(pi, amount=1000, meta=meta),
            at=2,
        ),
        event(
            "payment_intent.succeeded", payment_intent(pi, amount=1000, meta=meta, charge=ch), at=2
        ),
        event("charge.refunded", charge(pi, ch, amount=1000, refunded=100, meta=meta), at=10),
        event("charge.refunded", charge(pi, ch, amount=1000, refunded=250, meta=meta), at=11),
        event("charge.dispute.created", dispute(pi, ch, amount=750), at=20),
        event("charge.dispute.closed", dispute(pi, ch, status="lost", amount=750), at=30),
    ]


async def test_every_order_of_a_lifecycle_gives_the_same_row(
    pool: asyncpg.Pool, people: dict[str, str]
) -> None:
    """Applying the events in many orders (with repeats) always yields one identical row."""
    base = lifecycle(people["author"])
    orders = [list(p) for p in itertools.islice(itertools.permutations(base), 0, 5040, 97)]
    rng = random.Random(11)
    orders += [rng.sample(base, len(base)) + rng.sample(base, 3) for _ in range(10)]
    seen = set()
    for order in orders:
        await pool.execute("DELETE FROM donations; DELETE FROM stripe_events")
        for evt in order:
            await apply(pool, evt)
        row = await donation(pool, "pi_lifecycle") or {}
        seen.add(tuple(row[c] for c in FACT_COLUMNS))
    assert len(seen) == 1
    [final] = seen
    assert dict(zip(FACT_COLUMNS, final, strict=True))["status"] == "lost"
    assert dict(zip(FACT_COLUMNS, final, strict=True))["refunded_cents"] == 250
    assert await kept(pool, "pi_lifecycle") == 0


def test_facts_from_event_is_pure_and_reads_metadata() -> None:
    evt = event(
        "checkout.session.completed",
        checkout_session("pi_1", meta={"authorId": " usr_1 ", "ruleId": "", "userId": 42}),
    )
    facts = donations.facts_from_event(evt)
    assert isinstance(facts, donations.DonationFacts)
    assert (facts.author_ref, facts.rule_ref, facts.donor_ref) == ("usr_1", None, None)
    assert facts.paid and not facts.pending
    assert donations.dispute_state("warning_closed") == "won"
    assert donations.dispute_state("under_review") == "open"
    broken = donations.facts_from_event({"type": "charge.refunded", "data": {}})
    assert isinstance(broken, donations.Ignored)
