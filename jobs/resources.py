"""What tasks need besides their arguments: settings and an asyncpg pool.

`ingest worker` and `ingest run` pass these to the worker as additional context. A worker
started with `procrastinate worker` gets them built on first use from the environment (or,
beside a running local service, from its database).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
from procrastinate import JobContext, RetryStrategy
from procrastinate.jobs import Job
from procrastinate.retry import RetryDecision

from app.db import create_pool
from app.errors import IngestError
from app.local_service import operator_settings, resolve_database_url
from app.settings import Settings


class RetryUnlessInvalid(RetryStrategy):
    """Procrastinate's retry strategy, except for a job whose arguments are wrong (an
    `IngestError` with a 4xx status, such as a malformed date deferred from a shell): running it
    again cannot succeed, so it fails at once instead of after every back-off."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, IngestError) and exception.status < 500:
            return None
        return super().get_retry_decision(exception=exception, job=job)


def job_actor(context: JobContext, task_name: str) -> str:
    """The audit actor of a job: `job:<task>:<job id>`, the same shape for every task (the
    task says what ran, the id finds its row in procrastinate_jobs)."""
    job_id = context.job.id if context.job else None
    return f"job:{task_name}:{job_id}" if job_id is not None else f"job:{task_name}"


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool


_LOCK = asyncio.Lock()


async def resources_for(context: JobContext) -> Resources:
    """The worker's shared resources, created once if the worker was started without them."""
    found = context.additional_context.get("resources")
    if isinstance(found, Resources):
        return found
    async with _LOCK:
        holder = context.additional_context.setdefault("_lazy", {})
        if "resources" not in holder:
            settings, _ = operator_settings(Settings())
            pool = await create_pool(
                resolve_database_url(settings), max_size=settings.worker_concurrency + 1
            )
            holder["resources"] = Resources(settings=settings, pool=pool)
        return holder["resources"]
