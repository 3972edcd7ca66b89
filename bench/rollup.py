"""Rollup figures: the 30-day rollup vs the bare counting aggregate, the cascade, the no-op.

    python -m bench.rollup          # own database (BENCH_DATABASE_URL / DATABASE_URL or embedded)
    BENCH_ROLLUP_EVENTS=500000 python -m bench.rollup    # a quick look (BENCH_ROLLUP_ROUNDS=1)

`measure_rollup(db_url)` generates the events with SQL (skewed rules and client IPs, mostly
VIEWs, in time order as intake writes them), then times, alternately and twice each, the
full rollup exactly as the task runs it (`app.rollup.run.open_rollup_db` + `run_rollup`,
metrics, trending and leaderboards) and the single statement a naive rollup would be: per rule,
day and type, views counted once per client IP and 10-minute slot and capped per client IP and
day, at the server's default settings. Best of two each. Then the worst case of a late event: one
event for the oldest day of the window, received now, and the refresh the schedule runs (the day
and the 29 days after it: `rollup_cascade_s`); then that refresh once more, with nothing dirty
(`rollup_noop_ms`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from app.rollup import VIEW_CAP, run_rollup
from app.rollup.run import open_rollup_db
from app.settings import Settings
from bench.harness import connected

EVENTS = int(os.environ.get("BENCH_ROLLUP_EVENTS", "5000000"))
DAYS = 30
RULES = 10_000
AUTHORS = 1_000
IPS = 100_000
TAGS = 30
MODELS = 5
ROUNDS = int(os.environ.get("BENCH_ROLLUP_ROUNDS", "2"))

# Ids as bench.ingest.seed writes them, so either seeding leaves the same catalogue shape.
SEED_USERS = """
INSERT INTO users (id, handle)
SELECT 'usr_' || i, 'user' || i FROM generate_series(1, $1::int) i
ON CONFLICT DO NOTHING
"""
SEED_RULES = """
INSERT INTO rules (id, author_id, title, tags, model)
SELECT 'rul_' || i, 'usr_' || (1 + i % $2::int), 'Rule ' || i,
       ARRAY['tag' || (i % $3::int), 'tag' || ((i / $3::int + 7 * i) % $3::int)],
       'model-' || (i % $4::int)
FROM generate_series(1, $1::int) i
ON CONFLICT DO NOTHING
"""

# One UTC day of events, in ts order. Rule and IP popularity follow power laws (a few rules and
# a few clients take most of the traffic, so the per-IP view cap bites); 80 % VIEW, 8 % COPY,
# 6 % SAVE, 2 % FORK, 4 % VOTE; one event in ten carries an idempotency key.
GENERATE_DAY = """
INSERT INTO events (type, rule_id, ip_hash, ts, idempotency_key, received_at)
SELECT CASE WHEN t < 0.80 THEN 'VIEW' WHEN t < 0.88 THEN 'COPY' WHEN t < 0.94 THEN 'SAVE'
            WHEN t < 0.96 THEN 'FORK' ELSE 'VOTE' END,
       'rul_' || (1 + floor(power(r, 3) * $3::int))::int,
       md5('ip' || (1 + floor(power(p, 2) * $4::int))::int),
       ts,
       CASE WHEN k < 0.1 THEN 'bench-' || $1::date || '-' || g END,
       ts + interval '2 seconds'
FROM (
    SELECT g, random() AS t, random() AS r, random() AS p, random() AS k,
           ($1::date)::timestamp AT TIME ZONE 'UTC' + g * (interval '1 day' / $2::int) AS ts
    FROM generate_series(0, $2::int - 1) g
) s
"""
EVENTS_IN_WINDOW = "SELECT count(*) FROM events WHERE ts >= $1 AND ts < $2"

# The naive rollup: one statement over the whole window, per rule, day and type, VIEWs counted
# once per (client IP hash, rule, 10-minute slot) and capped per (client IP hash, rule, day) as
# docs/rollups.md says. Every output column is consumed by the outer aggregate so that nothing is
# pruned, and only one row travels to the client.
BARE_AGGREGATE = """
SELECT count(*) AS rule_days, sum(views) AS views, sum(copies) AS copies, sum(saves) AS saves,
       sum(forks) AS forks, sum(votes) AS votes
