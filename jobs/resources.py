"""What tasks need besides their arguments (the process's `Resources`), and their retry policy.

`ingest worker` and `ingest run` pass these to the worker as additional context. A worker
started with `procrastinate worker` gets them built on first use from the environment (or,
beside a running local service, from its database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from procrastinate import JobContext, RetryStrategy, exceptions
from procrastinate.jobs import Job, Status
from procrastinate.manager import JobManager
from procrastinate.retry import RetryDecision

from app.errors import IngestError
from app.local_service import operator_settings
from app.resources import Resources, open_worker_resources
from app.settings import Settings


class RetryUnlessInvalid(RetryStrategy):
    """Procrastinate's retry strategy, except for an error whose kind says that running the job
    again cannot succeed (arguments that are invalid or name nothing, such as a malformed date
    deferred from a shell): it fails at once instead of after every back-off."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, IngestError) and not exception.kind.retriable:
            return None
        return super().get_retry_decision(exception=exception, job=job)


def job_actor(context: JobContext, task_name: str) -> str:
    """The audit actor of a job: `job:<task>:<job id>`, the same shape for every task (the
    task says what ran, the id finds its row in procrastinate_jobs)."""
    job_id = context.job.id if context.job else None
    return f"job:{task_name}:{job_id}" if job_id is not None else f"job:{task_name}"


logger = logging.getLogger("ingest.jobs")

_LOCK = asyncio.Lock()


async def resources_for(context: JobContext) -> Resources:
    """The worker's shared resources (app/resources.py), created once if the worker was
    started without them (`procrastinate worker`)."""
    found = context.additional_context.get("resources")
    if isinstance(found, Resources):
        return found
    async with _LOCK:
        holder = context.additional_context.setdefault("_lazy", {})
        if "resources" not in holder:
            settings, _ = operator_settings(Settings())
            holder["resources"] = await open_worker_resources(settings, jobs=context.app)
        return holder["resources"]


class RetryBesideAWaitingJob(JobManager):
    """Procrastinate's job manager, except for a retry that meets its own queueing lock.

    A job with a queueing lock (the refresh, the nightly rollup, reconciliation) may see
    another job with that lock queued while it runs (its next periodic run). When it then
    fails, putting it back to `todo` violates the lock: Procrastinate's retry raises, and the
    job stays `doing` under a live worker, where `retry_stalled_jobs` never looks. Instead, the
    retry is queued as a copy under a queueing lock of its own (one per failed job, as
    jobs/maintenance.py does for a stalled job), and the job is closed as failed."""

    async def retry_job(
        self,
        job: Job,
        retry_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        lock: str | None = None,
        *,
        why: str = "retry",
    ) -> None:
        """`why` names the copy's queueing lock (`<lock>:<why>:<job id>`): `retry` after a
        failure, `stalled` for a job whose worker died (jobs/maintenance.py)."""
        try:
            await super().retry_job(
                job, retry_at=retry_at, priority=priority, queue=queue, lock=lock
            )
        except exceptions.UniqueViolation:
            if job.queueing_lock is None:
                raise
            await self._retry_as_a_copy(
                job, why=why, retry_at=retry_at, priority=priority, queue=queue, lock=lock
            )

    async def _retry_as_a_copy(
        self,
        job: Job,
        *,
        why: str,
        retry_at: datetime | None,
        priority: int | None,
        queue: str | None,
        lock: str | None,
    ) -> None:
        copy = job.evolve(
            id=None,
            status=None,
            attempts=0,
            scheduled_at=retry_at,
            priority=job.priority if priority is None else priority,
            queue=queue or job.queue,
            lock=lock or job.lock,
            queueing_lock=f"{job.queueing_lock}:{why}:{job.id}",
        )
        # AlreadyEnqueued: an earlier round queued the copy but could not close the job.
        with contextlib.suppress(exceptions.AlreadyEnqueued):
            await self.defer_job_async(copy)
        await self.finish_job(job, status=Status.FAILED, delete_job=False)
        logger.warning(
            f"{why}: job replaced by a copy, a job with its queueing lock is already waiting",
            extra={"job_id": job.id, "task": job.task_name, "queueing_lock": job.queueing_lock},
        )
