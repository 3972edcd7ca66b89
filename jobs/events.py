"""Event-intake housekeeping: drop rate-limit buckets that decide nothing.

    procrastinate --app=jobs.app defer purge_event_state '{}'

Intake keeps no other state: idempotency keys live on the events themselves (a partial unique
index), so they are kept as long as events are, and which VIEWs count is decided by the rollup
from the stored views (docs/rollups.md).
"""

from __future__ import annotations

import logging

from procrastinate import App, JobContext, RetryStrategy

from app import audit
from app.db import transaction
from app.ratelimit import purge_idle_buckets
from jobs.resources import job_actor, resources_for

logger = logging.getLogger("ingest.jobs.events")

TASK = "purge_event_state"


async def purge_event_state(context: JobContext, timestamp: int | None = None) -> dict[str, int]:
    """Delete full rate-limit buckets (a full bucket is the same as none)."""
    res = await resources_for(context)
    async with transaction(res.pool, timeout=res.settings.db_acquire_timeout_s) as conn:
        buckets = await purge_idle_buckets(conn)
        report = {"rate_limit_buckets": buckets}
        if buckets:
            actor = job_actor(context, TASK)
            await audit.record(conn, actor=actor, action="events.purge", details=report)
    logger.info("purged event state", extra=report)
    return report


def register(app: App) -> None:
    task = app.task(
        name=TASK,
        pass_context=True,
        queue="maintenance",
        queueing_lock="purge_event_state",
        retry=RetryStrategy(max_attempts=3, exponential_wait=10),
    )(purge_event_state)
    app.periodic(cron="17 * * * *", periodic_id="hourly")(task)
