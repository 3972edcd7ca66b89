"""Stripe tasks: apply one inbox event, sweep the inbox for events no job is handling, and
reconcile the inbox with Stripe's Events API.

    procrastinate --app=jobs.app defer process_stripe_event '{"event_id": "evt_..."}'
    procrastinate --app=jobs.app defer sweep_stripe_inbox '{}'
    procrastinate --app=jobs.app defer reconcile_stripe '{}'

`process_stripe_event` has a queueing lock per event (`stripe_event:<id>`) however it is
deferred (jobs/argument_locks.py), so at most one job waits per event, and retries with
exponential back-off; an event that is not in the inbox fails at once (retrying cannot
help). Its effect is idempotent (the event row is locked and marked processed in the
effect's transaction). `sweep_stripe_inbox` runs every minute and re-defers any unprocessed
row with no job waiting or running: left by a crash between the webhook's commit and its
defer, or by a job whose retries ran out.
`reconcile_stripe` runs every 10 minutes when STRIPE_SECRET_KEY is set (app/stripe_reconcile.py)
and queues processing for every event it recovers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from procrastinate import App, JobContext, RetryStrategy
from procrastinate.jobs import Job
from procrastinate.retry import RetryDecision

from app import stripe_inbox, stripe_reconcile
from app.errors import ConfigurationError
from app.queue import PROCESS_STRIPE_TASK as PROCESS_TASK
from app.queue import argument_lock
from app.resources import Resources
from jobs.argument_locks import register_locked_by_argument
from jobs.resources import RetryUnlessInvalid, job_actor, resources_for

logger = logging.getLogger("ingest.jobs.stripe")

SWEEP_TASK = "sweep_stripe_inbox"
RECONCILE_TASK = "reconcile_stripe"
RECONCILE_CRON = "*/10 * * * *"  # stripe_reconcile.CADENCE says it in words
QUEUE = "stripe"
SWEEP_BATCH = 500
# 6 retries after 2, 4, 8, 16, 32 and 64 s; then the sweeper takes over, waiting longer. None
# for an event id the inbox does not have: it cannot succeed (the sweeper only re-queues rows
# that are in the inbox).
PROCESS_RETRY = RetryUnlessInvalid(max_attempts=6, exponential_wait=2)
# Donation states an author hears about (the notification task reads the donations table).
NOTIFIED_STATUSES = frozenset({"succeeded", "partially_refunded", "refunded", "disputed", "lost"})


class RetryUnlessMisconfigured(RetryUnlessInvalid):
    """Retries Stripe's rate limits and outages; a refused key or request (a
    `ConfigurationError`) fails at once: the same call cannot succeed until someone acts."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, ConfigurationError):
            return None
        return super().get_retry_decision(exception=exception, job=job)


# 4 retries after 4, 16, 64 and 256 s; the next periodic run comes 10 minutes after the last.
RECONCILE_RETRY = RetryUnlessMisconfigured(max_attempts=4, exponential_wait=4)


@dataclass(frozen=True)
class SweepReport:
    requeued: list[str]
    already_queued: int

    def as_json(self) -> dict[str, object]:
        return {"requeued": self.requeued, "alreadyQueued": self.already_queued}


def _lock_of_arguments(arguments: dict[str, object]) -> str | None:
    return argument_lock(PROCESS_TASK, arguments)


async def process_stripe_event(context: JobContext, event_id: str) -> dict[str, object]:
    """Apply one stored event; raising makes Procrastinate retry it."""
    res = await resources_for(context)
    result = await stripe_inbox.process_stored_event(
        res.db,
        event_id=event_id,
        actor=job_actor(context, PROCESS_TASK),
        lock_timeout_ms=res.settings.stripe_lock_timeout_ms,
    )
    if result.changed and result.status in NOTIFIED_STATUSES:
        try:
            await res.queue.author_notifications()
        except Exception:  # the periodic run notifies within 5 minutes anyway
            logger.warning("could not queue author notifications", exc_info=True)
    return result.as_json()


async def sweep_inbox(res: Resources, *, actor: str = f"job:{SWEEP_TASK}") -> SweepReport:
    """Re-defer every stranded inbox row (see `stripe_sweep_candidates` in sql/stripe.sql)."""
    candidates = await res.db.run(
        "stripe.sweep_candidates",
        stripe_inbox.sweep_candidates,
        grace_s=res.settings.stripe_sweep_grace_s,
        limit=SWEEP_BATCH,
    )
    requeued = [e for e in candidates if await res.queue.stripe_event(e)]
    if requeued:
        await res.db.run(
            "stripe.record_sweep", stripe_inbox.record_sweep, event_ids=requeued, actor=actor
        )
        logger.warning("stranded Stripe events re-queued", extra={"count": len(requeued)})
    return SweepReport(requeued=requeued, already_queued=len(candidates) - len(requeued))


async def sweep_stripe_inbox(
    context: JobContext, timestamp: int | None = None
) -> dict[str, object]:
    """Every minute: nothing in the inbox stays without a job."""
    res = await resources_for(context)
    return (await sweep_inbox(res, actor=job_actor(context, SWEEP_TASK))).as_json()


async def reconcile_inbox(
    res: Resources, *, actor: str, since: str | None = None
) -> dict[str, object]:
    """One reconciliation run; each recovered event's processing is queued once its page
    is committed (a lost defer is the sweeper's, as for a webhook)."""
    since_at = stripe_reconcile.parse_since(since) if since else None

    async def queue(event_ids: list[str]) -> None:
        for event_id in event_ids:
            await res.queue.stripe_event(event_id)

    async with stripe_reconcile.stripe_client(res.settings) as client:
        report = await stripe_reconcile.reconcile(
            res.db,
            client=client,
            settings=res.settings,
            actor=actor,
            since=since_at,
            on_recovered=queue,
        )
    return report.as_json()


async def reconcile_stripe(
    context: JobContext, timestamp: int | None = None, since: str | None = None
) -> dict[str, object]:
    """Every 10 minutes: list what Stripe has and the inbox lacks (off without a key, as
    start-up and `ingest config` say)."""
    res = await resources_for(context)
    if not stripe_reconcile.enabled(res.settings):
        return {"skipped": "STRIPE_SECRET_KEY is not set"}
    try:
        actor = job_actor(context, RECONCILE_TASK)
        return await reconcile_inbox(res, actor=actor, since=since)
    except ConfigurationError as exc:
        logger.error("Stripe reconciliation failed: %s", exc.message)
        raise


def register(app: App) -> None:
    register_locked_by_argument(
        app,
        process_stripe_event,
        lock_of=_lock_of_arguments,
        name=PROCESS_TASK,
        pass_context=True,
        queue=QUEUE,
        retry=PROCESS_RETRY,
    )
    sweep = app.task(
        name=SWEEP_TASK,
        pass_context=True,
        queue=QUEUE,
        queueing_lock=SWEEP_TASK,
        retry=RetryStrategy(max_attempts=2, exponential_wait=2),
    )(sweep_stripe_inbox)
    app.periodic(cron="* * * * *", periodic_id="sweep_stripe_inbox")(sweep)
    reconcile = app.task(
        name=RECONCILE_TASK,
        pass_context=True,
        queue=QUEUE,
        lock=RECONCILE_TASK,
        queueing_lock=RECONCILE_TASK,
        retry=RECONCILE_RETRY,
    )(reconcile_stripe)
    app.periodic(cron=RECONCILE_CRON, periodic_id=RECONCILE_TASK)(reconcile)
