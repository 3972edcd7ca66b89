"""A worker process killed with SIGKILL in the middle of a job.

Each test holds a lock the job needs partway through (a rollup day's advisory lock, a donation
row), so the kill lands at a known point: the job is `doing`, part of its work may have
committed. Another `ingest worker` then takes the job over through `retry_stalled_jobs` (with
JOBS_STALLED_AFTER_S shortened to 2 s) and the database ends exactly as an uninterrupted run
leaves a second database loaded with the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

import asyncpg
import pytest
from procrastinate.exceptions import AlreadyEnqueued

import jobs
from app.db import init_connection
from app.rollup import window
from tests.conftest import drain_queue, make_settings
from tests.faults.conftest import WorkerProcess
from tests.rollup_helpers import Event, Rule, at, insert_events, insert_rules
from tests.stripe_helpers import apply, charge, event, new_id, payment_intent, store

STALLED_AFTER_S = "2"
END_DAY = date(2026, 3, 14)
DAYS = 6
METRIC_COLUMNS = "views, copies, saves, forks, votes, round(trending_score::numeric, 9) AS trending"
DONATION_COLUMNS = (
    "payment_intent_id, author_id, amount_cents, refunded_cents, currency, status::text"
)

StartWorker = Callable[..., Awaitable[WorkerProcess]]


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def job_status(pool: asyncpg.Pool, job_id: int) -> str:
    return str(await pool.fetchval("SELECT status FROM procrastinate_jobs WHERE id = $1", job_id))


async def someone_waits_for_a_lock(pool: asyncpg.Pool) -> bool:
    waiting = await pool.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND a.datname = current_database()"
    )
    return bool(waiting)


async def job_outcome(pool: asyncpg.Pool, job_id: int) -> str | None:
    """`retried` when the job itself succeeded, `replaced` when the copy queued in its stead
    (its queueing lock was taken meanwhile, see jobs/maintenance.py) succeeded, else None."""
    if await job_status(pool, job_id) == "succeeded":
        return "retried"
    copy = await pool.fetchval(
        "SELECT status FROM procrastinate_jobs WHERE queueing_lock LIKE '%:stalled:' || $1",
        str(job_id),
    )
    return "replaced" if copy == "succeeded" else None


async def take_over(
    proc_app: Any,
    pool: asyncpg.Pool,
    job_id: int,
    start_worker: StartWorker,
    db_url: str,
    *,
    queues: str,
    **env: str,
) -> float:
    """Start the second worker, let the killed one's heartbeat go stale, run the stalled-job
    retry (what the every-minute periodic run does) and wait for the job's work to be done."""
    started = time.monotonic()
    await start_worker(db_url, queues=queues, **env)
    await asyncio.sleep(float(STALLED_AFTER_S) + 0.5)
    # The second worker's own every-minute run may be queued already (a queueing lock holds
    # one at most): that one does the same.
    with contextlib.suppress(AlreadyEnqueued):
        await proc_app.configure_task("retry_stalled_jobs").defer_async(timestamp=int(time.time()))

    async def done() -> bool:
        return await job_outcome(pool, job_id) is not None

    await wait_until(done, timeout=60, what=f"job {job_id} to be finished by the second worker")
    return time.monotonic() - started


# --- rollup ---------------------------------------------------------------------------------


def rollup_data() -> tuple[list[Rule], list[Event]]:
    rng = random.Random(11)
    rules = [Rule(f"rul_w{n}", f"usr_w{n % 7}", (f"t{n % 5}",), f"m{n % 3}") for n in range(40)]
    events = [
        Event(
            rng.choice(["VIEW", "VIEW", "COPY", "SAVE", "FORK", "VOTE"]),
            rng.choice(rules).id,
            f"ip{rng.randrange(30)}",
            at(day, rng.randrange(24), rng.randrange(60)),
        )
        for day in window(END_DAY, DAYS)
        for _ in range(300)
    ]
    return rules, events


