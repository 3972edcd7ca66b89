"""Event-intake housekeeping: drop the state that can no longer decide anything.

    procrastinate --app=jobs.app defer purge_event_state '{}'

Intake keeps two kinds of state besides the events: rate-limit buckets (a full bucket is the
same as none) and idempotency keys, which can decide a duplicate only while a copy of their
event can still be accepted: until the event is older than MAX_AGE (plus a day for clocks).
Which VIEWs count is decided by the rollup from the stored views (docs/rollups.md).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import asyncpg
from procrastinate import App, JobContext, RetryStrategy

from app import audit
from app.db import Database, Unit
from app.events import MAX_AGE
from app.ratelimit import purge_idle_buckets
from app.sql import queries
from jobs.resources import job_actor, resources_for

logger = logging.getLogger("ingest.jobs.events")

TASK = "purge_event_state"
# A key outlives the oldest event intake accepts by this much (clocks of other hosts).
KEY_MARGIN = timedelta(days=1)
KEY_PURGE_BATCH = 10_000


async def purge_event_state(context: JobContext, timestamp: int | None = None) -> dict[str, int]:
    """Delete full rate-limit buckets and the idempotency keys of events older than any event
    intake accepts."""
    res = await resources_for(context)
    keys = await purge_idempotency_keys(res.db, before=datetime.now(UTC) - MAX_AGE - KEY_MARGIN)
    report = await res.db.run(
        "events.purge_state", _purge, keys=keys, actor=job_actor(context, TASK)
    )
    logger.info("purged event state", extra=report)
    return report


async def _purge(conn: asyncpg.Connection, *, keys: int, actor: str) -> dict[str, int]:
    buckets = await purge_idle_buckets(conn)
    report = {"rate_limit_buckets": buckets, "idempotency_keys": keys}
    if buckets or keys:
        await audit.record(conn, actor=actor, action="events.purge", details=report)
    return report


async def purge_idempotency_keys(db: Database, *, before: datetime) -> int:
    """Keys whose event is older than `before`, in batches (each a unit of its own)."""
    deleted = 0
    while True:
        batch = await db.run(PURGE_KEYS, _purge_key_batch, before=before)
        deleted += batch
        if batch < KEY_PURGE_BATCH:
            return deleted


# One statement per batch, its own transaction.
PURGE_KEYS = Unit("events.purge_idempotency_keys", transaction=False)


async def _purge_key_batch(conn: asyncpg.Connection, *, before: datetime) -> int:
    return int(
        await queries.events_purge_idempotency_keys(conn, before=before, batch=KEY_PURGE_BATCH)
    )


def register(app: App) -> None:
    task = app.task(
        name=TASK,
        pass_context=True,
        queue="maintenance",
        queueing_lock="purge_event_state",
        retry=RetryStrategy(max_attempts=3, exponential_wait=10),
    )(purge_event_state)
    app.periodic(cron="17 * * * *", periodic_id="hourly")(task)