FROM (
    SELECT rule_id, day,
           sum(n) FILTER (WHERE type = 'VIEW') AS views,
           sum(n) FILTER (WHERE type = 'COPY') AS copies,
           sum(n) FILTER (WHERE type = 'SAVE') AS saves,
           sum(n) FILTER (WHERE type = 'FORK') AS forks,
           sum(n) FILTER (WHERE type = 'VOTE') AS votes
    FROM (
        SELECT rule_id, day, type,
               CASE WHEN viewer IS NOT NULL THEN least(count(*), $3::int) ELSE sum(n) END AS n
        FROM (
            SELECT rule_id, (ts AT TIME ZONE 'UTC')::date AS day, type,
                   CASE WHEN type = 'VIEW' THEN ip_hash END AS viewer,
                   CASE WHEN type = 'VIEW' AND ip_hash IS NOT NULL
                        THEN date_bin('10 minutes', ts, timestamptz '2000-01-01 00:00:00+00')
                   END AS slot,
                   count(*) AS n
            FROM events
            WHERE ts >= $1 AND ts < $2
            GROUP BY 1, 2, 3, 4, 5
        ) per_slot
        GROUP BY rule_id, day, type, viewer
    ) per_viewer
    GROUP BY rule_id, day
) per_rule_day
"""
# One late event for the oldest day of the window, received now (as intake stamps it).
LATE_EVENT = "INSERT INTO events (type, rule_id, ip_hash, ts) VALUES ('FORK', 'rul_1', 'late', $1)"
CLEAR_ROLLUP = "TRUNCATE rule_metric_daily, author_metric_daily, leaderboard_snapshot, rollup_days"


def log(message: str) -> None:
    print(f"[rollup {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def seed_catalogue(conn: asyncpg.Connection) -> None:
    """Users and rules the events point at; rows bench.ingest.seed already wrote are kept."""
    await conn.execute(SEED_USERS, AUTHORS)
    await conn.execute(SEED_RULES, RULES, AUTHORS, TAGS, MODELS)


async def generate_events(conn: asyncpg.Connection, *, first_day: date, events: int) -> int:
    """`events` events over DAYS days from `first_day`, one statement per day, in time order
    (as intake appends them: the BRIN index on ts relies on it). Skipped when already there."""
    start, end = utc_midnight(first_day), utc_midnight(first_day + timedelta(days=DAYS))
    present = int(await conn.fetchval(EVENTS_IN_WINDOW, start, end))
    if present >= events:
        log(f"{present:,} events already in the window: generation skipped")
        return present
    per_day = events // DAYS
    started = time.perf_counter()
    for n in range(DAYS):
        await conn.execute(GENERATE_DAY, first_day + timedelta(days=n), per_day, RULES, IPS)
        if n % 5 == 4:
            log(f"generated {per_day * (n + 1):,} events ({time.perf_counter() - started:.0f} s)")
    log("VACUUM ANALYZE events (hint bits and statistics, as autovacuum leaves them)")
    await conn.execute("VACUUM (ANALYZE) events")
    return per_day * DAYS


async def time_bare(db_url: str, *, first_day: date) -> float:
    """The naive single statement, on a plain connection at the server's defaults."""
    async with connected(db_url) as conn:
        start, end = utc_midnight(first_day), utc_midnight(first_day + timedelta(days=DAYS))
        started = time.perf_counter()
        row = await conn.fetchrow(BARE_AGGREGATE, start, end, VIEW_CAP, timeout=3600)
        elapsed = time.perf_counter() - started
    log(f"bare aggregate {elapsed:.2f} s: {dict(row) if row else {}}")
    return elapsed


async def time_rollup(db_url: str, *, end_day: date) -> tuple[float, dict[str, Any]]:
    """A full first roll of the window (metric tables emptied first), as the task runs it."""
    settings = Settings(database_url=db_url)
    db = await open_rollup_db(settings)
    try:
        await db.pool.execute(CLEAR_ROLLUP)
        started = time.perf_counter()
        report = await run_rollup(db, end_day=end_day, days=DAYS, settings=settings, actor="bench")
        elapsed = time.perf_counter() - started
    finally:
        await db.close()
    details = report.as_json()
    log(
        f"rollup {elapsed:.2f} s (stage {details['stageMs'] / 1000:.2f} s, apply "
        f"{details['applyMs'] / 1000:.2f} s): {details['rowCounts']}"
    )
    return elapsed, details


