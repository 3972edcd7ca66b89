"""Reconciliation of the Stripe inbox with Stripe's Events API: no donation goes missing.

Stripe retries a webhook delivery for about three days; an endpoint that refuses deliveries
for longer (a wrong STRIPE_WEBHOOK_SECRET, a bad deploy, an outage) loses those events for
good. Stripe keeps every event for 30 days and lists them, so a periodic run lists the event
types the service handles, created since a stored watermark (minus an overlap), and stores
every one the inbox lacks exactly as a delivery would (`stripe_inbox.store_event`: the same
dedupe by event id, an audit row, `source = 'reconciliation'`). Normal processing then
applies it. A run that finds an event already stored changes nothing, so running twice, or
beside live deliveries of the same events, has one effect. docs/stripe.md has the details.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import stripe
from stripe.params import EventListParams, EventListParamsCreated

from app import audit, donations, stripe_inbox
from app.credentials import fingerprint
from app.db import Database
from app.errors import (
    BadRequest,
    ConfigurationError,
    IngestError,
    StripeApiKeyRejected,
    StripeApiRequestRefused,
    StripeApiUnavailable,
)
from app.settings import Settings
from app.sql import queries

logger = logging.getLogger("ingest.stripe.reconcile")

# Stripe keeps events for 30 days: nothing older can be listed.
RETENTION = timedelta(days=30)
PAGE_SIZE = 100  # the Events API's largest page
MAX_TYPES_PER_LIST = 20  # the Events API's limit on `types`
CADENCE = "every 10 minutes"  # jobs/stripe.py RECONCILE_CRON, in words for logs and config

OnRecovered = Callable[[list[str]], Awaitable[None]]


@dataclass(frozen=True)
class Window:
    """Stripe event times one run lists; `advances` when the run leaves no gap behind the
    watermark, so the watermark may move to `until`."""

    since: datetime
    until: datetime
    advances: bool


@dataclass
class ReconcileReport:
    """What one run listed and stored."""

    window: Window
    listed: int = 0
    recovered: list[str] = field(default_factory=list)
    watermark: datetime | None = None

    @property
    def already_stored(self) -> int:
        return self.listed - len(self.recovered)

    def as_json(self) -> dict[str, Any]:
        return {
            "since": self.window.since.isoformat(),
            "until": self.window.until.isoformat(),
            "listed": self.listed,
            "alreadyStored": self.already_stored,
            "recovered": self.recovered,
            "watermark": self.watermark.isoformat() if self.watermark else None,
        }


# --- configuration ---------------------------------------------------------------------


def enabled(settings: Settings) -> bool:
    return bool(settings.stripe_secret_key and settings.stripe_secret_key.get_secret_value())


def describe(settings: Settings) -> str:
    """One line for start-up logs and `ingest config`: on (and how) or off (and why)."""
    if not enabled(settings):
        return (
            "off: STRIPE_SECRET_KEY is not set, so Stripe events whose webhook delivery "
            "failed are not recovered"
        )
    return (
        f"on: {CADENCE}, events API at {_shown_base(settings)}, "
        f"overlap {settings.stripe_reconcile_overlap_s} s, "
        f"grace {settings.stripe_reconcile_grace_s} s"
    )


def _shown_base(settings: Settings) -> str:
    """The API base without any user:password a proxy URL may carry."""
    parts = urlsplit(settings.stripe_api_base or stripe.DEFAULT_API_BASE)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def _api_key(settings: Settings) -> str:
    if not enabled(settings):
        raise ConfigurationError("STRIPE_SECRET_KEY is not set: Stripe reconciliation is off")
    assert settings.stripe_secret_key is not None
    return settings.stripe_secret_key.get_secret_value()


@asynccontextmanager
async def stripe_client(settings: Settings) -> AsyncIterator[stripe.StripeClient]:
    """stripe-python's client on its async HTTP transport, with the configured API base and
    retries; its connections are closed on exit."""
    key = _api_key(settings)
    http_client = stripe.HTTPXClient()
    base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    client = stripe.StripeClient(
        key,
        base_addresses=base,  # type: ignore[arg-type]
        max_network_retries=settings.stripe_max_network_retries,
        http_client=http_client,
    )
    try:
        yield client
    finally:
        await http_client.close_async()


# --- the window ------------------------------------------------------------------------


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """`--since`: a date (midnight UTC) or an ISO date-time (UTC when no offset); not later
    than now."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise BadRequest(f"--since {text!r} is not a date (YYYY-MM-DD) or ISO time") from exc
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if value > (now or datetime.now(UTC)):
        raise BadRequest(f"--since {text!r} is in the future")
    return value


