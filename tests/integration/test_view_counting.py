"""Which views count: decided by the rollup from the stored views (docs/rollups.md), so the same
views give the same numbers whatever order, batching and lateness they arrived with."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg
import httpx

from app.db import Database
from app.rollup import run_rollup, utc_today
from app.settings import Settings
from tests.conftest import APP_HEADERS
from tests.factories import create_rule

IP = "198.51.100.7"


def at(day: date, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm, ss), tzinfo=UTC)


def views(rule: str, times: list[datetime], ip: str = IP) -> list[dict[str, Any]]:
    return [{"type": "VIEW", "ruleId": rule, "ip": ip, "ts": t.isoformat()} for t in times]


async def send(http: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    response = await http.post("/ingest/events", json={"events": events}, headers=APP_HEADERS)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(events)


async def counted(pool: asyncpg.Pool, rule: str) -> dict[date, int]:
    rows = await pool.fetch("SELECT day, views FROM rule_metric_daily WHERE rule_id = $1", rule)
    return {r["day"]: r["views"] for r in rows}


async def test_one_view_per_ten_minute_slot_and_five_a_day(
    http: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    rule = await create_rule(pool)
    day = utc_today() - timedelta(days=2)
    times = [
        at(day, 10, 0),
        at(day, 10, 9, 59),  # same slot as 10:00
        at(day, 10, 10),  # the next slot
        at(day, 23, 59, 59),  # the day's last slot
        at(day + timedelta(days=1), 0, 0, 1),  # a second later: the next day's first slot
    ]
    await send(http, views(rule, times))
    await send(http, views(rule, [at(day, 12, 0)], ip="198.51.100.8"))  # another client
    await run_rollup(Database(pool), end_day=day + timedelta(days=1), days=2, settings=settings)
    assert await counted(pool, rule) == {day: 3 + 1, day + timedelta(days=1): 1}

    # Five more slots of the first client that day, eight in all: capped at five per client,
    # rule and day.
    await send(http, views(rule, [at(day, 14, 10 * n) for n in range(1, 6)]))
    await run_rollup(Database(pool), settings=settings)  # the refresh: only the dirty day
    assert (await counted(pool, rule))[day] == 5 + 1


async def test_the_same_views_in_any_order_and_lateness_count_alike(
    http: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    """Rules A and B get the same views (same client, same instants). A's arrive in time order
    in one batch; B's shuffled, in small batches, some days late after rollups ran. Once the
    refresh has run, both have the same counts and trending on every day."""
    a, b = await create_rule(pool), await create_rule(pool)
    today = utc_today()
    rng = random.Random(7)
    times = sorted(
        at(today - timedelta(days=1 + rng.randrange(6)), rng.randrange(24), rng.randrange(60))
        for _ in range(60)
    )
    await send(http, views(a, times))
    shuffled = rng.sample(times, len(times))
    on_time, late = shuffled[:40], shuffled[40:]
    for start in range(0, len(on_time), 7):
        await send(http, views(b, on_time[start : start + 7]))
    await run_rollup(Database(pool), end_day=today, days=7, settings=settings)
    await send(http, views(b, late))
    await run_rollup(Database(pool), settings=settings)  # the schedule's refresh
    assert await counted(pool, a) == await counted(pool, b)
    trending = await pool.fetch(
        "SELECT rule_id, day, trending_score FROM rule_metric_daily ORDER BY day"
    )
    by_rule: dict[str, list[tuple[date, float]]] = {a: [], b: []}
    for row in trending:
        by_rule[row["rule_id"]].append((row["day"], row["trending_score"]))
    assert by_rule[a] == by_rule[b] and by_rule[a]


async def test_a_late_view_days_before_the_latest_one_counts(
    http: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    rule = await create_rule(pool)
    latest = utc_today() - timedelta(days=1)
    await send(http, views(rule, [at(latest, 0, 5)]))
    await run_rollup(Database(pool), end_day=latest, days=1, settings=settings)
    earlier = latest - timedelta(days=4)
    await send(http, views(rule, [at(earlier, 18, 0)]))  # four days older than the stored one
    report = await run_rollup(Database(pool), settings=settings)
    assert report.days == [earlier] and report.reasons[earlier.isoformat()] == ["never_rolled"]
    assert report.refreshed_days == [latest]  # its trending and boards read the earlier day
    assert await counted(pool, rule) == {earlier: 1, latest: 1}
