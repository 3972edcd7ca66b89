"""Event-intake housekeeping: drop rate-limit buckets that decide nothing.

    procrastinate --app=jobs.app defer purge_event_state '{}'

Intake keeps no other state: idempotency keys live on the events themselves (a partial unique
index), so they are kept as long as events are, and which VIEWs count is decided by the rollup
from the stored views (docs/rollups.md).
"""

from __future__ import annotations

import logging

import asyncpg
from procrastinate import App, JobContext, RetryStrategy

from app import audit
from app.ratelimit import purge_idle_buckets
from jobs.resources import job_actor, resources_for

logger = logging.getLogger("ingest.jobs.events")

TASK = "purge_event_state"


async def purge_event_state(context: JobContext, timestamp: int | None = None) -> dict[str, int]:
    """Delete full rate-limit buckets (a full bucket is the same as none)."""
    res = await resources_for(context)
    report = await res.db.run("events.purge_state", _purge, actor=job_actor(context, TASK))
    logger.info("purged event state", extra=report)
    return report


async def _purge(conn: asyncpg.Connection, *, actor: str) -> dict[str, int]:
    buckets = await purge_idle_buckets(conn)
    report = {"rate_limit_buckets": buckets}
    if buckets:
        await audit.record(conn, actor=actor, action="events.purge", details=report)
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
