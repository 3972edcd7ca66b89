"""Housekeeping: retry jobs whose worker died, purge old finished jobs, create the day
partitions of `events` ahead of time, vacuum the days that ended and, when EVENT_RETENTION_DAYS
is set, drop the days older than the retention period."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import asyncpg
from procrastinate import App, JobContext, RetryStrategy
from procrastinate.jobs import Job

from app.db import Unit
from app.sql import queries
from jobs.resources import RetryBesideAWaitingJob, resources_for

logger = logging.getLogger("ingest.jobs.maintenance")

FINISHED_JOBS_KEEP_HOURS = 72
FAILED_JOBS_KEEP_HOURS = 7 * 24
# Events are accepted up to 30 days old, so retention never goes below this, whatever
# EVENT_RETENTION_DAYS says: a day that can still receive events is never dropped (docs/rollups.md).
MIN_EVENT_RETENTION_DAYS = 31
# Day partitions kept ready: back to the oldest day an accepted event can have (30 days, plus a
# day for clocks), and a week ahead, so that a week without a worker still finds every day there.
PARTITION_DAYS_BACK = 31
PARTITION_DAYS_AHEAD = 7


async def retry_stalled_jobs(context: JobContext, timestamp: int) -> int:
    """Put back in the queue every job whose worker stopped sending heartbeats for longer than
    JOBS_STALLED_AFTER_S (a worker killed mid-job: its job would otherwise stay `doing`)."""
    res = await resources_for(context)
    manager = context.app.job_manager
    stalled = list(
        await manager.get_stalled_jobs(seconds_since_heartbeat=res.settings.jobs_stalled_after_s)
    )
    for job in stalled:
        await _retry_stalled(context.app, job)
    return len(stalled)


async def _retry_stalled(app: App, job: Job) -> None:
    """Back to `todo`; or, when its queueing lock is taken, replaced by a copy of its own.

    A job with the same queueing lock may have been queued while this one was `doing` (the
    rollup backfill queues a rollup every 10 minutes). Putting this one back then violates the
    queueing lock, and the waiting job can never start while this one, `doing` forever, holds
    their shared `lock`: both would be stuck. So the copy is queued under a queueing lock of its
    own (still one per stalled job), then this one is closed as failed, which frees the lock
    (`RetryBesideAWaitingJob`, which does the same for a failed job's retry).
    """
    manager = app.job_manager
    assert isinstance(manager, RetryBesideAWaitingJob)  # jobs.create_app installs it
    await manager.retry_job(job, why="stalled")
    logger.warning("retrying stalled job", extra={"job_id": job.id, "task": job.task_name})


async def purge_old_jobs(context: JobContext, timestamp: int | None = None) -> None:
    """Delete finished jobs after three days, failed ones after a week."""
    manager = context.app.job_manager
    await manager.delete_old_jobs(
        nb_hours=FINISHED_JOBS_KEEP_HOURS, include_cancelled=True, include_aborted=True
    )
    await manager.delete_old_jobs(nb_hours=FAILED_JOBS_KEEP_HOURS, include_failed=True)


async def purge_old_events(context: JobContext, timestamp: int | None = None) -> int:
    """Drop the day partitions of events older than EVENT_RETENTION_DAYS (0 keeps them forever).

    Whole days are detached and dropped, so nothing is left for vacuum; the default partition's
    rows older than the horizon are deleted. The daily metrics already hold their numbers;
    rollups refuse to re-roll days older than the retention period, so purged events never turn
    into zeros."""
    res = await resources_for(context)
    days = res.settings.event_retention_days
    if days <= 0:
        return 0
    before = datetime.now(UTC) - timedelta(days=max(days, MIN_EVENT_RETENTION_DAYS))
    deleted = await res.db.run("events.drop_partitions", _drop_partitions, before=before)
    if deleted:
        logger.info("old events purged", extra={"deleted": deleted, "before": before.isoformat()})
    return deleted


async def _drop_partitions(conn: asyncpg.Connection, *, before: datetime) -> int:
    """Drop the day partitions older than `before` and forget their notes (those days are never
    re-rolled), in one transaction."""
    deleted = int(await queries.events_drop_partitions_before(conn, before=before))
    await queries.rollup_forget_changes_before(conn, day=before.date())
    return deleted


async def ensure_event_partitions(context: JobContext, timestamp: int | None = None) -> int:
    """Create the day partitions of events from PARTITION_DAYS_BACK days ago to
    PARTITION_DAYS_AHEAD days ahead that are missing; idempotent. Intake never depends on it (a
    default partition takes any event no day holds), but an event in the default partition is
    moved out only when its day is created, and it is read by every day's rollup."""
    res = await resources_for(context)
    today = datetime.now(UTC).date()
    made = await res.db.run(
        "events.ensure_partitions",
        _ensure_partitions,
        first_day=today - timedelta(days=PARTITION_DAYS_BACK),
        last_day=today + timedelta(days=PARTITION_DAYS_AHEAD),
    )
    if made:
        logger.info("event partitions created", extra={"created": made})
    return made


async def _ensure_partitions(conn: asyncpg.Connection, *, first_day: date, last_day: date) -> int:
    return int(await queries.events_ensure_partitions(conn, first_day=first_day, last_day=last_day))


# VACUUM runs outside a transaction block.
VACUUM_DAY = Unit("events.vacuum_closed_day", transaction=False)


async def vacuum_closed_event_days(context: JobContext, timestamp: int | None = None) -> int:
    """VACUUM the day partitions of events whose day has ended (up to PARTITION_DAYS_BACK days
    back) that were written since their last vacuum: their pages become all-visible, so the
    rollup counts each such day by an index-only scan (migrations/0015). Autovacuum alone leaves
    up to a fifth of a day's last rows unvacuumed (autovacuum_vacuum_insert_scale_factor).
    Runs a few minutes after every hour, so yesterday's day is vacuumed before the nightly
    rollup at 00:10 UTC; returns how many partitions it vacuumed."""
    res = await resources_for(context)
    today = datetime.now(UTC).date()
    names = await res.db.run(
        Unit("events.closed_days_to_vacuum", transaction=False),
        _closed_days_to_vacuum,
        first_day=today - timedelta(days=PARTITION_DAYS_BACK),
        before_day=today,
    )
    for name in names:
        await res.db.run(VACUUM_DAY, _vacuum, partition=name)
    if names:
        logger.info("closed event days vacuumed", extra={"partitions": names})
    return len(names)


async def _closed_days_to_vacuum(
    conn: asyncpg.Connection, *, first_day: date, before_day: date
) -> list[str]:
    rows = queries.events_closed_days_to_vacuum(conn, first_day=first_day, before_day=before_day)
    return [r["partition"] async for r in rows]


async def _vacuum(conn: asyncpg.Connection, *, partition: str) -> None:
    # The name is a day partition's, read from pg_class (events_YYYYMMDD); quoted all the same.
    await conn.execute('VACUUM "{}"'.format(partition.replace('"', '""')))


def register(app: App) -> None:
    # Queueing lock only, never `lock`: a lock here can deadlock with the jobs it retries.
    stalled = app.task(
        name="retry_stalled_jobs",
        pass_context=True,
        queue="maintenance",
        queueing_lock="retry_stalled_jobs",
    )(retry_stalled_jobs)
    app.periodic(cron="* * * * *", periodic_id="every_minute")(stalled)
    purge = app.task(
        name="purge_old_jobs",
        pass_context=True,
        queue="maintenance",
        queueing_lock="purge_old_jobs",
        retry=RetryStrategy(max_attempts=3, exponential_wait=10),
    )(purge_old_jobs)
    app.periodic(cron="30 3 * * *", periodic_id="nightly")(purge)
    events = app.task(
        name="purge_old_events",
        pass_context=True,
        queue="maintenance",
        queueing_lock="purge_old_events",
        retry=RetryStrategy(max_attempts=3, exponential_wait=10),
    )(purge_old_events)
    app.periodic(cron="45 3 * * *", periodic_id="nightly_event_retention")(events)
    partitions = app.task(
        name="ensure_event_partitions",
        pass_context=True,
        queue="maintenance",
        queueing_lock="ensure_event_partitions",
        retry=RetryStrategy(max_attempts=3, exponential_wait=10),
    )(ensure_event_partitions)
    app.periodic(cron="5 * * * *", periodic_id="hourly_event_partitions")(partitions)
    vacuum = app.task(
        name="vacuum_closed_event_days",
        pass_context=True,
        queue="maintenance",
        queueing_lock="vacuum_closed_event_days",
        retry=RetryStrategy(max_attempts=3, exponential_wait=10),
    )(vacuum_closed_event_days)
    app.periodic(cron="2 * * * *", periodic_id="hourly_closed_day_vacuum")(vacuum)
