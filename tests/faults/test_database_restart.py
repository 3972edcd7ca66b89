"""PostgreSQL stopped and started again under a continuous stream of event batches.

The service keeps running throughout (no restart): during the outage every answer is a quick
503 with Retry-After and /health says the database is down; afterwards it answers 202 again on
its own. Every batch carries idempotency keys, so the database can be checked batch by batch:
each batch answered 202 is there exactly once, and a batch answered 503 is all there (its
commit landed just before the connection died) or not there at all, never half.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from tests.conftest import APP_HEADERS, RunningServer, make_settings
from tests.factories import create_rule
from tests.faults.conftest import OwnedCluster, create_migrated_database

CLIENTS = 4
EVENTS_PER_BATCH = 20
# The longest any answer may take, outage or not (acquire timeout 1 s, statement timeout 5 s).
ANSWER_BOUND_S = 8.0
OUTAGE_S = 3.0
RECOVERY_BOUND_S = 15.0


@dataclass
class Answer:
    batch: str
    status: int | str
    retry_after: str | None
    seconds: float
    sent_at: float


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)
    health: list[tuple[float, int | str, bool | None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def batch_events(rule: str, batch: str) -> list[dict[str, str]]:
    return [
        {"type": "COPY", "ruleId": rule, "idempotencyKey": f"{batch}-{i}"}
        for i in range(EVENTS_PER_BATCH)
    ]


async def send_batch(client: httpx.AsyncClient, rule: str, batch: str) -> Answer:
    started = time.monotonic()
    try:
        response = await client.post(
            "/ingest/events", json={"events": batch_events(rule, batch)}, headers=APP_HEADERS
        )
        status: int | str = response.status_code
        retry_after = response.headers.get("retry-after")
    except httpx.TimeoutException:
        status, retry_after = "timeout", None
    return Answer(batch, status, retry_after, time.monotonic() - started, started)


async def client_loop(url: str, rule: str, number: int, load: Load) -> None:
    """One client: a batch after another, as fast as the answers come, on its own connection."""
    async with httpx.AsyncClient(base_url=url, timeout=ANSWER_BOUND_S + 2) as client:
        sent = 0
        while not load.stop.is_set():
            answer = await send_batch(client, rule, f"c{number}-b{sent}")
            load.answers.append(answer)
            sent += 1
            if answer.status != 202:
                await asyncio.sleep(0.05)  # a real client would wait Retry-After; keep probing


async def health_loop(url: str, load: Load) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=ANSWER_BOUND_S) as client:
        while not load.stop.is_set():
            try:
                response = await client.get("/health")
                status: int | str = response.status_code
                reachable = response.json()["database"]["reachable"]
            except httpx.TimeoutException:
                status, reachable = "timeout", None
            load.health.append((time.monotonic(), status, reachable))
            await asyncio.sleep(0.1)


async def stored_keys(url: str) -> Counter[str]:
    """Events stored per batch (the batch is the idempotency key's prefix)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT idempotency_key FROM events")
    finally:
        await conn.close()
    return Counter(r["idempotency_key"].rsplit("-", 1)[0] for r in rows)


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("stop_mode", ["fast", "immediate"])
async def test_database_restart_under_load_loses_nothing(
    stop_mode: str,
    owned_cluster: OwnedCluster,
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    url = await create_migrated_database(owned_cluster)
    conn = await asyncpg.connect(url)
    try:
        rule = await create_rule(conn)
    finally:
        await conn.close()
    settings = make_settings(
        url, db_acquire_timeout_s=1.0, db_command_timeout_s=5.0, retry_after_s=2
    )
    server = await start_server(settings)
    load = Load()
    tasks = [asyncio.create_task(client_loop(server.url, rule, n, load)) for n in range(CLIENTS)]
    tasks.append(asyncio.create_task(health_loop(server.url, load)))
    try:
        await asyncio.sleep(1.5)
        outage_started = time.monotonic()
        await asyncio.to_thread(owned_cluster.stop, stop_mode)
        down_at = time.monotonic()
        await asyncio.sleep(OUTAGE_S)
        restart_at = time.monotonic()
        await asyncio.to_thread(owned_cluster.start)
        up_at = time.monotonic()
        recovered_at = await _first_202_after(load, up_at, RECOVERY_BOUND_S)
        await asyncio.sleep(1.5)
    finally:
        load.stop.set()
        await asyncio.gather(*tasks)

    answers = load.answers
    by_status = Counter(a.status for a in answers)
    # The outage: from the stop's end to the start's beginning (pg_ctl start returns a little
    # after the server accepts connections, so requests near its end may rightly succeed).
    outage = [a for a in answers if down_at <= a.sent_at < restart_at]
    during = Counter(a.status for a in outage)
    health_during = Counter(s for t, s, _ in load.health if down_at + 0.5 <= t < restart_at)

    # Every answer is 202 or 503, quick, and a 503 always says when to come back.
    assert set(by_status) <= {202, 503}, by_status
    assert all(a.retry_after == "2" for a in answers if a.status == 503)
    slowest = max(a.seconds for a in answers)
    assert slowest < ANSWER_BOUND_S, slowest
    assert during and set(during) == {503}, during
    assert health_during and set(health_during) == {503}, health_during
    assert all(r is False for t, s, r in load.health if s == 503)
    # Recovered on its own: 202 answers after the restart, and /health is 200 again.
    assert recovered_at is not None
    assert load.health[-1][1] == 200

    stored = await stored_keys(url)
    accepted = {a.batch for a in answers if a.status == 202}
    refused = {a.batch for a in answers if a.status == 503}
    lost = sum(EVENTS_PER_BATCH - stored[b] for b in accepted)
    half_written = {b: stored[b] for b in refused if stored[b] not in (0, EVENTS_PER_BATCH)}
    assert lost == 0 and all(stored[b] == EVENTS_PER_BATCH for b in accepted)
    assert half_written == {}
    assert set(stored) <= accepted | refused  # nothing stored that nobody sent

    # The callers retry what was refused, with the same keys: everything is there once.
    async with httpx.AsyncClient(base_url=server.url, timeout=ANSWER_BOUND_S) as client:
        retried = [await send_batch(client, rule, b) for b in sorted(refused)]
    assert {a.status for a in retried} <= {202}
    final = await stored_keys(url)
    assert all(final[b] == EVENTS_PER_BATCH for b in accepted | refused)
    committed_before_503 = sum(1 for b in refused if stored[b] == EVENTS_PER_BATCH)

    print(
        f"\ndatabase restart figures ({stop_mode} stop):"
        f" outage {restart_at - down_at:.1f} s (stop took {down_at - outage_started:.2f} s,"
        f" start {up_at - restart_at:.2f} s),"
        f" requests {len(answers)}, during the outage {len(outage)},"
        f" answers by status {dict(by_status)}, during the outage {dict(during)},"
        f" /health during the outage {dict(health_during)},"
        f" first 202 {recovered_at - up_at:.2f} s after the start,"
        f" slowest answer {slowest:.2f} s, rows lost {lost}, half-written batches 0,"
        f" 503 batches whose commit had landed {committed_before_503},"
        f" events stored {sum(final.values())}"
    )


async def _first_202_after(load: Load, since: float, bound: float) -> float | None:
    """When the first batch sent after `since` was accepted (None if not within `bound`)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        accepted = [a.sent_at for a in load.answers if a.sent_at >= since and a.status == 202]
        if accepted:
            return min(accepted)
        await asyncio.sleep(0.05)
    return None


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_every_endpoint_answers_503_quickly_while_the_database_is_down(
    owned_cluster: OwnedCluster,
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    """Not only the event intake: each route that touches the database (the job queue's own
    psycopg pool included) answers 503 with Retry-After within the bound, then recovers."""
    from tests.conftest import CRON_HEADERS
    from tests.stripe_helpers import checkout_session, deliver, event, metadata, new_id

    url = await create_migrated_database(owned_cluster)
    conn = await asyncpg.connect(url)
    try:
        rule = await create_rule(conn)
        source = await conn.fetchval(
            "INSERT INTO crawl_sources (name, curator_id) VALUES ('src', "
            "(SELECT author_id FROM rules LIMIT 1)) RETURNING id"
        )
    finally:
        await conn.close()
    settings = make_settings(url, db_acquire_timeout_s=1.0, db_command_timeout_s=5.0)
    server = await start_server(settings)
    client = server.client

    async def calls() -> dict[str, tuple[int, str | None, float]]:
        requests = {
            "health": lambda: client.get("/health"),
            "events": lambda: client.post(
                "/ingest/events",
                json={"events": [{"type": "COPY", "ruleId": rule}]},
                headers=APP_HEADERS,
            ),
            "crawl": lambda: client.post(
                "/ingest/crawl",
                json={
                    "sourceId": source,
                    "items": [{"externalId": "x1", "url": "https://e.x/1", "title": "T"}],
                },
                headers=APP_HEADERS,
            ),
            "stripe": lambda: deliver(
                client,
                event(
                    "checkout.session.completed", checkout_session(new_id("pi"), meta=metadata("u"))
                ),
            ),
            "rollup": lambda: client.post("/cron/rollup", json={}, headers=CRON_HEADERS),
            "rebuild": lambda: client.post("/cron/rebuild-search", headers=CRON_HEADERS),
            "search": lambda: client.get(
                "/internal/search", params={"q": "rule"}, headers=APP_HEADERS
            ),
        }
        out = {}
        for name, call in requests.items():
            started = time.monotonic()
            try:
                response = await asyncio.wait_for(call(), ANSWER_BOUND_S)
                out[name] = (
                    response.status_code,
                    response.headers.get("retry-after"),
                    time.monotonic() - started,
                )
            except TimeoutError:
                out[name] = (0, None, time.monotonic() - started)
        return out

    before = await calls()
    assert all(200 <= s < 300 for s, _, _ in before.values()), before
    await asyncio.to_thread(owned_cluster.stop, "fast")
    down = await calls()
    await asyncio.to_thread(owned_cluster.start)
    await asyncio.sleep(0.5)
    after = await calls()
    print(f"\nendpoints during the outage: {down}")
    assert {n: s for n, (s, _, _) in down.items()} == dict.fromkeys(down, 503), down
    assert all(r is not None for _, r, _ in down.values()), down
    assert max(t for _, _, t in down.values()) < 5.0, down
    assert all(200 <= s < 300 for s, _, _ in after.values()), after
