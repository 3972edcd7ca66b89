"""Event-intake housekeeping: drop VIEW windows and rate-limit buckets that decide nothing.

    procrastinate --app=jobs.app defer purge_event_state '{}'

Idempotency keys live on the events themselves (a partial unique index), so they are kept as
long as events are; see docs/events.md for the retention rule.
"""

from __future__ import annotations

import logging

from procrastinate import App, JobContext, RetryStrategy

from app import audit
from app.db import queries, transaction
from app.events import MAX_AGE
from app.ratelimit import purge_idle_buckets
from jobs.resources import resources_for

logger = logging.getLogger("ingest.jobs.events")

ACTOR = "job:purge_event_state"


async def purge_event_state(context: JobContext, timestamp: int | None = None) -> dict[str, int]:
    """Delete VIEW windows older than the oldest accepted event, and full rate-limit buckets."""
    res = await resources_for(context)
    async with transaction(res.pool, timeout=res.settings.db_acquire_timeout_s) as conn:
        windows = await queries.events_purge_view_dedupe(conn, keep_days=MAX_AGE.days)
        buckets = await purge_idle_buckets(conn)
        report = {"view_windows": int(windows), "rate_limit_buckets": buckets}
        if windows:
            await audit.record(conn, actor=ACTOR, action="events.purge", details=report)
    logger.info("purged event state", extra=report)
    return report


def register(app: App) -> None:
    task = app.task(
        name="purge_event_state",
        pass_context=True,
        queue="maintenance",
        queueing_lock="purge_event_state",
        retry=RetryStrategy(max_attempts=3, exponential_wait=10),
    )(purge_event_state)
    app.periodic(cron="17 * * * *", periodic_id="hourly")(task)
