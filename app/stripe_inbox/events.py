"""The Stripe events the inbox holds: delivered to the webhook (signature verified) or listed
from Stripe's Events API by reconciliation, both checked for the same key fields."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from app.errors import StripeEventInvalid

# Stripe's ids and type names are a few dozen characters; a primary key cannot hold megabytes.
MAX_ID_LENGTH = 255


@dataclass(frozen=True)
class VerifiedEvent:
    """A Stripe event whose signature verified, as Stripe sent it."""

    id: str
    type: str
    created: datetime
    livemode: bool | None
    payload: dict[str, Any]
    secret_fingerprint: str
    source: ClassVar[str] = "webhook"

    @property
    def actor(self) -> str:
        """Audit actor: which configured secret verified it (useful while rotating)."""
        return f"stripe:{self.secret_fingerprint}"


@dataclass(frozen=True)
class RecoveredEvent:
    """A Stripe event listed from Stripe's Events API (authenticated by the secret key over
    TLS) because no webhook delivery brought it; `actor` is the reconciliation run's."""

    id: str
    type: str
    created: datetime
    livemode: bool | None
    payload: dict[str, Any]
    actor: str
    source: ClassVar[str] = "reconciliation"


InboxEvent = VerifiedEvent | RecoveredEvent


def recovered_event(payload: Any, *, actor: str) -> RecoveredEvent:
    """An event from Stripe's Events API, checked as a delivered one is."""
    event_id, event_type, created_at, livemode = key_fields(payload)
    return RecoveredEvent(
        id=event_id,
        type=event_type,
        created=created_at,
        livemode=livemode,
        payload=payload,
        actor=actor,
    )


def key_fields(payload: Any) -> tuple[str, str, datetime, bool | None]:
    """(id, type, created, livemode) of an event, or `StripeEventInvalid`."""
    event_id = payload.get("id") if isinstance(payload, dict) else None
    event_type = payload.get("type") if isinstance(payload, dict) else None
    created = payload.get("created") if isinstance(payload, dict) else None
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str)):
        raise StripeEventInvalid("the signed body is not a Stripe event (no id or type)")
    if isinstance(created, float) and created.is_integer():
        created = int(created)  # `1790000000.0` is the integer JSON Schema says it is
    if not isinstance(created, int) or isinstance(created, bool):
        raise StripeEventInvalid("the signed body is not a Stripe event (no created time)")
    if len(event_id) > MAX_ID_LENGTH or len(event_type) > MAX_ID_LENGTH:
        raise StripeEventInvalid(f"the event id and type are at most {MAX_ID_LENGTH} characters")
    try:
        created_at = datetime.fromtimestamp(created, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise StripeEventInvalid("the event's created time is out of range") from exc
    assert isinstance(payload, dict)
    livemode = payload.get("livemode")
    return event_id, event_type, created_at, livemode if isinstance(livemode, bool) else None
