"""The Python client (clients/python) against a live service: batches flushed by size and by
time, per-event results, 429 honoured through the real rate limiter, retries made exactly-once
by the keys, and a close that loses nothing it had taken. The database outage is in
tests/faults/test_client_outage.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from ingest_client import EventResult, IngestClient, IngestClosedError, IngestHttpError

from tests.client_helpers import event_requests, losing_proxy, stored_keys
from tests.conftest import APP_TOKEN, CRON_SECRET, RunningServer, free_port, make_settings
from tests.factories import add_source, create_rule


def client_of(url: str, results: list[EventResult] | None = None, **options: Any) -> IngestClient:
    return IngestClient(
        url,
        app_token=APP_TOKEN,
        cron_secret=CRON_SECRET,
        on_result=None if results is None else results.append,
        **options,
    )


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def rule(pool: asyncpg.Pool) -> str:
    return await create_rule(pool)


async def test_a_batch_goes_out_when_flush_at_events_are_queued(
    server: RunningServer, db_url: str, rule: str
) -> None:
    results: list[EventResult] = []
    client = client_of(server.url, results, flush_at=10, flush_interval_s=600, max_in_flight=1)
    for _ in range(25):
        client.track({"type": "COPY", "ruleId": rule})
    await wait_for(lambda: len(results) == 20, 10, "two full batches")
    assert (client.stats.batches, client.stats.queued) == (2, 5)
    assert sum((await stored_keys(db_url)).values()) == 20
    stats = await client.aclose()
    keys = await stored_keys(db_url)
    assert set(keys.values()) == {1} and len(keys) == 25
    assert {r.event["idempotencyKey"] for r in results} == set(keys)
    assert stats.accepted == 25 and stats.batches == 3
    assert await event_requests(db_url) == 3


async def test_a_partial_batch_goes_out_after_the_interval(
    server: RunningServer, db_url: str, rule: str
) -> None:
    results: list[EventResult] = []
    async with client_of(server.url, results, flush_at=100, flush_interval_s=0.3) as client:
        started = time.monotonic()
        for _ in range(3):
            client.track({"type": "SAVE", "ruleId": rule})
        await asyncio.sleep(0.15)
        assert results == []
        await wait_for(lambda: len(results) == 3, 5, "the timed flush")
        assert time.monotonic() - started >= 0.3
        assert [r.status for r in results] == ["accepted"] * 3
    assert sum((await stored_keys(db_url)).values()) == 3
    assert await event_requests(db_url) == 1


async def test_each_event_gets_its_result(server: RunningServer, db_url: str, rule: str) -> None:
    results: list[EventResult] = []
    async with client_of(server.url, results) as client:
        client.track({"type": "VOTE", "ruleId": rule})
        client.track({"type": "VOTE", "ruleId": "rul_does_not_exist"})
        client.track({"type": "VOTE", "ruleId": rule, "ts": "2001-01-01T00:00:00Z"})
        client.track({"type": "VOTE", "ruleId": rule, "idempotencyKey": "k-1"})
        await client.flush()
        client.track({"type": "VOTE", "ruleId": rule, "idempotencyKey": "k-1"})
    assert [(r.status, r.reason) for r in results] == [
        ("accepted", None),
        ("rejected", "unknown_rule"),
        ("rejected", "ts_too_old"),
        ("accepted", None),
        ("duplicate", None),
    ]
    assert sum((await stored_keys(db_url)).values()) == 2


async def test_a_refused_batch_fails_at_once_with_a_typed_error(
    server: RunningServer, db_url: str, rule: str
) -> None:
    results: list[EventResult] = []
    async with IngestClient(server.url, app_token="wrong", on_result=results.append) as client:
        client.track({"type": "VIEW", "ruleId": rule})
        await client.flush()
    [result] = results
    assert result.status == "failed" and result.attempts == 1
    assert isinstance(result.error, IngestHttpError)
    assert (result.error.status, result.error.retriable) == (401, False)
    assert result.error.request_id


async def test_the_other_endpoints(server: RunningServer, pool: asyncpg.Pool, db_url: str) -> None:
    source_id, _ = await add_source(pool)
    async with client_of(server.url) as client:
        health = await client.health()
        assert health["status"] == "ok" and health["database"]["reachable"] is True
        report = await client.import_crawl(
            {
                "sourceId": source_id,
                "items": [{"externalId": "py-1", "url": "https://e.x/py-1", "title": "Py"}],
            }
        )
        assert report["created"] == 1 and report["items"][0]["status"] == "created"
        found = await client.search("Py", limit=5)
        assert found["query"] == "Py" and isinstance(found["results"], list)
        dry = await client.trigger_rollup({"dryRun": True, "daysToProcess": 1})
        assert dry["status"] == "dry_run"
        queued = await client.trigger_rollup()
        assert queued["status"] == "queued"
        rebuild = await client.rebuild_search()
        assert rebuild["status"] == "queued"
        with pytest.raises(IngestHttpError) as refused:
            await client.import_crawl({"sourceId": "src_unknown", "items": report_items()})
        assert refused.value.status == 404


def report_items() -> Any:
    return [{"externalId": "x", "url": "https://e.x/x", "title": "X"}]


async def test_429_is_retried_after_retry_after(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, rule: str
) -> None:
    server = await start_server(make_settings(db_url, rate_limit_events_per_minute=60))
    results: list[EventResult] = []
    client = client_of(server.url, results, flush_at=1, max_in_flight=8, max_attempts=20)
    started = time.monotonic()
    for _ in range(64):  # 60 fit the bucket, then one more a second
        client.track({"type": "COPY", "ruleId": rule})
    stats = await client.aclose(deadline_s=60)
    elapsed = time.monotonic() - started
    assert stats.retries.get("429", 0) >= 1, stats
    assert elapsed >= 1.0, "Retry-After (at least 1 s) was honoured"
    assert stats.accepted == 64
    keys = await stored_keys(db_url)
    assert len(keys) == 64 and set(keys.values()) == {1}


async def test_a_batch_whose_answer_was_lost_is_stored_once(
    server: RunningServer, db_url: str, rule: str
) -> None:
    results: list[EventResult] = []
    async with losing_proxy(server.url, lose={0, 2}) as proxy:
        client = client_of(proxy.url, results, flush_at=50, max_in_flight=1, initial_backoff_s=0.02)
        for _ in range(100):
            client.track({"type": "SAVE", "ruleId": rule})
        stats = await client.aclose(deadline_s=30)
    assert proxy.lost == 2
    assert stats.retries == {"network": 2}
    keys = await stored_keys(db_url)
    assert len(keys) == 100 and set(keys.values()) == {1}
    assert {r.event["idempotencyKey"] for r in results} == set(keys)
    # The first attempts stored them; their retries were told so.
    assert [r.status for r in results] == ["duplicate"] * 100
    assert all(r.attempts == 2 for r in results)


async def test_close_delivers_everything_it_took(
    server: RunningServer, db_url: str, rule: str
) -> None:
    results: list[EventResult] = []
    client = client_of(server.url, results, max_queue_size=1500, max_in_flight=2)
    taken = {
        f"close-{i}"
        for i in range(2000)
        if client.track({"type": "COPY", "ruleId": rule, "idempotencyKey": f"close-{i}"})
    }
    stats = await client.aclose(deadline_s=30)
    assert 1500 <= len(taken) < 2000
    assert stats.dropped == 2000 - len(taken) and stats.failed == 0
    assert sum(1 for r in results if r.reason == "queue_full") == stats.dropped
    keys = await stored_keys(db_url)
    assert set(keys) == taken and set(keys.values()) == {1}
    assert client.track({"type": "COPY", "ruleId": rule}) is False
    assert results[-1].reason == "closed"


async def test_close_gives_up_at_its_deadline_and_says_so() -> None:
    results: list[EventResult] = []
    client = client_of(f"http://127.0.0.1:{free_port()}", results, flush_at=2)
    for _ in range(5):
        client.track({"type": "COPY", "ruleId": "rul_x"})
    started = time.monotonic()
    stats = await client.aclose(deadline_s=0.5)
    assert time.monotonic() - started < 3
    assert stats.failed == 5 and stats.retries.get("network", 0) >= 1
    assert all(isinstance(r.error, IngestClosedError) for r in results)
