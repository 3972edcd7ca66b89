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


def slots_model(
    events: list[tuple[str, str, str | None, datetime]], cap: int
) -> dict[str, list[int]]:
    """The count as docs/rollups.md states it: per (rule, client), the 10-minute slots with a
    VIEW, at most `cap`; every other event, and a VIEW without a client, once."""
    types = ["VIEW", "COPY", "SAVE", "FORK", "VOTE"]
    slots: dict[tuple[str, str], set[datetime]] = {}
    out: dict[str, list[int]] = {}
    for rule, kind, ip_hash, ts in events:
        row = out.setdefault(rule, [0] * len(types))
        if kind == "VIEW" and ip_hash is not None:
            slots.setdefault((rule, ip_hash), set()).add(
                ts.replace(minute=ts.minute // 10 * 10, second=0, microsecond=0)
            )
        else:
            row[types.index(kind)] += 1
    for (rule, _), seen in slots.items():
        out[rule][0] += min(len(seen), cap)
    return out


async def test_the_day_count_matches_its_definition_for_every_shape_of_a_clients_views(
    pool: asyncpg.Pool,
) -> None:
    """Clients with one view, several in one slot, two in two slots, many over a few slots
    (the count reads those again), views without a client, other types: the SQL count equals
    the definition for several caps, whether the planner groups in the index's order (as the
    rollup has it) or hashes."""
    rng = random.Random(17)
    day = utc_today() - timedelta(days=3)
    rules = [await create_rule(pool) for _ in range(3)]
    clients: list[str | None] = [f"{n:032x}" for n in range(8)] + [None]
    events = []
    for _ in range(600):
        minute = rng.choice([0, 1, 9, 10, 11, 59, 60, 61, 600, 1439])
        ts = datetime.combine(day, time(), tzinfo=UTC) + timedelta(
            minutes=minute, seconds=rng.randrange(60), microseconds=rng.randrange(1_000_000)
        )
        kind = "VIEW" if rng.random() < 0.8 else rng.choice(["COPY", "SAVE", "FORK", "VOTE"])
        events.append((rng.choice(rules), kind, rng.choice(clients), ts))
    # A client with exactly two views in one slot, and one with two in two slots.
    base = datetime.combine(day, time(15), tzinfo=UTC)
    events += [
        (rules[0], "VIEW", "f" * 32, base),
        (rules[0], "VIEW", "f" * 32, base + timedelta(minutes=9)),
    ]
    events += [
        (rules[1], "VIEW", "e" * 32, base),
        (rules[1], "VIEW", "e" * 32, base + timedelta(minutes=10)),
    ]
    # And a late event the day after, which is not this day's.
    events_next = [
        (rules[0], "VIEW", "f" * 32, datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC))
    ]
    await pool.executemany(
        "INSERT INTO events (rule_id, type, ip_hash, ts) VALUES ($1, $2, $3, $4)",
        events + events_next,
    )
    for cap in (1, 2, 5):
        expected = slots_model(events, cap)
        for hashagg in ("off", "on"):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL enable_hashagg = {hashagg}")
                rows = await conn.fetch("SELECT * FROM rollup_rule_counts_of_day($1, $2)", day, cap)
            got = {
                r["rule_id"]: [r["views"], r["copies"], r["saves"], r["forks"], r["votes"]]
                for r in rows
            }
            assert got == expected, (cap, hashagg)
