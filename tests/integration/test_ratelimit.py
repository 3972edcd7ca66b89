"""Rate limits: token buckets per client, their headers, and the shared PostgreSQL backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse

from app.db import Database
from app.http.render import json_response
from app.ratelimit import MemoryRateLimiter, PostgresRateLimiter
from tests.conftest import APP_HEADERS, RunningServer, make_settings
from tests.factories import create_rule


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_bucket_bursts_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock=clock)
    decisions = [await limiter.take("k", 60) for _ in range(61)]
    assert all(d.allowed for d in decisions[:60]) and not decisions[60].allowed
    assert decisions[0].remaining == 59 and decisions[59].remaining == 0
    assert decisions[60].retry_after_s == 1 and decisions[60].reset_s == 60
    clock.now += 1.0  # one token back
    assert (await limiter.take("k", 60)).allowed
    assert not (await limiter.take("k", 60)).allowed
    assert (await limiter.take("other", 60)).allowed  # each key its own bucket


async def test_postgres_bucket_is_one_atomic_statement(pool: asyncpg.Pool) -> None:
    limiter = PostgresRateLimiter(Database(pool, acquire_timeout=3))
    decisions = await asyncio.gather(*(limiter.take("shared", 10) for _ in range(15)))
    assert sum(d.allowed for d in decisions) == 10
    refused = [d for d in decisions if not d.allowed]
    assert all(d.remaining == 0 and d.retry_after_s >= 1 for d in refused)
    assert (
        await pool.fetchval(
            "SELECT relpersistence::text FROM pg_class WHERE relname = 'rate_limit_buckets'"
        )
        == "u"
    )


async def _post_events(client: httpx.AsyncClient, rule: str, **headers: str) -> httpx.Response:
    body = {"events": [{"type": "SAVE", "ruleId": rule}]}
    return await client.post("/ingest/events", json=body, headers=APP_HEADERS | headers)


async def test_events_limit_answers_429_with_headers(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, pool: asyncpg.Pool
) -> None:
    rule = await create_rule(pool)
    running = await start_server(make_settings(db_url, rate_limit_events_per_minute=3))
    responses = [await _post_events(running.client, rule) for _ in range(4)]
    assert [r.status_code for r in responses] == [202, 202, 202, 429]
    assert [r.headers["ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0"]
    assert all(r.headers["ratelimit-limit"] == "3" for r in responses)
    assert int(responses[0].headers["ratelimit-reset"]) == 20
    refused = responses[3]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert refused.headers["x-request-id"]
    # another client IP (X-Forwarded-For) has its own bucket; errors carry the headers too
    other = await running.client.post(
        "/ingest/events", content=b"{", headers=APP_HEADERS | {"x-forwarded-for": "192.0.2.5"}
    )
    assert other.status_code == 400 and other.headers["ratelimit-remaining"] == "2"
    assert await pool.fetchval("SELECT count(*) FROM events") == 3


async def test_zero_turns_the_limit_off(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    rule = await create_rule(pool)
    response = await _post_events(http, rule)
    assert response.status_code == 202 and "ratelimit-limit" not in response.headers


async def test_postgres_limiter_is_shared_by_two_instances(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, pool: asyncpg.Pool
) -> None:
    rule = await create_rule(pool)
    settings = make_settings(db_url, rate_limit_events_per_minute=4, rate_limit_backend="postgres")
    one, two = await start_server(settings), await start_server(settings)
    statuses = []
    for client in (one.client, two.client, one.client, two.client, one.client, two.client):
        statuses.append((await _post_events(client, rule)).status_code)
    assert statuses == [202, 202, 202, 202, 429, 429]
    keys = [r["key"] for r in await pool.fetch("SELECT key FROM rate_limit_buckets")]
    assert len(keys) == 1 and "127.0.0.1" not in keys[0]


async def _ok(request: Request) -> HTTPResponse:
    return json_response({"ok": True})


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_crawl_routes_use_the_crawl_limit(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, backend: str
) -> None:
    def add_route(app: Sanic) -> None:
        app.add_route(
            _ok,
            "/t/crawl",
            methods=["POST"],
            ctx_credential="app",
            ctx_rate_limit="crawl",
            name="t_crawl",
        )

    settings = make_settings(
        db_url,
        rate_limit_crawl_per_minute=2,
        rate_limit_events_per_minute=100,
        rate_limit_backend=backend,
    )
    running = await start_server(settings, customize=add_route)
    statuses = [
        (await running.client.post("/t/crawl", headers=APP_HEADERS)).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
