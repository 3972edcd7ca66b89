"""Ingest figures: HTTP batches through the service vs the raw asyncpg unnest path."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from bench.harness import TOKEN, Service, run_wrk

OTHER_TYPES = ["COPY", "SAVE", "FORK", "VOTE"]
RAW_INSERT = """
INSERT INTO events (type, rule_id, ip_hash, ts, idempotency_key)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
ON CONFLICT DO NOTHING
"""


async def seed(db_url: str, *, rules: int, authors: int = 1000) -> None:
    """Users `usr_1..` and rules `rul_1..`, with a few tags and models for leaderboard scopes."""
    conn = await asyncpg.connect(db_url)
    try:
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
    finally:
        await conn.close()


async def count_events(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


def http_batches(
    svc: Service, db_url: str, *, rules: int, connections: int, seconds: int, batch: int = 100
) -> dict[str, float]:
    before = asyncio.run(count_events(db_url))
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
    stored = asyncio.run(count_events(db_url)) - before
    figures["events_stored_per_s"] = stored / figures["duration_s"]
    figures["events_sent_per_s"] = figures["requests"] * batch / figures["duration_s"]
    figures["requests_per_s"] = figures["requests"] / figures["duration_s"]
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
        ips.append(f"{random.getrandbits(64):016x}")
        tss.append(now)
        keys.append(f"raw-{seq[0]}" if random.random() < 0.1 else None)
    return types, rule_ids, ips, tss, keys


async def raw_unnest(
    db_url: str, *, rules: int, connections: int = 4, seconds: int = 10, batch: int = 100
) -> dict[str, float]:
    """The best raw path: INSERT ... SELECT FROM unnest per batch, `connections` in parallel."""
    seq = [0]
    inserted = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal inserted
        conn = await asyncpg.connect(db_url)
        try:
            statement = await conn.prepare(RAW_INSERT)
            while time.perf_counter() < deadline:
                await statement.fetch(*_raw_batch(rules, batch, seq))
                inserted += batch
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return {"events_per_s": inserted / elapsed, "duration_s": elapsed}