def plan_window(
    *,
    watermark: datetime | None,
    now: datetime,
    since: datetime | None,
    overlap_s: int,
    grace_s: int,
) -> Window:
    """From the watermark minus the overlap (or `since`, or Stripe's 30 days) up to `grace_s`
    ago: younger events are left to their delivery, which is normally seconds away."""
    oldest = now - RETENTION
    until = now - timedelta(seconds=grace_s)
    if since is not None:
        start = max(since, oldest)
        advances = since <= (watermark if watermark is not None else oldest)
    elif watermark is None:
        start, advances = oldest, True
    else:
        start, advances = max(watermark - timedelta(seconds=overlap_s), oldest), True
    return Window(since=min(start, until), until=until, advances=advances)


# --- listing ---------------------------------------------------------------------------


def _type_groups(types: Iterable[str]) -> list[list[str]]:
    ordered = sorted(types)
    return [ordered[i : i + MAX_TYPES_PER_LIST] for i in range(0, len(ordered), MAX_TYPES_PER_LIST)]


async def list_pages(
    client: stripe.StripeClient, *, window: Window, types: Iterable[str]
) -> AsyncIterator[list[dict[str, Any]]]:
    """The window's events of these types, in pages as Stripe serves them (newest first),
    through stripe-python's auto-pagination; each event as a plain dict."""
    created: EventListParamsCreated = {
        "gte": int(window.since.timestamp()),
        "lte": int(window.until.timestamp()),
    }
    for group in _type_groups(types):
        params: EventListParams = {"types": group, "created": created, "limit": PAGE_SIZE}
        first = await client.v1.events.list_async(params)
        page: list[dict[str, Any]] = []
        async for item in first.auto_paging_iter():
            page.append(item.to_dict(for_json=True))
            if len(page) == PAGE_SIZE:
                yield page
                page = []
        if page:
            yield page


def translate(exc: stripe.StripeError, *, key: str) -> IngestError:
    """Stripe's error as the service's: a refused key or request stops the run for good
    (retrying cannot help); rate limits, 5xx and unreachable API are retried later, as
    Stripe advises. Stripe's own message is kept only where it cannot quote the key."""
    status = exc.http_status
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return StripeApiKeyRejected(
            f"Stripe refused STRIPE_SECRET_KEY ({fingerprint(key)}) with HTTP {status}: "
            "reconciliation stops until the key is fixed (it needs read access to events)"
        )
    if isinstance(exc, stripe.RateLimitError):
        return StripeApiUnavailable("Stripe rate limited the Events API (HTTP 429); retried later")
    if isinstance(exc, stripe.APIConnectionError):
        return StripeApiUnavailable("Stripe's API could not be reached; retried later")
    if isinstance(exc, stripe.APIError) or (status or 0) >= 500:
        return StripeApiUnavailable(f"Stripe's API answered HTTP {status}; retried later")
    return StripeApiRequestRefused(
        f"Stripe refused the Events API request with HTTP {status}: {exc.user_message}"
    )


# --- the inbox -------------------------------------------------------------------------


async def current_watermark(conn: asyncpg.Connection) -> datetime | None:
    found = await queries.stripe_reconcile_watermark(conn)
    return found if isinstance(found, datetime) else None


