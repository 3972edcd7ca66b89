"""Work handed to the worker: the one way the HTTP and command-line sides queue jobs.

Blueprints and commands defer through a `Queue` (on the resources) and never import `jobs/`;
the task names and queueing locks they rely on are defined here, and `jobs/` registers its
tasks under them. A queueing lock keeps at most one job of a kind waiting: deferring another
answers with the one that waits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg
from procrastinate import App, PsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued

from app.db import UNAVAILABLE_ERRORS, Database
from app.errors import DatabaseUnavailable, RebuildNotQueued
from app.sql import queries

ROLLUP_TASK = "rollup"
REFRESH_TASK = "rollup_refresh"
# The older name of the refresh, kept so that existing shell scripts go on working.
BACKFILL_TASK = "rollup_backfill"
ROLLUP_LOCK = "rollup"
REBUILD_SEARCH_TASK = "rebuild_search"
REBUILD_SEARCH_LOCK = "rebuild_search"
PROCESS_STRIPE_TASK = "process_stripe_event"
NOTIFY_TASK = "notify_authors"
# How often a defer refused by a queueing lock looks for the waiting job before giving up
# (the waiting one may start, and free the lock, between the two).
DEFER_ROUNDS = 5


def stripe_event_lock(event_id: str) -> str:
    """At most one `process_stripe_event` job waits per event."""
    return f"stripe_event:{event_id}"


def job_app(conninfo: str) -> App:
    """A Procrastinate app that defers by task name only (no task registered): enough for an
    operator command that queues a job for the workers. The workers' app is `jobs.app`."""
    return App(connector=PsycopgConnector(conninfo=conninfo))


def argument_lock(task_name: str, arguments: dict[str, Any]) -> str | None:
    """The queueing lock a job of `task_name` takes from its arguments (jobs/argument_locks.py
    applies it to every defer on the workers' app; an operator command asks here)."""
    event_id = arguments.get("event_id")
    if task_name == PROCESS_STRIPE_TASK and isinstance(event_id, str):
        return stripe_event_lock(event_id)
    return None


@dataclass(frozen=True)
class Queued:
    job_id: int
    already_queued: bool


async def waiting_job(conn: asyncpg.Connection, *, queueing_lock: str) -> int | None:
    """The id of the job waiting under `queueing_lock`, if one is."""
    job_id = await queries.jobs_waiting_with_lock(conn, queueing_lock=queueing_lock)
    return int(job_id) if job_id is not None else None


class Queue:
    """Defers jobs on the Procrastinate app; reads the waiting ones through `db`."""

    def __init__(self, jobs: App, db: Database) -> None:
        self.jobs = jobs
        self.db = db

    async def rollup(self, *, end_day: date | None, days: int) -> Queued:
        """Queue a rollup, or name the one already waiting: never two waiting jobs."""
        kwargs: dict[str, Any] = {"days": days}
        if end_day is not None:
            kwargs["date"] = end_day.isoformat()
        queued = await self._defer_or_name_waiting(ROLLUP_TASK, ROLLUP_LOCK, kwargs)
        if queued is None:
            raise DatabaseUnavailable("the rollup could not be queued; retry shortly")
        return queued

    async def search_rebuild(self) -> Queued:
        """Queue a search rebuild, or name the one already waiting."""
        queued = await self._defer_or_name_waiting(REBUILD_SEARCH_TASK, REBUILD_SEARCH_LOCK, {})
        if queued is None:
            raise RebuildNotQueued()
        return queued

    async def stripe_event(self, event_id: str) -> bool:
        """Queue the event's processing; False when a job for it already waits (that one will
        do)."""
        lock = stripe_event_lock(event_id)
        try:
            await self._defer(PROCESS_STRIPE_TASK, lock, {"event_id": event_id})
        except AlreadyEnqueued:
            return False
        return True

    async def author_notifications(self) -> None:
        """Queue a notification run unless one is already waiting."""
        with contextlib.suppress(AlreadyEnqueued):
            await self._defer(NOTIFY_TASK, NOTIFY_TASK, {})

    async def _defer_or_name_waiting(
        self, task: str, lock: str, kwargs: dict[str, Any]
    ) -> Queued | None:
        for _ in range(DEFER_ROUNDS):
            try:
                return Queued(job_id=await self._defer(task, lock, kwargs), already_queued=False)
            except AlreadyEnqueued:
                waiting = await self.db.run(
                    f"queue.waiting.{task}", waiting_job, queueing_lock=lock
                )
                if waiting is not None:
                    return Queued(job_id=waiting, already_queued=True)
        return None

    async def _defer(self, task: str, lock: str, kwargs: dict[str, Any]) -> int:
        """One defer; a database that cannot take it is `DatabaseUnavailable`, as for a unit."""
        try:
            deferrer = self.jobs.configure_task(task, queueing_lock=lock)
            return int(await deferrer.defer_async(**kwargs))
        except UNAVAILABLE_ERRORS as exc:
            raise DatabaseUnavailable() from exc