async def time_refreshes(db_url: str, *, first_day: date) -> dict[str, Any]:
    """The schedule's refresh after one late event for `first_day` (it and every later rolled
    day), then the same refresh with nothing dirty."""
    settings = Settings(database_url=db_url)
    db = await open_rollup_db(settings)
    try:
        await db.pool.execute(LATE_EVENT, utc_midnight(first_day) + timedelta(hours=12))
        # Past ROLLUP_FACTS_MARGIN_S, so that the run counts the event as seen (docs/rollups.md).
        await asyncio.sleep(settings.rollup_facts_margin_s + 0.5)
        started = time.perf_counter()
        cascade = await run_rollup(db, settings=settings, actor="bench")
        cascade_s = time.perf_counter() - started
        started = time.perf_counter()
        noop = await run_rollup(db, settings=settings, actor="bench")
        noop_ms = (time.perf_counter() - started) * 1000
    finally:
        await db.close()
    log(
        f"cascade {cascade_s:.2f} s ({len(cascade.days)} day rolled, "
        f"{len(cascade.refreshed_days)} refreshed); no-op refresh {noop_ms:.1f} ms "
        f"({len(noop.days)} days)"
    )
    return {
        "rollup_cascade_s": round(cascade_s, 2),
        "rollup_cascade_days": len(cascade.days) + len(cascade.refreshed_days),
        "rollup_noop_ms": round(noop_ms, 1),
    }


async def measure(db_url: str, *, events: int = EVENTS) -> dict[str, Any]:
    end_day = datetime.now(UTC).date() - timedelta(days=1)
    first_day = end_day - timedelta(days=DAYS - 1)
    async with connected(db_url, command_timeout=3600) as conn:
        await seed_catalogue(conn)
        log(f"generating {events:,} events over {DAYS} days ({first_day} to {end_day})")
        started = time.perf_counter()
        generated = await generate_events(conn, first_day=first_day, events=events)
        generate_s = time.perf_counter() - started
    bare, rolls = [], []
    for n in range(ROUNDS):
        log(f"round {n + 1} of {ROUNDS}")
        bare.append(await time_bare(db_url, first_day=first_day))
        rolls.append(await time_rollup(db_url, end_day=end_day))
    rollup_s, report = min(rolls, key=lambda r: r[0])
    bare_s = min(bare)
    refreshes = await time_refreshes(db_url, first_day=first_day)
    return {
        **refreshes,
        "rollup_s": round(rollup_s, 2),
        "bare_aggregate_s": round(bare_s, 2),
        "rollup_vs_bare": round(rollup_s / bare_s, 3),
        "rollup_events": generated,
        "rollup_days": DAYS,
        "rollup_stage_s": round(report["stageMs"] / 1000, 2),
        "rollup_apply_s": round(report["applyMs"] / 1000, 2),
        "rollup_row_counts": report["rowCounts"],
        "rollup_runs_s": [round(r[0], 2) for r in rolls],
        "bare_aggregate_runs_s": [round(b, 2) for b in bare],
        "rollup_generate_s": round(generate_s, 1),
    }


def measure_rollup(db_url: str) -> dict[str, Any]:
    """Figures for `make bench`: rollup_s, bare_aggregate_s, rollup_vs_bare, rollup_events.

    `db_url` is a fresh, migrated database; users and rules are seeded here if missing."""
    return asyncio.run(measure(db_url))


def main() -> int:
    from bench import harness

    with harness.postgres_server() as admin_url, harness.fresh_database(admin_url) as db_url:
        figures = measure_rollup(db_url)
    print(json.dumps(figures, indent=2))
    print(
        f"rollup {figures['rollup_s']:.2f} s vs bare aggregate {figures['bare_aggregate_s']:.2f} s"
        f" = {figures['rollup_vs_bare']:.2f}x  (target <= 1.0, and rollup < 30 s)"
    )
    print(
        f"cascade of a late event for the oldest day {figures['rollup_cascade_s']:.2f} s"
        f" ({figures['rollup_cascade_days']} days);"
        f" no-op refresh {figures['rollup_noop_ms']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
