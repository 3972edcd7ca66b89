"""A database as 30 days of traffic leave it, generated in SQL (for `make bench-scale`).

`generate(db_url, events=N)` writes N events spread evenly over the 30 UTC days before today,
plus today's share up to now, straight into the day partitions of `events`: each day is loaded
with `generate_series` into a table of its own, given the partitions' indexes, foreign keys and a
CHECK constraint of its range, and then attached (PostgreSQL attaches the existing indexes and
foreign keys and skips the range scan), two days at a time on two connections. Rules, client IPs
and types follow the shapes of bench.rollup (power laws, 80 % VIEW); one event in ten carries an
idempotency key shaped like the clients' random UUIDs. Then the state intake keeps after such
traffic: the keys of those events in `event_idempotency_keys`, inserted in arrival order (so the
index has the shape random keys give it, not the denser one of a sorted build), and one
`events.accepted` audit row per 100 events. Last, VACUUM ANALYZE, as autovacuum leaves tables.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from bench.harness import connected
from bench.rollup import IPS, RULES, log, seed_catalogue, utc_midnight

DAYS = 30
KEYED = 0.10
AUDIT_BATCH = 100
LOADERS = 2

# One day's rows into a table of its own, in ts order, ids given (the identity is the parent's).
LOAD_DAY = """
INSERT INTO {table} (id, type, rule_id, ip_hash, ts, idempotency_key, received_at)
SELECT $5::bigint + g,
       CASE WHEN t < 0.80 THEN 'VIEW' WHEN t < 0.88 THEN 'COPY' WHEN t < 0.94 THEN 'SAVE'
            WHEN t < 0.96 THEN 'FORK' ELSE 'VOTE' END,
       'rul_' || (1 + floor(power(r, 3) * $3::int))::int,
       md5('ip' || (1 + floor(power(p, 2) * $4::int))::int),
       ts,
       CASE WHEN k < $6::float8 THEN gen_random_uuid()::text END,
       ts + interval '2 seconds'
FROM (
    SELECT g, random() AS t, random() AS r, random() AS p, random() AS k,
           $1::timestamptz + g * (($2::timestamptz - $1::timestamptz) / $7::int) AS ts
    FROM generate_series(0, $7::int - 1) g
) s
"""
# What migrations 0014 and 0015 give every partition, so that ATTACH finds it all in place.
PARTITION_SHAPE = (
    "ALTER TABLE {table} ADD PRIMARY KEY (ts, id)",
    "CREATE INDEX ON {table} (rule_id, type, ip_hash, ts)",
    "CREATE INDEX ON {table} (received_at)",
    "ALTER TABLE {table} "
    "ADD FOREIGN KEY (rule_id) REFERENCES rules (id) ON DELETE CASCADE, "
    "ADD FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL, "
    "ADD CONSTRAINT {table}_range CHECK (ts >= '{lo}' AND ts < '{hi}')",
)
ATTACH = "ALTER TABLE events ATTACH PARTITION {table} FOR VALUES FROM ('{lo}') TO ('{hi}')"
KEYS_OF_DAY = """
INSERT INTO event_idempotency_keys (key, ts)
SELECT idempotency_key, ts FROM {table} WHERE idempotency_key IS NOT NULL ORDER BY ts
"""
AUDIT_ROWS = """
INSERT INTO audit_log (at, actor, action, details)
SELECT $1::timestamptz + g * (($2::timestamptz - $1::timestamptz) / $3::int), 'app:bench',
       'events.accepted',
       jsonb_build_object('received', 100, 'accepted', 100, 'duplicates', 0, 'rejected', 0)