async def rollup_snapshot(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    """What the rollup wrote for the run's days (later days may see a backfill run)."""
    days = window(END_DAY, DAYS)
    queries = {
        "rules": f"SELECT rule_id, day, {METRIC_COLUMNS} FROM rule_metric_daily",
        "authors": f"SELECT author_id, day, {METRIC_COLUMNS}, donations_count, "
        "donations_amount_cents FROM author_metric_daily",
        "boards": "SELECT day, period, entity, scope, scope_key, rank, entity_id, "
        "round(score::numeric, 9) FROM leaderboard_snapshot",
    }
    out = {}
    for name, sql in queries.items():
        rows = await pool.fetch(f"SELECT * FROM ({sql}) s WHERE day = ANY($1::date[])", days)
        out[name] = sorted(tuple(r) for r in rows)
    return out


async def load_rollup_data(pool: asyncpg.Pool) -> None:
    rules, events = rollup_data()
    await insert_rules(pool, rules)
    await insert_events(pool, events)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_worker_killed_during_a_rollup_is_taken_over(
    db_url: str,
    pool: asyncpg.Pool,
    proc_app: Any,
    second_db_url: str,
    start_worker: StartWorker,
) -> None:
    # The reference: the same data, rolled up by an uninterrupted worker.
    reference = jobs.create_app(second_db_url)
    async with reference.open_async(), await asyncpg.create_pool(second_db_url) as ref_pool:
        await load_rollup_data(ref_pool)
        await reference.configure_task("rollup").defer_async(date=END_DAY.isoformat(), days=DAYS)
        settings = make_settings(second_db_url, rollup_parallelism=1)
        await drain_queue(reference, ref_pool, settings, queues=["rollup"])
        expected = await rollup_snapshot(ref_pool)
    assert expected["rules"] and expected["boards"]

    await load_rollup_data(pool)
    job_id = await proc_app.configure_task("rollup").defer_async(
        date=END_DAY.isoformat(), days=DAYS
    )
    # Hold the last day's advisory lock: the run commits the days before it, then waits.
    blocker = await pool.acquire()
    last = window(END_DAY, DAYS)[-1]
    await blocker.execute(
        "SELECT pg_advisory_lock(hashtext('ingest.rollup.day'), $1::date - date '2000-01-01')",
        last,
    )
    env = {"ROLLUP_PARALLELISM": "1", "JOBS_STALLED_AFTER_S": STALLED_AFTER_S}
    first = await start_worker(db_url, queues="rollup", **env)

    async def stuck_on_the_last_day() -> bool:
        return await someone_waits_for_a_lock(pool) and bool(
            await pool.fetchval("SELECT count(*) FROM rollup_days")
        )

    await wait_until(stuck_on_the_last_day, timeout=60, what="the rollup to reach the last day")
    first.kill()
    assert await first.process.wait() == -9
    committed = await pool.fetchval("SELECT count(*) FROM rollup_days")
    assert await job_status(pool, job_id) == "doing"
    await blocker.execute("SELECT pg_advisory_unlock_all()")
    await pool.release(blocker)

    seconds = await take_over(
        proc_app, pool, job_id, start_worker, db_url, queues="rollup,maintenance", **env
    )
    assert await rollup_snapshot(pool) == expected
    outcome = await job_outcome(pool, job_id)
    print(
        f"\nworker killed during a rollup: {committed} of {DAYS} days had committed; taken over"
        f" ({outcome}: a backfill rollup queued meanwhile may hold the queueing lock)"
        f" and finished {seconds:.1f} s after the second worker started; metrics, trending and"
        f" {len(expected['boards'])} leaderboard rows equal the uninterrupted run's"
    )


# --- stripe ---------------------------------------------------------------------------------


def stripe_events() -> tuple[str, list[dict[str, Any]]]:
    """A paid donation, then its partial refund: the refund is the job that gets killed."""
    pi, ch = new_id("pi"), new_id("ch")
    meta = {"authorId": "usr_stripe_author"}
    paid = event("payment_intent.succeeded", payment_intent(pi, amount=900, meta=meta), at=1)
    refund = event("charge.refunded", charge(pi, ch, amount=900, refunded=300, meta=meta), at=5)
    return pi, [paid, refund]


async def stripe_snapshot(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    donations = await pool.fetch(f"SELECT {DONATION_COLUMNS} FROM donations")
    inbox = await pool.fetch(
        "SELECT id, outcome, processed_at IS NOT NULL AS processed FROM stripe_events"
    )
    applied = await pool.fetch(
        "SELECT subject, count(*) FROM audit_log WHERE action = 'stripe.event_applied' "
        "GROUP BY subject"
    )
    return {
        "donations": sorted(tuple(r) for r in donations),
        "inbox": sorted(tuple(r) for r in inbox),
        "applied": sorted(tuple(r) for r in applied),
    }


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_worker_killed_during_stripe_processing_is_taken_over(
    db_url: str,
    pool: asyncpg.Pool,
    proc_app: Any,
    second_db_url: str,
    start_worker: StartWorker,
) -> None:
    pi, (paid, refund) = stripe_events()
    async with await asyncpg.create_pool(second_db_url, init=init_connection) as ref_pool:
        await apply(ref_pool, paid)
        await apply(ref_pool, refund)
        expected = await stripe_snapshot(ref_pool)
    assert expected["donations"][0][5] == "partially_refunded"

    await apply(pool, paid)
    await store(pool, refund)
    job_id = await proc_app.configure_task("process_stripe_event").defer_async(
        event_id=refund["id"]
    )
    # Hold the donation row: the job locks it, waits, and is killed while it waits.
    blocker = await pool.acquire()
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("SELECT 1 FROM donations WHERE payment_intent_id = $1 FOR UPDATE", pi)
    env = {"STRIPE_LOCK_TIMEOUT_MS": "60000", "JOBS_STALLED_AFTER_S": STALLED_AFTER_S}
    first = await start_worker(db_url, queues="stripe", **env)

    async def job_waits_on_the_row() -> bool:
        return await job_status(pool, job_id) == "doing" and await someone_waits_for_a_lock(pool)

    await wait_until(job_waits_on_the_row, timeout=60, what="the Stripe job to wait on the row")
    first.kill()
    assert await first.process.wait() == -9
    await tx.rollback()
    await pool.release(blocker)
    assert await job_status(pool, job_id) == "doing"

    seconds = await take_over(
        proc_app, pool, job_id, start_worker, db_url, queues="stripe,maintenance", **env
    )
    # The sweeper is not what finished it (its grace is a minute): the stalled job was retried.
    assert await job_outcome(pool, job_id) == "retried"
    assert await stripe_snapshot(pool) == expected
    print(
        f"\nworker killed during Stripe processing: refund job {job_id} taken over and applied"
        f" {seconds:.1f} s after the second worker started; donations, inbox and audit equal"
        " the uninterrupted run's (one stripe.event_applied per event)"
    )


async def test_a_stalled_job_whose_queueing_lock_was_taken_is_replaced_not_stuck(
    pool: asyncpg.Pool, proc_app: Any, db_url: str
) -> None:
    """Found by the rollup test above: a backfill queued a rollup while the killed one was
    `doing`; putting the killed one back violated the queueing lock, the retry task failed every
    minute, and the waiting rollup could never start behind the stalled one's `lock`."""
    stalled = await proc_app.configure_task("rollup").defer_async(date="2026-03-14", days=1)
    await pool.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = $1", stalled)
    waiting = await proc_app.configure_task("rollup").defer_async(date="2026-03-10", days=1)
    await proc_app.configure_task("retry_stalled_jobs").defer_async(timestamp=0)
    await drain_queue(proc_app, pool, make_settings(db_url), queues=["maintenance", "rollup"])
    rows = await pool.fetch(
        "SELECT id, status::text, args, queueing_lock FROM procrastinate_jobs "
        "WHERE task_name IN ('rollup', 'retry_stalled_jobs') ORDER BY id"
    )
    by_id = {r["id"]: r for r in rows}
    assert by_id[stalled]["status"] == "failed"
    assert by_id[waiting]["status"] == "succeeded"
    copies = [r for r in rows if r["queueing_lock"] == f"rollup:stalled:{stalled}"]
    assert [(c["status"], c["args"]) for c in copies] == [
        ("succeeded", {"date": "2026-03-14", "days": 1})
    ]
    assert {r["status"] for r in rows if r["id"] not in (stalled, waiting)} == {"succeeded"}
