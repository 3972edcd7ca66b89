"""The webhook's signature check: the raw body against every configured secret (rotation),
with the most telling reason when none verifies."""

from __future__ import annotations

import orjson
import stripe

from app.credentials import fingerprint
from app.errors import ConfigurationError, StripeEventInvalid, StripeSignatureInvalid
from app.stripe_inbox.events import VerifiedEvent, key_fields

# Why a signature was refused, most telling first: with several secrets (rotation), the
# reason kept is the most telling one any secret gave.
REJECTION_MESSAGES = {
    "timestamp_outside_tolerance": "the Stripe-Signature timestamp is older than the "
    "{tolerance} s tolerance (a replayed or long-delayed delivery)",
    "signature_mismatch": "the Stripe-Signature header does not match the body for any "
    "configured webhook secret",
    "malformed_signature": "the Stripe-Signature header is malformed (expected t=...,v1=...)",
    "missing_signature": "the Stripe-Signature header is missing",
}


REASON_RANK = list(REJECTION_MESSAGES)


def _rejection_reason(exc: stripe.SignatureVerificationError) -> str:
    text = str(exc)
    if "Timestamp outside the tolerance" in text:
        return "timestamp_outside_tolerance"
    if "matching the expected signature" in text:
        return "signature_mismatch"
    if "No Stripe-Signature header" in text:
        return "missing_signature"
    return "malformed_signature"


def _most_telling(reasons: list[str]) -> str:
    return min(reasons, key=REASON_RANK.index) if reasons else "signature_mismatch"


def rejection(reason: str, *, tolerance_s: int) -> StripeSignatureInvalid:
    message = REJECTION_MESSAGES[reason].format(tolerance=tolerance_s)
    return StripeSignatureInvalid(message, details=[{"reason": reason}])


def _event_from_body(body: bytes, secret: str) -> VerifiedEvent:
    """The stored form of a verified body: the JSON exactly as sent, plus its key fields."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise StripeEventInvalid(f"the signed body is not valid JSON: {exc.msg}") from exc
    event_id, event_type, created_at, livemode = key_fields(payload)
    return VerifiedEvent(
        id=event_id,
        type=event_type,
        created=created_at,
        livemode=livemode,
        payload=payload,
        secret_fingerprint=fingerprint(secret),
    )


def verify_webhook(
    body: bytes, signature: str | None, *, secrets: tuple[str, ...], tolerance_s: int
) -> VerifiedEvent:
    """Check the signature on the raw body against each configured secret in turn.

    Raises `StripeSignatureInvalid` (with a reason in `details`) when no secret verifies it,
    `StripeEventInvalid` when it verifies but is not an event."""
    if not secrets:
        raise ConfigurationError("STRIPE_WEBHOOK_SECRET is not set: webhooks cannot be verified")
    if not signature:
        raise rejection("missing_signature", tolerance_s=tolerance_s)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StripeEventInvalid("the body is not UTF-8 text") from exc
    reasons: list[str] = []
    for secret in secrets:
        try:
            stripe.Webhook.construct_event(body, signature, secret, tolerance=tolerance_s)
        except stripe.SignatureVerificationError as exc:
            reasons.append(_rejection_reason(exc))
            continue
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            # Only parsing is left once the signature verified: a signed non-event.
            raise StripeEventInvalid(f"the signed body is not a Stripe event: {exc}") from exc
        return _event_from_body(body, secret)
    raise rejection(_most_telling(reasons), tolerance_s=tolerance_s)