FROM generate_series(0, $3::int - 1) g
"""


def partition(day: date) -> str:
    return f"events_{day:%Y%m%d}"


def plan_days(events: int, now: datetime) -> list[tuple[date, datetime, datetime, int]]:
    """(day, first ts, end, rows) for the 30 days before today and today up to `now`."""
    per_day = events / DAYS
    today = now.date()
    out = []
    for n in range(DAYS, -1, -1):
        day = today - timedelta(days=n)
        start = utc_midnight(day)
        end = min(start + timedelta(days=1), now)
        rows = round(per_day * (end - start) / timedelta(days=1))
        if rows > 0:
            out.append((day, start, end, rows))
    return out


async def load_day(
    conn: asyncpg.Connection, *, day: date, start: datetime, end: datetime, rows: int, first_id: int
) -> None:
    """One day into a table of its own, indexed, constrained, then attached as its partition."""
    table = partition(day)
    lo, hi = utc_midnight(day).isoformat(), (utc_midnight(day) + timedelta(days=1)).isoformat()
    await conn.execute(
        f"CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    await conn.execute(LOAD_DAY.format(table=table), start, end, RULES, IPS, first_id, KEYED, rows)
    for statement in PARTITION_SHAPE:
        await conn.execute(statement.format(table=table, lo=lo, hi=hi))
    await conn.execute(ATTACH.format(table=table, lo=lo, hi=hi))
    await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_range")


async def _in_parallel(db_url: str, jobs: list[Any]) -> None:
    """Run coroutine factories `job(conn)` on LOADERS connections, each taking the next one."""
    queue = list(jobs)

    async def loader() -> None:
        async with connected(db_url, command_timeout=3600) as conn:
            await conn.execute("SET maintenance_work_mem = '256MB'")
            while queue:
                await queue.pop(0)(conn)

    await asyncio.gather(*(loader() for _ in range(LOADERS)))


async def generate(db_url: str, *, events: int) -> dict[str, Any]:
    """The history and intake state described in the module docstring; returns what it wrote
    and how long each part took."""
    now = datetime.now(UTC)
    days = plan_days(events, now)
    figures: dict[str, Any] = {"history_days": len(days), "history_first_day": str(days[0][0])}
    async with connected(db_url, command_timeout=3600) as conn:
        await seed_catalogue(conn)
    started = time.perf_counter()
    async with connected(db_url) as conn:  # the migration's empty partitions of those days
        for day, *_ in days:
            await conn.execute(f"DROP TABLE IF EXISTS {partition(day)}")
    first_ids = [1 + sum(d[3] for d in days[:i]) for i in range(len(days))]

    def job(spec: tuple[date, datetime, datetime, int], first_id: int) -> Any:
        day, start, end, rows = spec
        return lambda conn: load_day(
            conn, day=day, start=start, end=end, rows=rows, first_id=first_id
        )

    await _in_parallel(db_url, [job(d, i) for d, i in zip(days, first_ids, strict=True)])
    figures["history_events"] = sum(d[3] for d in days)
    figures["load_s"] = round(time.perf_counter() - started, 1)
    log(f"{figures['history_events']:,} events loaded in {figures['load_s']} s")

    started = time.perf_counter()
    async with connected(db_url, command_timeout=3600) as conn:
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('events', 'id'), $1)", figures["history_events"]
        )
        for day, *_ in days:
            await conn.execute(KEYS_OF_DAY.format(table=partition(day)))
        await conn.execute(AUDIT_ROWS, days[0][1], now, figures["history_events"] // AUDIT_BATCH)
    figures["state_s"] = round(time.perf_counter() - started, 1)
    log(f"idempotency keys and audit rows written in {figures['state_s']} s")

    started = time.perf_counter()
    tables = [partition(d[0]) for d in days] + ["event_idempotency_keys", "audit_log"]

    def vacuum(table: str) -> Any:
        return lambda conn: conn.execute(f"VACUUM (ANALYZE) {table}")

    await _in_parallel(db_url, [vacuum(t) for t in tables])
    async with connected(db_url, command_timeout=3600) as conn:
        await conn.execute("ANALYZE events")
    figures["vacuum_s"] = round(time.perf_counter() - started, 1)
    log(f"VACUUM ANALYZE in {figures['vacuum_s']} s")
    return figures
