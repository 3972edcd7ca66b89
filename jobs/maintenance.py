"""Queue housekeeping: retry jobs whose worker died, and purge old finished jobs."""

from __future__ import annotations

import logging

from procrastinate import App, JobContext, RetryStrategy

logger = logging.getLogger("ingest.jobs.maintenance")

# A worker that has not sent a heartbeat for this long is taken to be dead.
STALLED_AFTER_S = 30
FINISHED_JOBS_KEEP_HOURS = 72
FAILED_JOBS_KEEP_HOURS = 7 * 24


async def retry_stalled_jobs(context: JobContext, timestamp: int) -> int:
    """Put back in the queue every job whose worker stopped sending heartbeats."""
    manager = context.app.job_manager
    stalled = list(await manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER_S))
    for job in stalled:
        await manager.retry_job(job)
        logger.warning("retrying stalled job", extra={"job_id": job.id, "task": job.task_name})
    return len(stalled)


async def purge_old_jobs(context: JobContext, timestamp: int | None = None) -> None:
    """Delete finished jobs after three days, failed ones after a week."""
    manager = context.app.job_manager
    await manager.delete_old_jobs(
        nb_hours=FINISHED_JOBS_KEEP_HOURS, include_cancelled=True, include_aborted=True
    )
    await manager.delete_old_jobs(nb_hours=FAILED_JOBS_KEEP_HOURS, include_failed=True)


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
