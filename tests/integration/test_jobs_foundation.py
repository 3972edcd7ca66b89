"""Procrastinate on the real database: tasks are registered by stable names and run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

import jobs


def test_shell_app_has_stable_task_names() -> None:
    jobs.app.perform_import_paths()
    assert {"retry_stalled_jobs", "purge_old_jobs"} <= set(jobs.app.tasks)


def test_stalled_job_retry_is_periodic_with_a_queueing_lock_only() -> None:
    task = jobs.app.tasks["retry_stalled_jobs"]
    assert task.queueing_lock == "retry_stalled_jobs"
    assert task.lock is None
    crons = {p.task.name: p.cron for p in jobs.app.periodic_registry.periodic_tasks.values()}
    assert crons["retry_stalled_jobs"] == "* * * * *"


async def test_a_job_deferred_by_name_runs_against_the_database(
    proc_app: Any, run_jobs: Callable[[], Awaitable[None]], pool: asyncpg.Pool
) -> None:
    old_id = await proc_app.configure_task("purge_old_jobs").defer_async()
    await pool.execute("UPDATE procrastinate_jobs SET status = 'succeeded' WHERE id = $1", old_id)
    await pool.execute(
        "UPDATE procrastinate_events SET at = now() - interval '10 days' WHERE job_id = $1", old_id
    )
    job_id = await proc_app.configure_task("purge_old_jobs").defer_async()
    await run_jobs()
    status = await pool.fetchval("SELECT status FROM procrastinate_jobs WHERE id = $1", job_id)
    assert status == "succeeded"
    assert await pool.fetchval("SELECT count(*) FROM procrastinate_jobs WHERE id = $1", old_id) == 0


async def test_a_failed_job_whose_queueing_lock_was_taken_meanwhile_is_retried_as_a_copy(
    proc_app: Any, pool: asyncpg.Pool
) -> None:
    """A job with a queueing lock fails after the next job with that lock was queued (its next
    periodic run): Procrastinate's own retry would violate the lock and leave the job `doing`
    under a live worker. It is closed as failed and its retry queued as a copy instead."""
    manager = proc_app.job_manager
    await proc_app.configure_task("notify_authors", queueing_lock="notify_authors").defer_async()
    worker_id = await manager.register_worker()
    running = await manager.fetch_job(queues=None, worker_id=worker_id)
    assert running is not None and running.queueing_lock == "notify_authors"
    await proc_app.configure_task("notify_authors", queueing_lock="notify_authors").defer_async()

    await manager.retry_job(running)

    rows = await pool.fetch(
        "SELECT id, status::text AS status, queueing_lock FROM procrastinate_jobs ORDER BY id"
    )
    assert [(r["status"], r["queueing_lock"]) for r in rows] == [
        ("failed", "notify_authors"),
        ("todo", "notify_authors"),
        ("todo", f"notify_authors:retry:{running.id}"),
    ]
