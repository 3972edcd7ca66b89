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
