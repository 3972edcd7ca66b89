"""Jobs whose arguments decide their fate: a queueing lock per Stripe event however the job
is deferred (the webhook, a shell's `procrastinate defer`, `ingest jobs retry`), and an event
id the inbox does not have fails at once, in one log line, instead of after six retries."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from procrastinate.exceptions import AlreadyEnqueued

from app.errors import StripeEventNotFound
from app.logs import BriefExpectedFailures
from app.settings import Settings
from jobs.stripe import PROCESS_TASK
from tests.conftest import drain_queue
from tests.faults.conftest import service_env

PROCRASTINATE = str(Path(sys.executable).parent / "procrastinate")


async def _jobs(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, status::text AS status, attempts, queueing_lock FROM procrastinate_jobs "
        "WHERE task_name = $1 ORDER BY id",
        PROCESS_TASK,
    )


async def test_a_defer_without_a_lock_gets_the_events_lock(
    proc_app: Any, pool: asyncpg.Pool
) -> None:
    await proc_app.configure_task(PROCESS_TASK).defer_async(event_id="evt_a")
    with pytest.raises(AlreadyEnqueued):
        await proc_app.configure_task(PROCESS_TASK).defer_async(event_id="evt_a")
    await proc_app.configure_task(PROCESS_TASK).defer_async(event_id="evt_b")
    assert [j["queueing_lock"] for j in await _jobs(pool)] == [
        "stripe_event:evt_a",
        "stripe_event:evt_b",
    ]


async def test_an_explicit_lock_is_kept(proc_app: Any, pool: asyncpg.Pool) -> None:
    await proc_app.configure_task(PROCESS_TASK, queueing_lock="mine").defer_async(event_id="x")
    assert [j["queueing_lock"] for j in await _jobs(pool)] == ["mine"]


def _defer_from_a_shell(db_url: str, event_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROCRASTINATE, "--app=jobs.app", "defer", PROCESS_TASK, f'{{"event_id": "{event_id}"}}'],
        env=service_env(DATABASE_URL=db_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_shell_defer_holds_the_lock_too(db_url: str, pool: asyncpg.Pool) -> None:
    first = _defer_from_a_shell(db_url, "evt_shell")
    assert first.returncode == 0, first.stderr
    second = _defer_from_a_shell(db_url, "evt_shell")
    assert second.returncode == 1
    assert "stripe_event:evt_shell" in second.stderr
    assert [j["queueing_lock"] for j in await _jobs(pool)] == ["stripe_event:evt_shell"]


async def test_an_unknown_event_fails_at_once_without_retries(
    proc_app: Any, pool: asyncpg.Pool, settings: Settings, db_url: str
) -> None:
    from app.commands.jobs import _retry

    await proc_app.configure_task(PROCESS_TASK).defer_async(event_id="evt_unknown")
    await drain_queue(proc_app, pool, settings)
    [job] = await _jobs(pool)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    # A failed job without a lock (deferred before locks were computed) deferred again by
    # `ingest jobs retry`: the copy gets the event's lock, so a second retry waits for it.
    await pool.execute("UPDATE procrastinate_jobs SET queueing_lock = NULL")
    await _retry(db_url, job["id"])
    with pytest.raises(AlreadyEnqueued):
        await _retry(db_url, job["id"])
    assert [j["queueing_lock"] for j in await _jobs(pool)] == [None, "stripe_event:evt_unknown"]


def test_an_expected_failure_is_one_line_and_a_bug_keeps_its_traceback() -> None:
    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.LogRecord(
                "procrastinate.worker", logging.ERROR, __file__, 1, "job failed", (), sys.exc_info()
            )

    expected = record(StripeEventNotFound("no Stripe event 'evt_x' in the inbox"))
    assert BriefExpectedFailures().filter(expected)
    assert expected.exc_info is None
    assert vars(expected)["error"] == "StripeEventNotFound: no Stripe event 'evt_x' in the inbox"
    bug = record(KeyError("oops"))
    assert BriefExpectedFailures().filter(bug)
    assert bug.exc_info is not None and "error" not in vars(bug)
