"""What tasks need besides their arguments (the process's `Resources`), and their retry policy.

`ingest worker` and `ingest run` pass these to the worker as additional context. A worker
started with `procrastinate worker` gets them built on first use from the environment (or,
beside a running local service, from its database).
"""

from __future__ import annotations

import asyncio

from procrastinate import JobContext, RetryStrategy
from procrastinate.jobs import Job
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
