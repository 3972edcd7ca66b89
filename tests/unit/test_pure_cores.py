"""The pure cores, without a database: the intake's per-event checks, the Stripe signature
check, and the reading of a Stripe event into donation facts."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from hashlib import sha256

import pytest

from app import donations
from app.client_ip import HASH_HEX_CHARS, IpHasher
from app.errors import ConfigurationError, StripeEventInvalid, StripeSignatureInvalid
from app.events import MAX_AGE, MAX_FUTURE, prepare_batch
from app.stripe_inbox import verify_webhook
from tests.stripe_helpers import (
    WEBHOOK_SECRET,
    body_of,
    charge,
    event,
    metadata,
    payment_intent,
    sign,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HASHER = IpHasher("unit-secret")
REQUEST_IP_HASH = HASHER.hash("192.0.2.1")


def prepare(events: list[object]):  # type: ignore[no-untyped-def]
    return prepare_batch(events, now=NOW, request_ip_hash=REQUEST_IP_HASH, hasher=HASHER)


def test_a_bad_event_rejects_only_itself_with_its_reason() -> None:
    batch = prepare(
        [
            {"type": "VIEW", "ruleId": "rul_1"},
            "not an object",
            {"type": "LIKE", "ruleId": "rul_1"},
            {"type": "COPY", "ruleId": "has space"},
            {"type": "SAVE", "ruleId": "rul_1", "userId": 7},
            {"type": "FORK", "ruleId": "rul_1", "idempotencyKey": ""},
            {"type": "VOTE", "ruleId": "rul_1", "ts": "2026-11-30 12:00:00Z"},
            {"type": "VIEW", "ruleId": "rul_1", "ip": "not-an-ip"},
            {"type": "VOTE", "ruleId": "rul_2", "userId": "usr_1"},
        ]
    )
    assert batch.rejected == [
        (1, "invalid_event"),
        (2, "unknown_type"),
        (3, "invalid_rule_id"),
        (4, "invalid_user_id"),
        (5, "invalid_idempotency_key"),
        (6, "invalid_ts"),
        (7, "invalid_ip"),
    ]
    assert batch.idx == [0, 8]
    assert batch.types == ["VIEW", "VOTE"]
    assert batch.user_ids == [None, "usr_1"]
    assert batch.received == 9


def test_the_accepted_age_and_clock_skew_are_the_bounds() -> None:
    def at(delta: timedelta) -> str:
        return (NOW + delta).isoformat().replace("+00:00", "Z")

    second = timedelta(seconds=1)
    batch = prepare(
        [
            {"type": "VIEW", "ruleId": "r", "ts": at(-MAX_AGE)},
            {"type": "VIEW", "ruleId": "r", "ts": at(-MAX_AGE - second)},
            {"type": "VIEW", "ruleId": "r", "ts": at(MAX_FUTURE)},
            {"type": "VIEW", "ruleId": "r", "ts": at(MAX_FUTURE + second)},
            {"type": "VIEW", "ruleId": "r", "ts": "2026-11-30T12:00:00"},  # no offset
        ]
    )
    assert batch.rejected == [(1, "ts_too_old"), (3, "ts_in_future"), (4, "invalid_ts")]
    assert batch.tss == [NOW - MAX_AGE, NOW + MAX_FUTURE]


def test_a_repeated_key_in_one_batch_counts_once_and_the_first_copy_wins() -> None:
    batch = prepare(
        [
            {"type": "VIEW", "ruleId": "first", "idempotencyKey": "k"},
            {"type": "VIEW", "ruleId": "second", "idempotencyKey": "k"},
            {"type": "VIEW", "ruleId": "third"},
        ]
    )
    assert batch.rule_ids == ["first", "third"]
    assert batch.duplicates == 1 and batch.rejected == []


def test_ips_are_hashed_never_kept_and_default_to_the_callers() -> None:
    batch = prepare(
        [
            {"type": "VIEW", "ruleId": "r"},
            {"type": "VIEW", "ruleId": "r", "ip": "2001:DB8::1"},
            {"type": "VIEW", "ruleId": "r", "ip": "2001:db8:0:0::1"},
        ]
    )
    default, given, same = batch.ip_hashes
    assert default == REQUEST_IP_HASH
    assert given == same != default  # one address, however it is written
    expected = hmac.new(b"unit-secret", b"2001:db8::1", sha256).hexdigest()[:HASH_HEX_CHARS]
    assert given == expected
    assert all("2001" not in h for h in batch.ip_hashes)


def test_a_webhook_verifies_against_any_configured_secret() -> None:
    evt = event("payment_intent.succeeded", payment_intent("pi_unit"))
    body = body_of(evt)
    verified = verify_webhook(
        body, sign(body), secrets=("whsec_old", WEBHOOK_SECRET), tolerance_s=10**9
    )
    assert (verified.id, verified.type, verified.payload) == (evt["id"], evt["type"], evt)


@pytest.mark.parametrize(
    ("header_of", "reason"),
    [
        (lambda body: None, "missing_signature"),
        (lambda body: sign(body, timestamp=1), "timestamp_outside_tolerance"),
        (lambda body: "garbage", "malformed_signature"),
        (lambda body: sign(body, secret="whsec_other"), "signature_mismatch"),
    ],
    ids=["missing", "replayed", "malformed", "other secret"],
)
def test_a_refused_signature_says_why(
    header_of: Callable[[bytes], str | None], reason: str
) -> None:
    body = body_of(event("charge.refunded", charge("pi_unit", "ch_unit")))
    with pytest.raises(StripeSignatureInvalid) as refused:
        verify_webhook(body, header_of(body), secrets=(WEBHOOK_SECRET,), tolerance_s=300)
    assert refused.value.details == [{"reason": reason}]


def test_a_signed_body_that_is_not_an_event_is_invalid_and_no_secret_is_a_configuration_fault() -> (
    None
):
    body = b'{"hello": "world"}'
    with pytest.raises(StripeEventInvalid):
        verify_webhook(body, sign(body), secrets=(WEBHOOK_SECRET,), tolerance_s=300)
    with pytest.raises(ConfigurationError):
        verify_webhook(body, sign(body), secrets=(), tolerance_s=300)


def test_a_paid_intent_is_read_into_its_facts() -> None:
    evt = event(
        "payment_intent.succeeded",
        payment_intent("pi_unit", amount=1200, meta=metadata("usr_a", "rul_b", "usr_c")),
    )
    facts = donations.facts_from_event(evt)
    assert isinstance(facts, donations.DonationFacts)
    assert (facts.payment_intent_id, facts.amount_cents, facts.currency, facts.paid) == (
        "pi_unit",
        1200,
        "usd",
        True,
    )
    assert (facts.author_ref, facts.rule_ref, facts.donor_ref) == ("usr_a", "rul_b", "usr_c")
    assert facts.event_at == datetime.fromtimestamp(evt["created"], UTC)


def test_a_refund_carries_the_refunded_amount_and_an_unknown_type_is_ignored() -> None:
    refund = donations.facts_from_event(
        event("charge.refunded", charge("pi_unit", "ch_unit", amount=500, refunded=200))
    )
    assert isinstance(refund, donations.DonationFacts)
    assert (refund.payment_intent_id, refund.refunded_cents, refund.charge_id) == (
        "pi_unit",
        200,
        "ch_unit",
    )
    ignored = donations.facts_from_event(event("customer.created", {"id": "cus_1"}))
    assert isinstance(ignored, donations.Ignored) and ignored.reason
