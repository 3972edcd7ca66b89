"""Races: many real clients, each on its own connection, against a real server at once.

Each test ends with exactly one effect, checked on the database rows. The simpler races are
covered where their feature is (docs/reliability.md lists them): twenty identical keyed
requests (test_events), a flood of identical views through two instances (test_events), twenty
deliveries of one Stripe event (test_stripe_webhook), overlapping crawl batches (test_crawl),
concurrent search rebuild triggers (test_search). The ones here add what those leave out:
overlapping key sets in opposite orders (lock order), many rules' windows from one IP at once,
redeliveries racing a live worker, one crawl item from many clients, rollup triggers at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app.db import Database
from app.rollup import run_rollup, utc_today
from tests.conftest import APP_HEADERS, CRON_HEADERS, RunningServer
from tests.factories import add_source, create_rule
from tests.integration.test_crawl import item
from tests.stripe_helpers import charge, checkout_session, deliver, event, metadata, new_id

CLIENTS = 24

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def many(url: str, calls: list[Callable[[httpx.AsyncClient], Awaitable[Any]]]) -> list[Any]:
    """Run each call on a client of its own (its own connection), all at once."""

    async def one(call: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await call(client)

    return await asyncio.gather(*(one(c) for c in calls))


def events_call(events: list[dict[str, Any]]) -> Callable[[httpx.AsyncClient], Awaitable[Any]]:
    async def call(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/ingest/events", json={"events": events}, headers=APP_HEADERS)

    return call


async def test_overlapping_idempotency_keys_in_any_order_count_once(
    server: RunningServer, pool: asyncpg.Pool
) -> None:
    """Each client sends a random subset of 60 keys in a random order: the unique index and
    ON CONFLICT must not deadlock into a 500, and each key counts once in all."""
    rules = [await create_rule(pool) for _ in range(3)]
    keys = [f"race-key-{n:02}" for n in range(60)]
    rng = random.Random(3)
    batches = []
    for _ in range(CLIENTS):
        chosen = rng.sample(keys, 40)
        batches.append(
            [
                {"type": "COPY", "ruleId": rules[int(k[-2:]) % 3], "idempotencyKey": k}
                for k in chosen
            ]
        )
    answers = await many(server.url, [events_call(b) for b in batches])
    assert [a.status_code for a in answers] == [202] * CLIENTS, [a.text for a in answers]
    assert sum(a.json()["accepted"] for a in answers) == len(set().union(*map(_keys, batches)))
    assert sum(a.json()["accepted"] + a.json()["duplicates"] for a in answers) == 40 * CLIENTS
    rows = await pool.fetch("SELECT idempotency_key, count(*) AS n FROM events GROUP BY 1")
    assert {r["idempotency_key"] for r in rows} == set().union(*map(_keys, batches))
    assert {r["n"] for r in rows} == {1}


def _keys(batch: list[dict[str, Any]]) -> set[str]:
    return {e["idempotencyKey"] for e in batch}


async def test_views_of_many_rules_from_one_ip_count_once_per_rule(
    server: RunningServer, pool: asyncpg.Pool
) -> None:
    """Every client sends views of the same eight rules from one IP, in its own order, some
    twice in a batch, all inside one 10-minute slot: every view is stored, and the rollup
    counts one view per rule."""
    rules = [await create_rule(pool) for _ in range(8)]
    now = datetime.now(UTC) - timedelta(hours=2)
    base = now.replace(minute=now.minute - now.minute % 10, second=0, microsecond=0)
    rng = random.Random(5)
    batches = []
    for _ in range(CLIENTS):
        picked = rng.sample(rules, 8) + rng.sample(rules, 3)  # three pairs twice in the batch
        batches.append(
            [
                {
                    "type": "VIEW",
                    "ruleId": rule,
                    "ip": "198.51.100.23",
                    "ts": (base + timedelta(seconds=rng.randrange(300))).isoformat(),
                }
                for rule in picked
            ]
        )
    answers = await many(server.url, [events_call(b) for b in batches])
    assert [a.status_code for a in answers] == [202] * CLIENTS, [a.text for a in answers]
    assert sum(a.json()["accepted"] for a in answers) == sum(len(b) for b in batches)
    await run_rollup(Database(pool), end_day=base.date(), days=1, settings=server.app.ctx.settings)
    rows = await pool.fetch("SELECT rule_id, views FROM rule_metric_daily")
    assert {r["rule_id"]: r["views"] for r in rows} == dict.fromkeys(rules, 1)


async def test_redeliveries_racing_a_live_worker_apply_each_event_once(
    start_server: Callable[..., Awaitable[RunningServer]], settings: Any, pool: asyncpg.Pool
) -> None:
    """A payment and its refund, each delivered twelve times at once to a server whose
    in-process worker processes them as they arrive (some deliveries land mid-processing)."""
    server = await start_server(settings, run_worker=True)
    pi, ch, author = new_id("pi"), new_id("ch"), new_id("usr")
    paid = event(
        "checkout.session.completed", checkout_session(pi, amount=800, meta=metadata(author))
    )
    refund = event("charge.refunded", charge(pi, ch, amount=800, refunded=800), at=30)
    deliveries = [paid, refund] * 12
    random.Random(9).shuffle(deliveries)

    def delivery(evt: dict[str, Any]) -> Callable[[httpx.AsyncClient], Awaitable[Any]]:
        return lambda client: deliver(client, evt)

    answers = await many(server.url, [delivery(e) for e in deliveries])
    assert {a.status_code for a in answers} == {200}
    assert sum(not a.json()["duplicate"] for a in answers) == 2

    async def both_processed() -> bool:
        unprocessed = await pool.fetchval(
            "SELECT count(*) FROM stripe_events WHERE processed_at IS NULL"
        )
        return unprocessed == 0

    for _ in range(300):
        if await both_processed():
            break
        await asyncio.sleep(0.1)
    assert await both_processed()
    donations = await pool.fetch("SELECT amount_cents, refunded_cents, status FROM donations")
    assert [tuple(d) for d in donations] == [(800, 800, "refunded")]
    applied = await pool.fetch(
        "SELECT subject, count(*) AS n FROM audit_log WHERE action = 'stripe.event_applied' "
        "GROUP BY subject"
    )
    assert len(applied) == 2 and {a["n"] for a in applied} == {1}


async def crawl_same_item(server: RunningServer, pool: asyncpg.Pool) -> list[httpx.Response]:
    """The same item (half the clients with an edited title) from every client at once."""
    source_id, _ = await add_source(pool)

    def crawl_call(n: int) -> Callable[[httpx.AsyncClient], Awaitable[Any]]:
        body = {"sourceId": source_id, "items": [item("same-1", title=CRAWL_TITLES[n % 2])]}
        return lambda client: client.post("/ingest/crawl", json=body, headers=APP_HEADERS)

    answers = await many(server.url, [crawl_call(n) for n in range(CLIENTS)])
    assert [a.status_code for a in answers] == [200] * CLIENTS, [a.text for a in answers]
    return answers


CRAWL_TITLES = ("First title", "Edited title")


async def test_one_crawl_item_from_many_clients_makes_one_rule(
    server: RunningServer, pool: asyncpg.Pool
) -> None:
    """One crawl item, one rule, linked to each other, holding one of the sent titles."""
    answers = await crawl_same_item(server, pool)
    assert await pool.fetchval("SELECT count(*) FROM crawl_items") == 1
    rules = await pool.fetch("SELECT id, title FROM rules WHERE external_id = 'same-1'")
    assert len(rules) == 1 and rules[0]["title"] in CRAWL_TITLES
    linked = await pool.fetchval("SELECT rule_id FROM crawl_items WHERE external_id = 'same-1'")
    assert linked == rules[0]["id"]
    assert {a.json()["items"][0]["ruleId"] for a in answers} == {rules[0]["id"]}


async def test_one_crawl_item_from_many_clients_is_reported_created_once(
    server: RunningServer, pool: asyncpg.Pool
) -> None:
    """Only the client whose upsert inserted the item hears `created`; the others `updated`
    (a different title) or `unchanged` (the same content), as their own statements wrote."""
    answers = await crawl_same_item(server, pool)
    reports = [a.json() for a in answers]
    assert sum(r["created"] for r in reports) == 1
    assert all(r["created"] + r["updated"] + r["unchanged"] == 1 for r in reports)
    created = next(r for r in reports if r["created"])
    assert created["items"][0]["status"] == "created"


async def test_concurrent_rollup_triggers_queue_one_job_and_one_run(
    server: RunningServer, pool: asyncpg.Pool, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    day = (utc_today() - timedelta(days=1)).isoformat()

    def trigger(client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
        return client.post(
            "/cron/rollup", json={"date": day, "daysToProcess": 2}, headers=CRON_HEADERS
        )

    answers = await many(server.url, [trigger] * CLIENTS)
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    assert len({a.json()["jobId"] for a in answers}) == 1
    assert sum(not a.json()["alreadyQueued"] for a in answers) == 1
    jobs_rows = await pool.fetch(
        "SELECT status::text FROM procrastinate_jobs WHERE task_name = 'rollup'"
    )
    assert [j["status"] for j in jobs_rows] == ["todo"]
    requested = "SELECT count(*) FROM audit_log WHERE action = 'rollup.requested'"
    assert await pool.fetchval(requested) == CLIENTS

    await run_jobs()
    # The worker's periodic backfill may add a run of its own; this job ran once.
    job_id = answers[0].json()["jobId"]
    runs = await pool.fetch(
        "SELECT status FROM rollup_runs WHERE actor = $1", f"job:rollup:{job_id}"
    )
    assert [r["status"] for r in runs] == ["succeeded"]
