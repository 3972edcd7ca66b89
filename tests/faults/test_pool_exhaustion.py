"""More concurrent requests than pooled connections.

Requests queue for a connection up to DB_ACQUIRE_TIMEOUT_S, then answer 503 with Retry-After;
a statement stuck behind a lock ends at DB_COMMAND_TIMEOUT_S, also as a 503. Either way the
answer is bounded, nothing is half-written and the pool serves again at once (no deadlock, no
leaked connection).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import APP_HEADERS, RunningServer, make_settings
from tests.factories import create_rule

POOL_SIZE = 2
ACQUIRE_TIMEOUT_S = 1.0
EVENTS_PER_BATCH = 10


def batch(rule: str, name: str) -> dict[str, Any]:
    return {
        "events": [
            {"type": "SAVE", "ruleId": rule, "idempotencyKey": f"{name}-{i}"}
            for i in range(EVENTS_PER_BATCH)
        ]
    }


async def timed_post(url: str, rule: str, name: str) -> tuple[str, int, str | None, float]:
    """One client on its own connection: (batch, status, Retry-After, seconds)."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post("/ingest/events", json=batch(rule, name), headers=APP_HEADERS)
    elapsed = time.monotonic() - started
    return name, response.status_code, response.headers.get("retry-after"), elapsed


async def stored_batches(pool: asyncpg.Pool) -> Counter[str]:
    rows = await pool.fetch("SELECT idempotency_key FROM events")
    return Counter(r["idempotency_key"].rsplit("-", 1)[0] for r in rows)


async def hold_events_writes(pool: asyncpg.Pool) -> tuple[asyncpg.Connection, Any]:
    """Block every intake transaction at its write (the audit row), as a long migration would."""
    conn = await pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("LOCK TABLE audit_log IN SHARE MODE")
    return conn, tx


async def small_pool_server(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, *, acquire_s: float
) -> RunningServer:
    settings = make_settings(
        db_url,
        db_pool_min_size=POOL_SIZE,
        db_pool_max_size=POOL_SIZE,
        db_acquire_timeout_s=acquire_s,
        db_command_timeout_s=20.0,
        retry_after_s=3,
    )
    return await start_server(settings)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_requests_queue_for_the_pool_and_all_succeed(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, pool: asyncpg.Pool
) -> None:
    """Fifteen times more clients than connections, nothing blocking: they queue, all 202."""
    rule = await create_rule(pool)
    # A generous acquire timeout here: only the queueing is under test.
    server = await small_pool_server(start_server, db_url, acquire_s=10.0)
    clients = POOL_SIZE * 15
    answers = await asyncio.gather(*(timed_post(server.url, rule, f"q{n}") for n in range(clients)))
    assert Counter(a[1] for a in answers) == {202: clients}
    assert await stored_batches(pool) == {f"q{n}": EVENTS_PER_BATCH for n in range(clients)}
    print(
        f"\npool exhaustion figures (queueing): {clients} concurrent clients, pool {POOL_SIZE},"
        f" answers {{202: {clients}}}, slowest {max(a[3] for a in answers):.2f} s"
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_exhausted_pool_answers_503_after_the_bounded_wait(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, pool: asyncpg.Pool
) -> None:
    """Both connections stuck behind a lock: everyone else gets 503 after the acquire timeout;
    once the lock goes, the stuck two finish 202 and the pool serves again."""
    rule = await create_rule(pool)
    server = await small_pool_server(start_server, db_url, acquire_s=ACQUIRE_TIMEOUT_S)
    holder, tx = await hold_events_writes(pool)
    clients = 20
    try:
        sending = [
            asyncio.create_task(timed_post(server.url, rule, f"x{n}")) for n in range(clients)
        ]
        done, _ = await asyncio.wait(sending, timeout=ACQUIRE_TIMEOUT_S + 5)
        refused = [t.result() for t in done]
    finally:
        await tx.rollback()
        await pool.release(holder)
    answers = [await t for t in sending]
    by_status = Counter(a[1] for a in answers)
    assert by_status == {202: POOL_SIZE, 503: clients - POOL_SIZE}, by_status
    assert {a[1] for a in refused} == {503}  # every 503 came while the lock was still held
    waits = [a[3] for a in answers if a[1] == 503]
    assert all(a[2] == "3" for a in answers if a[1] == 503)
    assert min(waits) >= ACQUIRE_TIMEOUT_S * 0.9 and max(waits) < ACQUIRE_TIMEOUT_S + 4
    accepted = {a[0] for a in answers if a[1] == 202}
    assert await stored_batches(pool) == dict.fromkeys(accepted, EVENTS_PER_BATCH)

    after = await timed_post(server.url, rule, "after")
    assert after[1] == 202 and after[3] < ACQUIRE_TIMEOUT_S
    health = await server.client.get("/health")
    assert health.status_code == 200
    print(
        f"\npool exhaustion figures (lock held): {clients} concurrent clients, pool {POOL_SIZE},"
        f" answers by status {dict(by_status)}, 503 after {min(waits):.2f}-{max(waits):.2f} s"
        f" (acquire timeout {ACQUIRE_TIMEOUT_S} s), rows of 503 batches 0, rows lost 0"
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_statement_stuck_behind_a_lock_ends_at_the_command_timeout(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, pool: asyncpg.Pool
) -> None:
    """The stuck request is cancelled in PostgreSQL, rolled back, answered 503, and its
    connection goes back to the pool in working order."""
    rule = await create_rule(pool)
    settings = make_settings(
        db_url, db_pool_max_size=1, db_acquire_timeout_s=5.0, db_command_timeout_s=1.0
    )
    server = await start_server(settings)
    holder, tx = await hold_events_writes(pool)
    try:
        _name, status, retry_after, seconds = await timed_post(server.url, rule, "stuck")
    finally:
        await tx.rollback()
        await pool.release(holder)
    assert (status, retry_after) == (503, str(settings.retry_after_s))
    assert 0.9 <= seconds < 4
    assert await stored_batches(pool) == {}
    again = await timed_post(server.url, rule, "again")
    assert again[1] == 202
    assert await stored_batches(pool) == {"again": EVENTS_PER_BATCH}
