"""The rollup task: nightly, on `POST /cron/rollup`, from a shell, and as a backfill.

    procrastinate --app=jobs.app defer rollup '{"date": "2026-01-31", "days": 7}'

`lock="rollup"` keeps two rollup jobs from running at once and `queueing_lock="rollup"` keeps
at most one waiting; inside, every day is written under a per-day advisory lock, so CLI runs
and HTTP dry runs serialize with it too. A worker killed mid-run leaves every day either at
its previous numbers or at its new ones (one transaction per day); `retry_stalled_jobs`
(jobs/maintenance.py) puts the job back in the queue and the re-run converges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
from procrastinate import App, JobContext
from procrastinate.exceptions import AlreadyEnqueued

from app import rollup
from app.errors import DatabaseUnavailable, ValidationFailed
from app.rollup.run import backfill_days, rollup_and_record
from app.rollup.store import queued_rollup_job
from jobs.notifications import defer_notify
from jobs.resources import RetryUnlessInvalid, resources_for

logger = logging.getLogger("ingest.jobs.rollup")

ROLLUP_TASK = "rollup"
BACKFILL_TASK = "rollup_backfill"
ROLLUP_LOCK = "rollup"
QUEUE = "rollup"
NIGHTLY_CRON = "10 0 * * *"
NIGHTLY_DAYS = 2
BACKFILL_CRON = "*/10 * * * *"
MAX_DAYS = 366
DEFER_ROUNDS = 5


@dataclass(frozen=True)
class QueuedRollup:
    job_id: int
    already_queued: bool


def parse_day(value: str | None, *, default: date) -> date:
    if value is None:
        return default
    try:
        return rollup.parse_day(value)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc


async def run_rollup_task(
    context: JobContext,
    timestamp: int | None = None,
    date: str | None = None,
    days: int = 7,
    backfill: bool = False,
) -> dict[str, object]:
    """The task. A periodic run (it gets `timestamp`) rolls the two days before that night,
    plus any day of the last 30 that is missing or has changed donations."""
    res = await resources_for(context)
    if timestamp is not None:
        end_day = datetime.fromtimestamp(timestamp, UTC).date() - timedelta(days=1)
        days, backfill = NIGHTLY_DAYS, True
    else:
        end_day = parse_day(date, default=rollup.utc_today())
    if not 1 <= int(days) <= MAX_DAYS:
        raise ValidationFailed(f"days must be 1 to {MAX_DAYS}")
    job_id = context.job.id if context.job else None
    report = await rollup_and_record(
        res.settings, end_day=end_day, days=int(days), backfill=backfill, actor=f"job:{job_id}"
    )
    await defer_notify(context.app)
    return rollup.report_details(report)


async def rollup_backfill(context: JobContext, timestamp: int | None = None) -> int:
    """Every 10 minutes: queue a rollup when a day of the last 30 needs one.

    Procrastinate skips periodic runs missed by more than 10 minutes, so after a worker was
    down over midnight this is what rolls the missed days, within 10 minutes of its start."""
    res = await resources_for(context)
    missing = await backfill_days(res.pool, today=rollup.utc_today())
    if not missing:
        return 0
    try:
        await context.app.configure_task(ROLLUP_TASK).defer_async(
            date=missing[0].isoformat(), days=1, backfill=True
        )
    except AlreadyEnqueued:
        logger.info("rollup already queued; backfill left to it")
    return len(missing)


async def defer_rollup(
    proc_app: App, pool: asyncpg.Pool, *, end_day: date | None, days: int, timeout: float
) -> QueuedRollup:
    """Queue a rollup, or name the one already waiting: never two waiting jobs."""
    kwargs: dict[str, Any] = {"days": days}
    if end_day is not None:
        kwargs["date"] = end_day.isoformat()
    for _ in range(DEFER_ROUNDS):
        try:
            job_id = await proc_app.configure_task(ROLLUP_TASK).defer_async(**kwargs)
            return QueuedRollup(job_id=int(job_id), already_queued=False)
        except AlreadyEnqueued:
            async with pool.acquire(timeout=timeout) as conn:
                waiting = await queued_rollup_job(conn, queueing_lock=ROLLUP_LOCK)
            if waiting is not None:
                return QueuedRollup(job_id=waiting, already_queued=True)
    raise DatabaseUnavailable("the rollup could not be queued; retry shortly")


def register(app: App) -> None:
    task = app.task(
        name=ROLLUP_TASK,
        pass_context=True,
        queue=QUEUE,
        lock=ROLLUP_LOCK,
        queueing_lock=ROLLUP_LOCK,
        # 5 retries after 4 s, 16 s, 64 s, 4 min, 17 min; none for invalid arguments.
        retry=RetryUnlessInvalid(max_attempts=5, exponential_wait=4),
    )(run_rollup_task)
    app.periodic(cron=NIGHTLY_CRON, periodic_id="nightly_rollup")(task)
    backfill = app.task(
        name=BACKFILL_TASK,
        pass_context=True,
        queue=QUEUE,
        queueing_lock=BACKFILL_TASK,
        retry=RetryUnlessInvalid(max_attempts=3, exponential_wait=4),
    )(rollup_backfill)
    app.periodic(cron=BACKFILL_CRON, periodic_id="rollup_backfill")(backfill)