async def store_missing(
    conn: asyncpg.Connection, *, page: list[dict[str, Any]], actor: str
) -> list[str]:
    """Store the page's events the inbox lacks (one query finds them), oldest first, each
    as a delivery is stored; return the ids this call inserted. An event a delivery stored
    in the meantime is a duplicate there, as two deliveries are."""
    by_id = {item.get("id"): item for item in page if isinstance(item.get("id"), str)}
    missing = [row["id"] async for row in queries.stripe_reconcile_missing(conn, ids=list(by_id))]
    events = sorted(
        (stripe_inbox.recovered_event(by_id[i], actor=actor) for i in missing),
        key=lambda e: (e.created, e.id),
    )
    stored = []
    for event in events:
        receipt = await stripe_inbox.store_event(conn, event=event, request_id=None)
        if not receipt.duplicate:
            stored.append(event.id)
    return stored


async def record_run(
    conn: asyncpg.Connection, *, actor: str, report: ReconcileReport, error: IngestError | None
) -> None:
    """The run's audit row: its window, counts, the recovered ids (first 100), any error."""
    details: dict[str, Any] = report.as_json()
    details["recovered"] = report.recovered[:100]
    details["recoveredCount"] = len(report.recovered)
    if error is not None:
        details["error"] = {"code": error.code, "message": error.message}
    await audit.record(
        conn,
        actor=actor,
        action="stripe.reconcile_failed" if error else "stripe.reconciled",
        subject=None,
        details=details,
    )


async def _finish(conn: asyncpg.Connection, *, report: ReconcileReport, actor: str) -> None:
    """Advance the watermark over the listed window and audit the run, in one transaction."""
    if report.window.advances:
        report.watermark = await queries.stripe_reconcile_advance_watermark(
            conn, watermark=report.window.until
        )
    await record_run(conn, actor=actor, report=report, error=None)


async def _list_and_store(
    db: Database,
    client: stripe.StripeClient,
    *,
    report: ReconcileReport,
    actor: str,
    on_recovered: OnRecovered | None,
) -> None:
    pages = list_pages(client, window=report.window, types=donations.HANDLED_TYPES)
    async for page in pages:
        report.listed += len(page)
        stored = await db.run(
            "stripe_reconcile.store_missing", store_missing, page=page, actor=actor
        )
        report.recovered.extend(stored)
        if stored and on_recovered is not None:
            await on_recovered(stored)


async def reconcile(
    db: Database,
    *,
    client: stripe.StripeClient,
    settings: Settings,
    actor: str,
    since: datetime | None = None,
    now: datetime | None = None,
    on_recovered: OnRecovered | None = None,
) -> ReconcileReport:
    """One run: list the window, store what the inbox lacks (each page committed before
    `on_recovered` queues its processing), advance the watermark, audit the run. A Stripe
    error is audited and raised as the service's (`translate`)."""
    watermark = await db.run("stripe_reconcile.watermark", current_watermark)
    window = plan_window(
        watermark=watermark,
        now=now or datetime.now(UTC),
        since=since,
        overlap_s=settings.stripe_reconcile_overlap_s,
        grace_s=settings.stripe_reconcile_grace_s,
    )
    report = ReconcileReport(window=window, watermark=watermark)
    try:
        await _list_and_store(db, client, report=report, actor=actor, on_recovered=on_recovered)
    except stripe.StripeError as exc:
        # Stripe's own message can quote the key's last characters: it is not kept.
        error = translate(exc, key=_api_key(settings))
        await db.run(
            "stripe_reconcile.record_run", record_run, actor=actor, report=report, error=error
        )
        raise error from None
    await db.run("stripe_reconcile.finish", _finish, report=report, actor=actor)
    if report.recovered:
        logger.warning(
            "Stripe events recovered by reconciliation: webhook delivery failed for them",
            extra={"count": len(report.recovered), "event_ids": report.recovered[:20]},
        )
    return report
