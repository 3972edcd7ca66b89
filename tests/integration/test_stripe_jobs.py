"""Stripe jobs: retries, the inbox sweeper, and the operator commands."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from app.cli import main
from app.resources import Resources
from app.settings import Settings
from jobs.stripe import PROCESS_TASK, SWEEP_TASK, sweep_inbox
from tests.conftest import drain_queue, make_settings
from tests.stripe_helpers import apply, charge, donation, event, new_id, payment_intent, store


async def stripe_job(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record:
    return await pool.fetchrow(
        "SELECT id, status::text AS status, attempts, scheduled_at FROM procrastinate_jobs "
        "WHERE task_name = $1 AND queueing_lock = $2 ORDER BY id DESC LIMIT 1",
        PROCESS_TASK,
        f"stripe_event:{event_id}",
    )


async def test_a_failing_task_is_retried_and_then_succeeds(
    pool: asyncpg.Pool, proc_app: Any, db_url: str
) -> None:
    """The first attempt meets a donation row locked by another session (a real lock
    timeout), fails and is recorded; the retry, once the lock is gone, applies the refund."""
    settings = make_settings(db_url, stripe_lock_timeout_ms=200)
    pi, ch = new_id("pi"), new_id("ch")
    await apply(pool, event("payment_intent.succeeded", payment_intent(pi), at=1))
    refund = event("charge.refunded", charge(pi, ch, refunded=500), at=5)
    await store(pool, refund)
    assert await Resources.build(settings, pool=pool, jobs=proc_app).queue.stripe_event(
        refund["id"]
    )

    holder = await pool.acquire()
    blocking = holder.transaction()
    await blocking.start()
    await holder.execute("SELECT 1 FROM donations WHERE payment_intent_id = $1 FOR UPDATE", pi)
    try:
        await drain_queue(proc_app, pool, settings)
    finally:
        await blocking.rollback()
        await pool.release(holder)

    job = await stripe_job(pool, refund["id"])
    assert (job["status"], job["attempts"]) == ("todo", 1)  # retry scheduled, back-off
    inbox = await pool.fetchrow("SELECT * FROM stripe_events WHERE id = $1", refund["id"])
    assert inbox["processed_at"] is None and inbox["outcome"] == "failed"
    assert inbox["attempts"] == 1 and "LockNotAvailable" in inbox["error"]
    assert (await donation(pool, pi) or {})["status"] == "succeeded"
    failed = await pool.fetchrow(
        "SELECT details FROM audit_log WHERE action = 'stripe.event_failed'"
    )
    assert failed["details"]["attempt"] == 1

    # Time moves on: the retry is due now (explicit timestamp instead of a sleep).
    await pool.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now() WHERE id = $1", job["id"]
    )
    await drain_queue(proc_app, pool, settings)
    job = await stripe_job(pool, refund["id"])
    assert job["status"] == "succeeded"
    inbox = await pool.fetchrow("SELECT * FROM stripe_events WHERE id = $1", refund["id"])
    assert (inbox["outcome"], inbox["attempts"], inbox["error"]) == ("applied", 2, None)
    assert inbox["processed_at"] is not None
    assert (await donation(pool, pi) or {})["status"] == "refunded"


async def test_the_sweeper_picks_up_a_row_stranded_without_a_job(
    pool: asyncpg.Pool, proc_app: Any, settings: Settings
) -> None:
    """A crash between the inbox commit and the defer leaves a row and no job."""
    stranded = event("payment_intent.succeeded", payment_intent(new_id("pi")))
    fresh = event("payment_intent.succeeded", payment_intent(new_id("pi")))
    queued = event("payment_intent.succeeded", payment_intent(new_id("pi")))
    for evt in (stranded, fresh, queued):
        await store(pool, evt)
    await pool.execute(
        "UPDATE stripe_events SET received_at = now() - interval '10 minutes' WHERE id <> $1",
        fresh["id"],
    )
    res = Resources.build(settings, pool=pool, jobs=proc_app)
    assert await res.queue.stripe_event(queued["id"])

    report = await sweep_inbox(res)
    assert report.requeued == [stranded["id"]]  # not the young one, not the queued one
    again = await sweep_inbox(res)
    assert again.requeued == []  # its job is waiting now: never two
    await drain_queue(proc_app, pool, settings)
    processed = await pool.fetch("SELECT id FROM stripe_events WHERE processed_at IS NOT NULL")
    assert {r["id"] for r in processed} == {stranded["id"], queued["id"]}
    swept = await pool.fetchrow("SELECT details FROM audit_log WHERE action = 'stripe.inbox_swept'")
    assert swept["details"]["requeued"] == [stranded["id"]]


async def test_the_sweeper_retakes_exhausted_rows_with_growing_back_off(
    pool: asyncpg.Pool, proc_app: Any, settings: Settings
) -> None:
    due = event("payment_intent.succeeded", payment_intent(new_id("pi")))
    resting = event("payment_intent.succeeded", payment_intent(new_id("pi")))
    for evt in (due, resting):
        await store(pool, evt)
    # Both failed 7 times (a job's whole retry budget); 10 s x 2^7 = 21 minutes of rest.
    await pool.execute(
        "UPDATE stripe_events SET received_at = now() - interval '1 day', attempts = 7, "
        "outcome = 'failed', error = 'boom', last_attempt_at = CASE WHEN id = $1 "
        "THEN now() - interval '30 minutes' ELSE now() - interval '5 minutes' END",
        due["id"],
    )
    report = await sweep_inbox(Resources.build(settings, pool=pool, jobs=proc_app))
    assert report.requeued == [due["id"]]


async def test_the_periodic_sweeper_task_runs_from_the_queue(
    pool: asyncpg.Pool, proc_app: Any, settings: Settings
) -> None:
    stranded = event("payment_intent.succeeded", payment_intent(new_id("pi")))
    await store(pool, stranded)
    await pool.execute("UPDATE stripe_events SET received_at = now() - interval '1 hour'")
    assert SWEEP_TASK in proc_app.tasks
    periodic = {t.periodic_id for t in proc_app.periodic_registry.periodic_tasks.values()}
    assert "sweep_stripe_inbox" in periodic
    await proc_app.configure_task(SWEEP_TASK).defer_async()
    await drain_queue(proc_app, pool, settings)
    await drain_queue(proc_app, pool, settings)
    row = await pool.fetchrow("SELECT processed_at, outcome FROM stripe_events")
    assert row["processed_at"] is not None and row["outcome"] == "applied"


# --- operator commands --------------------------------------------------------------------


def in_db(db_url: str, fn: Any) -> Any:
    async def run() -> Any:
        from app.db import create_pool

        pool = await create_pool(db_url, min_size=1, max_size=2)
        try:
            return await fn(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


@pytest.fixture
def shell(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", db_url)
    return db_url


def test_pending_lists_unprocessed_rows_and_replay_processes_one(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pi = new_id("pi")
    evt = event("payment_intent.succeeded", payment_intent(pi, amount=900))
    in_db(shell, lambda pool: store(pool, evt))
    assert main(["stripe", "pending"]) == 0
    listing = capsys.readouterr().out
    assert evt["id"] in listing and "payment_intent.succeeded" in listing

    assert main(["stripe", "replay", evt["id"]]) == 0
    assert '"outcome": "applied"' in capsys.readouterr().out
    assert main(["stripe", "pending"]) == 0
    assert "no unprocessed Stripe events" in capsys.readouterr().out
    row = in_db(shell, lambda pool: donation(pool, pi))
    assert (row["status"], row["amount_cents"]) == ("succeeded", 900)

    # A replay of a processed event re-applies it: idempotent, nothing counted twice.
    assert main(["stripe", "replay", evt["id"]]) == 0
    assert '"changed": false' in capsys.readouterr().out
    count = in_db(shell, lambda pool: pool.fetchval("SELECT count(*) FROM donations"))
    assert count == 1
    actors = in_db(
        shell,
        lambda pool: pool.fetch(
            "SELECT actor FROM audit_log WHERE action = 'stripe.event_applied'"
        ),
    )
    assert len(actors) == 2 and all(a["actor"].startswith("cli:") for a in actors)


def test_replay_of_an_unknown_event_is_an_error(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stripe", "replay", "evt_nope"]) == 2
    assert "no Stripe event 'evt_nope'" in capsys.readouterr().err
