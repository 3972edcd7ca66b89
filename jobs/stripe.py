"""Stripe tasks: apply one inbox event, and sweep the inbox for events no job is handling.

    procrastinate --app=jobs.app defer process_stripe_event '{"event_id": "evt_..."}'
    procrastinate --app=jobs.app defer sweep_stripe_inbox '{}'

`process_stripe_event` has a queueing lock per event (`stripe_event:<id>`), so at most one
job waits per event, and retries with exponential back-off. Its effect is idempotent (the
event row is locked and marked processed in the effect's transaction). `sweep_stripe_inbox`
runs every minute and re-defers any unprocessed row with no job waiting or running: left by
a crash between the webhook's commit and its defer, or by a job whose retries ran out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from procrastinate import App, JobContext, RetryStrategy
from procrastinate.exceptions import AlreadyEnqueued

from app import stripe_inbox
from app.db import transaction
from jobs.notifications import defer_notify
from jobs.resources import Resources, resources_for

logger = logging.getLogger("ingest.jobs.stripe")

PROCESS_TASK = "process_stripe_event"
SWEEP_TASK = "sweep_stripe_inbox"
QUEUE = "stripe"
SWEEP_BATCH = 500
# 6 retries after 2, 4, 8, 16, 32 and 64 s; then the sweeper takes over, waiting longer.
PROCESS_RETRY = RetryStrategy(max_attempts=6, exponential_wait=2)
# Donation states an author hears about (the notification task reads the donations table).
NOTIFIED_STATUSES = frozenset({"succeeded", "partially_refunded", "refunded", "disputed", "lost"})


@dataclass(frozen=True)
class SweepReport:
    requeued: list[str]
    already_queued: int

    def as_json(self) -> dict[str, object]:
        return {"requeued": self.requeued, "alreadyQueued": self.already_queued}


def queueing_lock(event_id: str) -> str:
    return f"stripe_event:{event_id}"


async def defer_processing(proc_app: App, *, event_id: str) -> bool:
    """Queue the event's job; False when one is already waiting (that one will do)."""
    try:
        await proc_app.configure_task(
            PROCESS_TASK, queueing_lock=queueing_lock(event_id)
        ).defer_async(event_id=event_id)
    except AlreadyEnqueued:
        return False
    return True


async def process_stripe_event(context: JobContext, event_id: str) -> dict[str, object]:
    """Apply one stored event; raising makes Procrastinate retry it."""
    res = await resources_for(context)
    job_id = context.job.id if context.job else None
    result = await stripe_inbox.process_stored_event(
        res.pool,
        event_id=event_id,
        actor=f"job:{job_id}",
        timeout=res.settings.db_acquire_timeout_s,
        lock_timeout_ms=res.settings.stripe_lock_timeout_ms,
    )
    if result.changed and result.status in NOTIFIED_STATUSES:
        try:
            await defer_notify(context.app)
        except Exception:  # the periodic run notifies within 5 minutes anyway
            logger.warning("could not queue author notifications", exc_info=True)
    return result.as_json()


async def sweep_inbox(proc_app: App, res: Resources) -> SweepReport:
    """Re-defer every stranded inbox row (see `stripe_sweep_candidates` in sql/stripe.sql)."""
    async with transaction(res.pool, timeout=res.settings.db_acquire_timeout_s) as conn:
        candidates = await stripe_inbox.sweep_candidates(
            conn, grace_s=res.settings.stripe_sweep_grace_s, limit=SWEEP_BATCH
        )
    requeued = [e for e in candidates if await defer_processing(proc_app, event_id=e)]
    if requeued:
        async with transaction(res.pool, timeout=res.settings.db_acquire_timeout_s) as conn:
            await stripe_inbox.record_sweep(conn, event_ids=requeued)
        logger.warning("stranded Stripe events re-queued", extra={"count": len(requeued)})
    return SweepReport(requeued=requeued, already_queued=len(candidates) - len(requeued))


async def sweep_stripe_inbox(
    context: JobContext, timestamp: int | None = None
) -> dict[str, object]:
    """Every minute: nothing in the inbox stays without a job."""
    res = await resources_for(context)
    return (await sweep_inbox(context.app, res)).as_json()


def register(app: App) -> None:
    app.task(
        name=PROCESS_TASK,
        pass_context=True,
        queue=QUEUE,
        retry=PROCESS_RETRY,
    )(process_stripe_event)
    sweep = app.task(
        name=SWEEP_TASK,
        pass_context=True,
        queue=QUEUE,
        queueing_lock=SWEEP_TASK,
        retry=RetryStrategy(max_attempts=2, exponential_wait=2),
    )(sweep_stripe_inbox)
    app.periodic(cron="* * * * *", periodic_id="sweep_stripe_inbox")(sweep)
