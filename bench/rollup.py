"""Rollup figures: the nightly 30-day rollup vs the bare capped-count aggregate, same database.

    python -m bench.rollup          # own database (BENCH_DATABASE_URL / DATABASE_URL or embedded)
    BENCH_ROLLUP_EVENTS=500000 python -m bench.rollup    # a quick look (BENCH_ROLLUP_ROUNDS=1)

`measure_rollup(db_url)` generates the events with SQL (skewed rules and client IPs, mostly
VIEWs, in time order as intake writes them), then times, alternately and twice each, the
full rollup exactly as the task runs it (`jobs.rollup.open_rollup_pool` + `run_rollup`, metrics,
trending and leaderboards) and the single statement a naive rollup would be: per rule, day and
type, views capped per client IP, at the server's default settings. Best of two each.
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
from app.rollup.run import open_rollup_pool
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

# The naive rollup: one statement over the whole window, per rule, day and type, VIEWs capped
# per (client IP hash, rule, day) as docs/rollups.md says. Every output column is consumed by
# the outer aggregate so that nothing is pruned, and only one row travels to the client.
BARE_AGGREGATE = """
SELECT count(*) AS rule_days, sum(views) AS views, sum(copies) AS copies, sum(saves) AS saves,
       sum(forks) AS forks, sum(votes) AS votes
FROM (
    SELECT rule_id, day,
           sum(CASE WHEN viewer IS NOT NULL THEN least(n, $3::int) ELSE n END)
               FILTER (WHERE type = 'VIEW') AS views,
           sum(n) FILTER (WHERE type = 'COPY') AS copies,
           sum(n) FILTER (WHERE type = 'SAVE') AS saves,
           sum(n) FILTER (WHERE type = 'FORK') AS forks,
           sum(n) FILTER (WHERE type = 'VOTE') AS votes
    FROM (
        SELECT rule_id, (ts AT TIME ZONE 'UTC')::date AS day, type,
               CASE WHEN type = 'VIEW' THEN ip_hash END AS viewer, count(*) AS n
        FROM events
        WHERE ts >= $1 AND ts < $2
        GROUP BY 1, 2, 3, 4
    ) per_viewer
    GROUP BY rule_id, day
) per_rule_day
"""
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
    pool = await open_rollup_pool(settings)
    try:
        await pool.execute(CLEAR_ROLLUP)
        started = time.perf_counter()
        report = await run_rollup(
            pool, end_day=end_day, days=DAYS, settings=settings, actor="bench"
        )
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    details = report.as_json()
    log(
        f"rollup {elapsed:.2f} s (stage {details['stageMs'] / 1000:.2f} s, apply "
        f"{details['applyMs'] / 1000:.2f} s): {details['rowCounts']}"
    )
    return elapsed, details


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
    return {
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
