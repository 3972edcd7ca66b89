"""Author notifications: donations, forks, entering a top 10; never twice for one cause.
Also the event retention task of jobs/maintenance.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.db import Database
from app.notifications import notify_authors
from app.rollup import run_rollup
from app.settings import Settings
from tests.conftest import drain_queue, make_settings
from tests.rollup_helpers import (
    Donation,
    Event,
    Rule,
    at,
    insert_donations,
    insert_events,
    insert_rules,
)

RULES = [Rule("rul_n1", "usr_a"), Rule("rul_n2", "usr_b", ("go",))]


async def notifications(pool: asyncpg.Pool) -> list[tuple[str, str, str]]:
    rows = await pool.fetch("SELECT author_id, kind, cause_key FROM notifications ORDER BY id")
    return [(r["author_id"], r["kind"], r["cause_key"]) for r in rows]


async def notify(pool: asyncpg.Pool, now: datetime) -> int:
    async with pool.acquire() as conn, conn.transaction():
        return (await notify_authors(conn, now=now)).total


async def test_donations_and_forks_are_notified_once(pool: asyncpg.Pool) -> None:
    await insert_rules(pool, RULES)
    now = datetime.now(UTC)
    await insert_donations(
        pool,
        [
            Donation("don_ok", "usr_a", 500, 0, "succeeded", now - timedelta(hours=1)),
            Donation("don_wait", "usr_a", 900, 0, "pending", now - timedelta(hours=1)),
        ],
    )
    await insert_events(
        pool,
        [
            Event("FORK", "rul_n1", "ip", now - timedelta(hours=2), user_id=None),
            Event("FORK", "rul_n2", "ip", now - timedelta(days=10)),  # beyond the horizon
        ],
    )
    await pool.execute("INSERT INTO users (id, handle) VALUES ('usr_a2', 'a2')")
    await insert_events(pool, [Event("FORK", "rul_n1", "ip", now, user_id="usr_a")])  # self
    assert await notify(pool, now) == 2
    assert await notify(pool, now) == 0  # idempotent
    kinds = [(a, k) for a, k, _ in await notifications(pool)]
    assert sorted(kinds) == [("usr_a", "DONATION"), ("usr_a", "FORK")]
    payload = await pool.fetchval("SELECT payload FROM notifications WHERE kind = 'DONATION'")
    assert payload["amountCents"] == 500 and payload["donationId"] == "don_ok"

    await pool.execute("UPDATE donations SET status = 'succeeded', updated_at = now()")
    assert await notify(pool, now) == 1  # the pending one went through
    await pool.execute("UPDATE donations SET status = 'refunded', updated_at = now()")
    assert await notify(pool, now) == 0  # a refund is not a new donation


async def test_entering_a_top_10_is_notified_once(pool: asyncpg.Pool, settings: Settings) -> None:
    await insert_rules(pool, RULES)
    today = datetime.now(UTC).date()
    day1, day2 = today - timedelta(days=2), today - timedelta(days=1)
    await insert_events(pool, [Event("VIEW", "rul_n1", "ip", at(day1))])
    await run_rollup(Database(pool), end_day=day1, days=1, settings=settings)
    await notify(pool, datetime.now(UTC))
    first = await notifications(pool)
    # rul_n1 and usr_a entered every board they appear on: 4 periods x (rule, author) x GLOBAL.
    assert len(first) == 8 and {a for a, _, _ in first} == {"usr_a"}

    await insert_events(pool, [Event("VIEW", "rul_n2", "ip", at(day2))])
    await run_rollup(Database(pool), end_day=day2, days=2, settings=settings)
    await notify(pool, datetime.now(UTC))
    second = (await notifications(pool))[len(first) :]
    # usr_b's rule is new on every board (GLOBAL and TAG go); usr_a stayed in: nothing new,
    # except the DAILY boards of day 2, which usr_a is no longer on.
    assert {a for a, _, _ in second} == {"usr_b"}
    assert len(second) == 16
    assert await notify(pool, datetime.now(UTC)) == 0


async def test_notify_task_runs_after_a_rollup(
    pool: asyncpg.Pool, proc_app: Any, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    await insert_rules(pool, RULES)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    await insert_events(pool, [Event("FORK", "rul_n2", "ip", at(yesterday, 1))])
    await proc_app.configure_task("rollup").defer_async(date=yesterday.isoformat(), days=1)
    await run_jobs()
    kinds = {k for _, k, _ in await notifications(pool)}
    assert kinds == {"FORK", "LEADERBOARD_TOP10"}


async def test_event_retention_purges_only_when_configured(
    db_url: str, pool: asyncpg.Pool, proc_app: Any
) -> None:

    await insert_rules(pool, RULES)
    now = datetime.now(UTC)
    await insert_events(
        pool,
        [Event("VIEW", "rul_n1", "ip", now - timedelta(days=d)) for d in (1, 29, 35, 90)],
    )

    async def purge(settings: Settings) -> None:
        await proc_app.configure_task("purge_old_events").defer_async()
        await drain_queue(proc_app, pool, settings)

    await purge(make_settings(db_url))  # 0: keep forever
    assert await pool.fetchval("SELECT count(*) FROM events") == 4
    await purge(make_settings(db_url, event_retention_days=60))
    assert await pool.fetchval("SELECT count(*) FROM events") == 3
    await purge(make_settings(db_url, event_retention_days=7))  # never below 31 days
    assert await pool.fetchval("SELECT count(*) FROM events") == 2
