"""Donations from Stripe events: what each event says about one payment, merged into its row.

A Checkout Session, a PaymentIntent, a charge and a dispute all point to one PaymentIntent,
which identifies the donation. Each event contributes *facts* (paid, pending, failed, the
cumulative refunded amount, the dispute's state, the amount, the metadata ids), and the
database merges them with earliest / latest / maximum rules and derives `status` from them
(migrations/0003_stripe.sql). So the row does not depend on the order events arrive in, nor
on how often one is applied. docs/stripe.md lists the events and the precedence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.errors import StripeEventUnmapped
from app.sql import queries

MAX_REF_LENGTH = 200

# Dispute statuses that end with the money returned to the merchant.
DISPUTE_WON = frozenset({"won", "warning_closed"})


@dataclass(frozen=True)
class DonationFacts:
    """What one event says about one payment; None means "this event does not say"."""

    payment_intent_id: str | None
    event_at: datetime
    object_created_at: datetime | None = None
    author_ref: str | None = None
    rule_ref: str | None = None
    donor_ref: str | None = None
    amount_cents: int | None = None
    currency: str | None = None
    paid: bool = False
    pending: bool = False
    failed: bool = False
    refunded_cents: int | None = None
    charge_id: str | None = None
    checkout_session_id: str | None = None
    dispute_id: str | None = None
    dispute_status: str | None = None
    dispute_amount_cents: int | None = None


@dataclass(frozen=True)
class Ignored:
    """An event stored but without effect on donations, and why."""

    reason: str


@dataclass(frozen=True)
class DonationChange:
    """The donation row after an event; `changed` is False when the event added nothing."""

    payment_intent_id: str
    donation_id: str | None
    status: str | None
    changed: bool
    inserted: bool


# --- reading Stripe objects -------------------------------------------------------------


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def _object_id(value: Any) -> str | None:
    """An id given as a string or as an expanded object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _cents(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _currency(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and value else None


def _ref(metadata: Any, key: str) -> str | None:
    """A metadata id, trimmed; blank or oversized values count as absent."""
    if not isinstance(metadata, Mapping):
        return None
    value = metadata.get(key)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if value and len(value) <= MAX_REF_LENGTH else None


def _metadata_refs(obj: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(author, rule, donor) ids from the object's metadata."""
    metadata = obj.get("metadata")
    return _ref(metadata, "authorId"), _ref(metadata, "ruleId"), _ref(metadata, "userId")


# --- one reader per kind of object ----------------------------------------------------------


def _from_checkout_session(event_type: str, obj: Mapping[str, Any], at: datetime) -> Any:
    payment_intent = _object_id(obj.get("payment_intent"))
    if payment_intent is None:
        return Ignored("checkout session without a payment intent (not a one-off payment)")
    payment_status = obj.get("payment_status")
    if event_type == "checkout.session.completed" and payment_status == "no_payment_required":
        return Ignored("checkout session that required no payment")
    paid = event_type == "checkout.session.async_payment_succeeded" or (
        event_type == "checkout.session.completed" and payment_status == "paid"
    )
    failed = event_type == "checkout.session.async_payment_failed"
    author, rule, donor = _metadata_refs(obj)
    return DonationFacts(
        payment_intent_id=payment_intent,
        event_at=at,
        object_created_at=_timestamp(obj.get("created")),
        amount_cents=_cents(obj.get("amount_total")),
        currency=_currency(obj.get("currency")),
        paid=paid,
        failed=failed,
        pending=not paid and not failed,
        checkout_session_id=_object_id(obj.get("id")),
        author_ref=author,
        rule_ref=rule,
        donor_ref=donor,
    )


def _from_payment_intent(event_type: str, obj: Mapping[str, Any], at: datetime) -> Any:
    paid = event_type == "payment_intent.succeeded"
    failed = event_type in ("payment_intent.payment_failed", "payment_intent.canceled")
    amount = _cents(obj.get("amount_received")) if paid else None
    author, rule, donor = _metadata_refs(obj)
    return DonationFacts(
        payment_intent_id=_object_id(obj.get("id")),
        event_at=at,
        object_created_at=_timestamp(obj.get("created")),
        amount_cents=amount or _cents(obj.get("amount")),
        currency=_currency(obj.get("currency")),
        paid=paid,
        failed=failed,
        pending=not paid and not failed,
        charge_id=_object_id(obj.get("latest_charge")) if paid else None,
        author_ref=author,
        rule_ref=rule,
        donor_ref=donor,
    )


def _from_charge(event_type: str, obj: Mapping[str, Any], at: datetime) -> Any:
    payment_intent = _object_id(obj.get("payment_intent"))
    if payment_intent is None:
        return Ignored("charge without a payment intent (not made through Checkout)")
    refunded = _cents(obj.get("amount_refunded")) if event_type == "charge.refunded" else None
    failed = event_type == "charge.failed"
    author, rule, donor = _metadata_refs(obj)
    return DonationFacts(
        payment_intent_id=payment_intent,
        event_at=at,
        object_created_at=_timestamp(obj.get("created")),
        amount_cents=_cents(obj.get("amount")),
        currency=_currency(obj.get("currency")),
        # Only a paid charge can be refunded, so a refund is also evidence of the payment.
        paid=not failed and obj.get("paid") is not False,
        failed=failed,
        refunded_cents=refunded,
        # Only the paid charge names the donation: a PaymentIntent may have failed ones too.
        charge_id=None if failed else _object_id(obj.get("id")),
        author_ref=author,
        rule_ref=rule,
        donor_ref=donor,
    )


def dispute_state(stripe_status: Any) -> str:
    """Stripe's many dispute statuses reduced to open, won or lost."""
    if stripe_status == "lost":
        return "lost"
    if stripe_status in DISPUTE_WON:
        return "won"
    return "open"


def _from_dispute(event_type: str, obj: Mapping[str, Any], at: datetime) -> Any:
    # A disputed charge was paid; its metadata lives on the charge, not the dispute.
    return DonationFacts(
        payment_intent_id=_object_id(obj.get("payment_intent")),
        event_at=at,
        paid=True,
        charge_id=_object_id(obj.get("charge")),
        dispute_id=_object_id(obj.get("id")),
        dispute_status=dispute_state(obj.get("status")),
        dispute_amount_cents=_cents(obj.get("amount")),
        currency=None,
    )


Reader = Callable[[str, Mapping[str, Any], datetime], Any]

READERS: dict[str, Reader] = {
    "checkout.session.completed": _from_checkout_session,
    "checkout.session.async_payment_succeeded": _from_checkout_session,
    "checkout.session.async_payment_failed": _from_checkout_session,
    "payment_intent.succeeded": _from_payment_intent,
    "payment_intent.payment_failed": _from_payment_intent,
    "payment_intent.processing": _from_payment_intent,
    "payment_intent.canceled": _from_payment_intent,
    "charge.succeeded": _from_charge,
    "charge.failed": _from_charge,
    "charge.refunded": _from_charge,
    "charge.dispute.created": _from_dispute,
    "charge.dispute.updated": _from_dispute,
    "charge.dispute.funds_withdrawn": _from_dispute,
    "charge.dispute.funds_reinstated": _from_dispute,
    "charge.dispute.closed": _from_dispute,
}

HANDLED_TYPES = frozenset(READERS)


def facts_from_event(event: Mapping[str, Any]) -> DonationFacts | Ignored:
    """The facts an event carries, or why it has none. Pure: no database, no clock."""
    event_type = event.get("type")
    reader = READERS.get(event_type) if isinstance(event_type, str) else None
    if reader is None:
        return Ignored(f"event type {event_type!r} has no effect on donations")
    at = _timestamp(event.get("created"))
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if at is None or not isinstance(obj, Mapping):
        return Ignored("event without a creation time or a data object")
    assert isinstance(event_type, str)
    return reader(event_type, obj, at)


# --- the database -----------------------------------------------------------------------


async def payment_intent_for_charge(conn: asyncpg.Connection, *, charge_id: str) -> str | None:
    """The PaymentIntent of a charge already seen (older disputes name only the charge)."""
    found = await queries.stripe_payment_intent_for_charge(conn, charge_id=charge_id)
    return str(found) if found is not None else None


async def resolve_payment_intent(conn: asyncpg.Connection, *, facts: DonationFacts) -> str:
    """The PaymentIntent the facts belong to; a dispute naming an unseen charge cannot wait."""
    if facts.payment_intent_id:
        return facts.payment_intent_id
    if facts.charge_id:
        found = await payment_intent_for_charge(conn, charge_id=facts.charge_id)
        if found:
            return found
    raise StripeEventUnmapped(
        f"no payment intent for charge {facts.charge_id!r} yet; the event is retried "
        "until the charge's own events arrive"
    )


async def apply_facts(conn: asyncpg.Connection, *, facts: DonationFacts) -> DonationChange:
    """Merge the facts into the payment's donation row (created when missing)."""
    payment_intent = await resolve_payment_intent(conn, facts=facts)
    row = await queries.stripe_merge_donation_facts(
        conn,
        payment_intent_id=payment_intent,
        event_at=facts.event_at,
        created_at=facts.object_created_at or facts.event_at,
        author_ref=facts.author_ref,
        rule_ref=facts.rule_ref,
        donor_ref=facts.donor_ref,
        amount_cents=facts.amount_cents,
        currency=facts.currency,
        paid=facts.paid,
        pending=facts.pending,
        failed=facts.failed,
        refunded_cents=facts.refunded_cents,
        charge_id=facts.charge_id,
        checkout_session_id=facts.checkout_session_id,
        dispute_id=facts.dispute_id,
        dispute_status=facts.dispute_status,
        dispute_amount_cents=facts.dispute_amount_cents,
    )
    if row is None:
        current = await queries.stripe_donation_by_payment_intent(
            conn, payment_intent_id=payment_intent
        )
        return DonationChange(
            payment_intent_id=payment_intent,
            donation_id=current["id"] if current else None,
            status=current["status"] if current else None,
            changed=False,
            inserted=False,
        )
    return DonationChange(
        payment_intent_id=payment_intent,
        donation_id=row["id"],
        status=row["status"],
        changed=True,
        inserted=bool(row["inserted"]),
    )
