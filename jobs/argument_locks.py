"""Queueing locks computed from a job's arguments, whichever way the job is deferred.

Procrastinate's `queueing_lock` is a fixed string per task unless each defer passes one. A
task whose lock depends on its arguments (one waiting `process_stripe_event` per event) would
then be locked only where the caller remembered to pass it: not from
`procrastinate defer process_stripe_event '{"event_id": ...}'`, nor from `ingest jobs retry`.
Registered with `register_locked_by_argument`, every defer that names no queueing lock gets
the one `lock_of(arguments)` returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from procrastinate import App
from procrastinate.jobs import Job, JobDeferrer
from procrastinate.tasks import Task

LockOf = Callable[[dict[str, Any]], str | None]


class ArgumentLockDeferrer(JobDeferrer):
    """A deferrer that fills in the queueing lock from the job's arguments when none is set."""

    def __init__(self, deferrer: JobDeferrer, lock_of: LockOf) -> None:
        super().__init__(deferrer.job_manager, deferrer.job, deferrer.connection)
        self.lock_of = lock_of

    def make_new_job(self, **task_kwargs: Any) -> Job:
        job = super().make_new_job(**task_kwargs)
        if job.queueing_lock is None:
            job = job.evolve(queueing_lock=self.lock_of(dict(job.task_kwargs)))
        return job


class LockedByArgument(Task[Any, Any, Any]):
    """A task whose default queueing lock is computed from each job's arguments."""

    def __init__(self, func: Callable[..., Any], *, lock_of: LockOf, **options: Any) -> None:
        super().__init__(func, **options)
        self.lock_of = lock_of

    def configure(self, **options: Any) -> JobDeferrer:
        return ArgumentLockDeferrer(super().configure(**options), self.lock_of)


def register_locked_by_argument(
    app: App, func: Callable[..., Any], *, lock_of: LockOf, **options: Any
) -> Task[Any, Any, Any]:
    """`app.task(**options)(func)`, with queueing locks from `lock_of`."""
    task = LockedByArgument(func, blueprint=app, lock_of=lock_of, **options)
    app._register_task(task)  # what `App.task` does with the Task it builds
    functools.update_wrapper(task, func, updated=())
    return task
