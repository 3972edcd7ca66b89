"""A small demo catalogue and a week of activity, so that every example in the docs answers as
documented on a fresh database (`ingest demo`, `make demo`).

Users, rules and a crawl source are the site's rows, inserted as the site would; everything
else goes through the service's own paths: crawl items through `crawl.import_items`, events
through the intake statement, donations as signed Stripe events verified, stored and applied
by the inbox, and one rollup through `rollup_and_record`. Loading twice changes nothing (ids
and idempotency keys are fixed, and a part already loaded is skipped). A database whose users
or rules are not the demo's is refused unless forced: it is somebody's real data.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import stripe

from app import audit, crawl, events, rollup, stripe_inbox
from app.db import Database
from app.errors import IngestError
from app.settings import Settings
from app.sql import queries

USERS = (
    ("usr_1", "ada"),
    ("usr_9", "grace"),
    ("usr_123", "linus"),
    ("usr_456", "margaret"),
    ("usr_7", "alan"),
)
# (id, author, title, tags, model)
RULES = (
    ("rul_1", "usr_1", "A first rule", ("python",), "gpt-4o"),
    ("rul_123", "usr_1", "Python typing checklist", ("python", "typing"), "gpt-4o"),
    ("rul_124", "usr_9", "SQL review prompt", ("sql", "review"), "claude-sonnet"),
    ("rul_125", "usr_9", "Commit message writer", ("git",), "claude-sonnet"),
    ("rul_126", "usr_123", "Pytest fixture helper", ("python", "testing"), "llama-3"),
)
SOURCE_ID = "src_demo"
SOURCE_NAME = "Demo partner prompts"
SOURCE_CURATOR = "usr_123"
CRAWL_ITEMS = (
    {
        "externalId": "acme-1234",
        "url": "https://acme.example/rules/1234",
        "title": "Go error wrapping guide",
        "summary": "Wrap errors with context and check them with errors.Is",
        "tags": ["go", "errors"],
        "model": "gpt-4o",
        "raw": {"stars": 120, "lang": "en"},
    },
    {
        "externalId": "acme-1235",
        "url": "https://acme.example/rules/1235",
        "title": "Dockerfile review prompt",
        "tags": ["docker"],
        "model": "llama-3",
    },
)
DAYS = 7
KEY_PREFIX = "demo-"
STRIPE_PREFIX = "evt_demo_donation_"
# Signs the demo's Stripe events when no STRIPE_WEBHOOK_SECRET is configured.
DEMO_WEBHOOK_SECRET = "whsec_ingest_demo"  # noqa: S105 (signs demo data only)
CLIENT_IPS = tuple(f"198.51.100.{n}" for n in range(10, 20))  # documentation addresses


class DemoRefused(IngestError):
    """The database holds users or rules that are not the demo's: the demo refuses to add to
    real data (--force loads it anyway)."""

    status = 409
    code = "demo_refused"


@dataclass
class DemoReport:
    users: int = 0
    rules: int = 0
    source_added: bool = False
    crawl_items: int = 0
    events: int | None = None  # None: the activity was not asked for, or was there already
    stripe_events: int = 0
    rollup_run_id: int | None = None
    activity_present: bool = False

    @property
    def added_anything(self) -> bool:
        return bool(self.users or self.rules or self.source_added or self.events is not None)

    def lines(self) -> list[str]:
        source = f"crawl source {SOURCE_ID} ({'added' if self.source_added else 'already there'})"
        out = [
            f"demo catalogue: {self.users} of {len(USERS)} users and {self.rules} of "
            f"{len(RULES)} rules added, {source}, {self.crawl_items} crawl items imported"
        ]
        if self.events is not None:
            out.append(
                f"demo activity: {self.events} events over {DAYS} days, {self.stripe_events} "
                f"Stripe events applied (3 donations, one refunded), rollup run "
                f"#{self.rollup_run_id}"
            )
        elif self.activity_present:
            out.append("demo activity: already loaded, left as it is")
        return out


async def refuse_real_data(conn: asyncpg.Connection) -> None:
    foreign = await queries.demo_foreign_rows(
        conn,
        user_ids=[u for u, _ in USERS],
        rule_ids=[r[0] for r in RULES],
        source_ids=[SOURCE_ID],
    )
    if foreign:
        raise DemoRefused()


async def load_catalogue(conn: asyncpg.Connection, report: DemoReport, *, actor: str) -> None:
    """Users, rules with tags and models, and the crawl source with its first items."""
    report.users = await queries.demo_insert_users(
        conn, ids=[u for u, _ in USERS], handles=[h for _, h in USERS]
    )
    report.rules = await queries.demo_insert_rules(
        conn,
        ids=[r[0] for r in RULES],
        author_ids=[r[1] for r in RULES],
        titles=[r[2] for r in RULES],
        tags=[",".join(r[3]) for r in RULES],
        models=[r[4] for r in RULES],
    )
    added = await queries.demo_insert_source(
        conn, id=SOURCE_ID, name=SOURCE_NAME, curator_id=SOURCE_CURATOR
    )
    report.source_added = added is not None
    if report.source_added:
        items = crawl.validate_items(list(CRAWL_ITEMS))
        imported = await crawl.import_items(conn, source_id=SOURCE_ID, items=items, actor=actor)
        report.crawl_items = imported.created


def week_of_events(now: datetime) -> list[list[dict[str, Any]]]:
    """One batch per day for the last DAYS days: views from a few clients, and copies, saves,
    forks and votes, every event with a fixed idempotency key (a second load is all
    duplicates). Times are counted back from `now`, so none is in the future."""
    batches = []
    for day in range(DAYS):
        batch: list[dict[str, Any]] = []
        for index, (rule_id, *_) in enumerate(RULES):
            counts = {
                "VIEW": 3 + (day + index) % 4,
                "COPY": (day + index) % 3,
                "SAVE": (day + 2 * index) % 2,
                "FORK": 1 if (day + index) % 5 == 0 else 0,
                "VOTE": index % 2,
            }
            for kind, count in counts.items():
                for n in range(count):
                    ts = now - timedelta(days=day, minutes=15 * n + index)
                    batch.append(
                        {
                            "type": kind,
                            "ruleId": rule_id,
                            "userId": "usr_7" if kind == "SAVE" else None,
                            "ts": ts.isoformat(timespec="seconds").replace("+00:00", "Z"),
                            "ip": CLIENT_IPS[(n + day) % len(CLIENT_IPS)],
                            "idempotencyKey": f"{KEY_PREFIX}{day}-{rule_id}-{kind}-{n}",
                        }
                    )
        batches.append([{k: v for k, v in e.items() if v is not None} for e in batch])
    return batches


async def load_events(db: Database, settings: Settings, *, now: datetime, actor: str) -> int:
    override = settings.ip_hash_secret.get_secret_value() if settings.ip_hash_secret else None
    hasher = await events.load_ip_hasher(db, override=override)
    accepted = 0
    for batch in week_of_events(now):
        prepared = events.prepare_batch(
            batch, now=now, request_ip_hash=hasher.hash_given(CLIENT_IPS[0]) or "", hasher=hasher
        )
        report = await events.store_batch(db, batch=prepared, actor=actor, request_id=None)
        accepted += report.accepted
    return accepted


def donation_events(now: datetime) -> list[dict[str, Any]]:
    """Three donations as Stripe reports them, the last one refunded in full a day later."""

    def at(days: float) -> int:
        return int((now - timedelta(days=days)).timestamp())

    def payment(n: int, amount: int, author: str, rule: str, days: float) -> dict[str, Any]:
        return {
            "id": f"{STRIPE_PREFIX}{n}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "created": at(days),
            "livemode": False,
            "data": {
                "object": {
                    "id": f"pi_demo_donation_{n}",
                    "object": "payment_intent",
                    "amount": amount,
                    "amount_received": amount,
                    "currency": "usd",
                    "created": at(days),
                    "latest_charge": f"ch_demo_donation_{n}",
                    "metadata": {"authorId": author, "ruleId": rule, "userId": "usr_7"},
                }
            },
        }

    refund = {
        "id": f"{STRIPE_PREFIX}4",
        "object": "event",
        "type": "charge.refunded",
        "created": at(1),
        "livemode": False,
        "data": {
            "object": {
                "id": "ch_demo_donation_3",
                "object": "charge",
                "payment_intent": "pi_demo_donation_3",
                "amount": 300,
                "amount_refunded": 300,
                "currency": "usd",
                "paid": True,
                "created": at(2),
            }
        },
    }
    return [
        payment(1, 500, "usr_1", "rul_1", 5),
        payment(2, 1200, "usr_9", "rul_124", 3),
        payment(3, 300, "usr_1", "rul_123", 2),
        refund,
    ]


async def load_donations(db: Database, settings: Settings, *, now: datetime, actor: str) -> int:
    """Each event signed, verified, stored and applied as a webhook delivery is."""
    secret = (settings.stripe_webhook_secrets or (DEMO_WEBHOOK_SECRET,))[0]
    applied = 0
    for payload in donation_events(now):
        body = orjson.dumps(payload)
        signature = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
        verified = stripe_inbox.verify_webhook(
            body, signature, secrets=(secret,), tolerance_s=settings.stripe_webhook_tolerance_s
        )
        await db.run(
            "stripe.store_event", stripe_inbox.store_event, event=verified, request_id=None
        )
        await stripe_inbox.process_stored_event(
            db,
            event_id=verified.id,
            actor=actor,
            lock_timeout_ms=settings.stripe_lock_timeout_ms,
        )
        applied += 1
    return applied


async def load_demo(
    db: Database,
    settings: Settings,
    *,
    activity: bool,
    force: bool = False,
    now: datetime | None = None,
) -> DemoReport:
    """Load the catalogue and, with `activity`, the week of events, the donations and one
    rollup over the week. `settings.database_url` must name `db`'s database."""
    now = now or datetime.now(UTC)
    actor = audit.operator_actor()
    report = DemoReport()
    await db.run("demo.catalogue", _catalogue, report=report, actor=actor, force=force)
    if activity and not report.activity_present:
        report.events = await load_events(db, settings, now=now, actor=actor)
        report.stripe_events = await load_donations(db, settings, now=now, actor=actor)
        # A run counts the facts older than ROLLUP_FACTS_MARGIN_S; those written just now
        # would leave every day dirty for the next refresh to roll again.
        await asyncio.sleep(settings.rollup_facts_margin_s)
        run = await rollup.rollup_and_record(
            settings, actor=actor, end_day=now.date(), days=DAYS, reason=rollup.Reason.OPERATOR
        )
        report.rollup_run_id = run.run_id
    if report.added_anything:
        await db.run(
            "demo.audit",
            audit.record,
            actor=actor,
            action="demo.loaded",
            subject=None,
            details=vars(report),
        )
    return report


async def _catalogue(
    conn: asyncpg.Connection, *, report: DemoReport, actor: str, force: bool
) -> None:
    if not force:
        await refuse_real_data(conn)
    await load_catalogue(conn, report, actor=actor)
    report.activity_present = await queries.demo_events_loaded(conn, key_prefix=KEY_PREFIX)
