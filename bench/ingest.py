"""Ingest figures: HTTP batches through the service vs the raw asyncpg unnest path."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from bench.harness import TOKEN, Service, connected, cpu_seconds, query_value, run_wrk

OTHER_TYPES = ["COPY", "SAVE", "FORK", "VOTE"]
# The same rows as intake stores, with the least SQL that keeps idempotency keys unique: the
# key table takes each new key, and only events whose key it took (or without one) are stored.
RAW_INSERT = """
WITH batch AS (
    SELECT b.type, b.rule_id, b.ip_hash, b.ts, b.idempotency_key COLLATE "C" AS idempotency_key
    FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
        AS b (type, rule_id, ip_hash, ts, idempotency_key)
),
keys AS (
    INSERT INTO event_idempotency_keys (key, ts)
    SELECT idempotency_key, ts FROM batch WHERE idempotency_key IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING key
)
INSERT INTO events (type, rule_id, ip_hash, ts, idempotency_key)
SELECT * FROM batch
WHERE idempotency_key IS NULL OR idempotency_key IN (SELECT key FROM keys)
"""


async def seed(db_url: str, *, rules: int, authors: int = 1000) -> None:
    """Users `usr_1..` and rules `rul_1..`, with a few tags and models for leaderboard scopes."""
    async with connected(db_url) as conn:
        await conn.execute(
            "INSERT INTO users (id, handle) SELECT 'usr_' || i, 'user' || i "
            "FROM generate_series(1, $1) i",
            authors,
        )
        await conn.execute(
            "INSERT INTO rules (id, author_id, title, tags, model) "
            "SELECT 'rul_' || i, 'usr_' || (1 + i % $2), 'Rule ' || i, "
            "ARRAY['tag' || (i % 20)], 'model-' || (i % 5) FROM generate_series(1, $1) i",
            rules,
            authors,
        )
        await conn.execute("ANALYZE")


def count_events(db_url: str) -> int:
    return int(query_value(db_url, "SELECT count(*) FROM events"))


def database_now(db_url: str) -> datetime:
    value: datetime = query_value(db_url, "SELECT now()")
    return value


def count_events_since(db_url: str, since: datetime) -> int:
    """Events stored since `since` (the database's clock): one descent of each partition's
    (received_at) index, where a count of the whole table would read 30 days of history."""
    return int(query_value(db_url, "SELECT count(*) FROM events WHERE received_at >= $1", since))


def service_backends(db_url: str) -> list[int]:
    """PostgreSQL backend pids of the service's pool (application_name `ingest`)."""
    pids = query_value(
        db_url,
        "SELECT array_agg(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'ingest'",
    )
    return list(pids or [])


def _cpu_snapshot(svc: Service, db_url: str) -> tuple[dict[int, float], dict[int, float]]:
    workers = {w.pid: sum(w.cpu_times()[:2]) for w in svc.workers()}
    backends = service_backends(db_url)
    return workers, {pid: cpu_seconds(pid) or 0.0 for pid in backends}


def _cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


def http_batches(
    svc: Service, db_url: str, *, rules: int, connections: int, seconds: int, batch: int = 100
) -> dict[str, float]:
    """wrk against /ingest/events. Besides rates and latency: CPU milliseconds per request of
    the Sanic workers and of their PostgreSQL backends (when /proc shows them, i.e. the
    server runs on this machine), which a neighbour's load inflates far less than rates."""
    since = database_now(db_url)
    workers0, backends0 = _cpu_snapshot(svc, db_url)
    figures = run_wrk(
        svc.url,
        script="events.lua",
        connections=connections,
        seconds=seconds,
        env={
            "BENCH_TOKEN": TOKEN,
            "BENCH_RULES": str(rules),
            "BENCH_BATCH": str(batch),
            "BENCH_RUN": uuid.uuid4().hex[:8],
        },
    )
    workers1, backends1 = _cpu_snapshot(svc, db_url)
    stored = count_events_since(db_url, since)
    requests = max(1, figures["requests"])
    figures["events_stored_per_s"] = stored / figures["duration_s"]
    figures["events_sent_per_s"] = figures["requests"] * batch / figures["duration_s"]
    figures["requests_per_s"] = figures["requests"] / figures["duration_s"]
    figures["service_cpu_ms_per_request"] = _cpu_used(workers0, workers1) * 1000 / requests
    figures["postgres_cpu_ms_per_request"] = _cpu_used(backends0, backends1) * 1000 / requests
    return figures


def _raw_batch(rules: int, size: int, seq: list[int]) -> tuple[list, ...]:
    now = datetime.now(UTC)
    types, rule_ids, ips, tss, keys = [], [], [], [], []
    for _ in range(size):
        seq[0] += 1
        types.append(
            "VIEW" if random.random() < 0.8 else random.choice(["COPY", "SAVE", "FORK", "VOTE"])
        )
        rule_ids.append(f"rul_{int(random.random() ** 2 * rules) + 1}")
        ips.append(f"{random.getrandbits(128):032x}")  # as wide as the service's HMAC hex
        tss.append(now)
        keys.append(f"raw-{seq[0]}" if random.random() < 0.1 else None)
    return types, rule_ids, ips, tss, keys


async def raw_unnest(
    db_url: str, *, rules: int, connections: int = 4, seconds: int = 10, batch: int = 100
) -> dict[str, float]:
    """The best raw path: INSERT ... SELECT FROM unnest per batch, `connections` in parallel.
    Also CPU milliseconds per batch of this client and of its PostgreSQL backends."""
    seq = [0]
    inserted = 0
    conns = [await asyncpg.connect(db_url) for _ in range(connections)]
    try:
        pids = [conn.get_server_pid() for conn in conns]
        backends0 = sum(cpu_seconds(pid) or 0.0 for pid in pids)
        client0 = time.process_time()
        started = time.perf_counter()
        deadline = started + seconds

        async def client(conn: asyncpg.Connection) -> None:
            nonlocal inserted
            statement = await conn.prepare(RAW_INSERT)
            while time.perf_counter() < deadline:
                await statement.fetch(*_raw_batch(rules, batch, seq))
                inserted += batch

        await asyncio.gather(*(client(conn) for conn in conns))
        elapsed = time.perf_counter() - started
        batches = max(1, inserted // batch)
        backends = sum(cpu_seconds(pid) or 0.0 for pid in pids) - backends0
        client_s = time.process_time() - client0
    finally:
        for conn in conns:
            await conn.close()
    return {
        "events_per_s": inserted / elapsed,
        "duration_s": elapsed,
        "client_cpu_ms_per_batch": client_s * 1000 / batches,
        "postgres_cpu_ms_per_batch": backends * 1000 / batches,
    }
