"""POST /ingest/events: per-event validation, idempotency, privacy, limits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.client_ip import IpHasher
from app.events import MAX_EVENTS, ingest_batch, prepare_batch
from tests.conftest import APP_HEADERS
from tests.factories import create_rule, create_user

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


async def post(http: httpx.AsyncClient, events: list[Any], **headers: str) -> httpx.Response:
    return await http.post("/ingest/events", json={"events": events}, headers=APP_HEADERS | headers)


async def count(pool: asyncpg.Pool, where: str = "true", *args: Any) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM events WHERE {where}", *args))


async def test_mixed_batch_stores_good_events_and_names_each_rejection(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    rule = await create_rule(pool)
    user = await create_user(pool)
    now = datetime.now(UTC)
    events: list[Any] = [
        {"type": "COPY", "ruleId": rule, "userId": user},  # 0 ok
        {"type": "CLICK", "ruleId": rule},  # 1
        {"type": "SAVE", "ruleId": "bad id!"},  # 2
        {"type": "SAVE", "ruleId": rule, "userId": 42},  # 3
        {"type": "FORK", "ruleId": rule, "ts": "yesterday"},  # 4
        {"type": "FORK", "ruleId": rule, "ts": iso(now + timedelta(minutes=6))},  # 5
        {"type": "FORK", "ruleId": rule, "ts": iso(now - timedelta(days=31))},  # 6
        {"type": "VOTE", "ruleId": rule, "idempotencyKey": "k" * 129},  # 7
        {"type": "VOTE", "ruleId": "rul_missing"},  # 8
        {"type": "VOTE", "ruleId": rule, "userId": "usr_missing"},  # 9
        {"type": "VIEW", "ruleId": rule, "ip": "not-an-ip"},  # 10
        "not an object",  # 11
        {"type": "VOTE", "ruleId": rule, "ts": "2026-01-01T00:00:00"},  # 12 no offset
        {
            "type": "SAVE",
            "ruleId": rule,
            "ts": iso(now - timedelta(days=29)),
            "idempotencyKey": "k" * 128,
        },  # 13 ok
        {"type": "VIEW", "ruleId": rule, "ip": "2001:db8::1"},  # 14 ok
    ]
    response = await post(http, events)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 3 and body["duplicates"] == 0
    assert body["rejected"] == [
        {"index": 1, "reason": "unknown_type"},
        {"index": 2, "reason": "invalid_rule_id"},
        {"index": 3, "reason": "invalid_user_id"},
        {"index": 4, "reason": "invalid_ts"},
        {"index": 5, "reason": "ts_in_future"},
        {"index": 6, "reason": "ts_too_old"},
        {"index": 7, "reason": "invalid_idempotency_key"},
        {"index": 8, "reason": "unknown_rule"},
        {"index": 9, "reason": "unknown_user"},
        {"index": 10, "reason": "invalid_ip"},
        {"index": 11, "reason": "invalid_event"},
        {"index": 12, "reason": "invalid_ts"},
    ]
    rows = await pool.fetch("SELECT type, user_id, ip_hash FROM events ORDER BY type")
    assert [r["type"] for r in rows] == ["COPY", "SAVE", "VIEW"]
    assert rows[0]["user_id"] == user
    assert all(len(r["ip_hash"]) == 32 for r in rows)


async def test_nothing_accepted_is_still_202_with_reasons(http: httpx.AsyncClient) -> None:
    response = await post(http, [{"type": "VIEW", "ruleId": "rul_nope"}])
    assert response.status_code == 202
    assert response.json() == {
        "accepted": 0,
        "duplicates": 0,
        "rejected": [{"index": 0, "reason": "unknown_rule"}],
    }


async def test_ts_defaults_to_receive_time(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    rule = await create_rule(pool)
    before = datetime.now(UTC)
    assert (await post(http, [{"type": "SAVE", "ruleId": rule}])).json()["accepted"] == 1
    ts = await pool.fetchval("SELECT ts FROM events")
    assert before - timedelta(seconds=1) <= ts <= datetime.now(UTC)


async def test_idempotency_key_counts_once_within_and_across_batches(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    rule = await create_rule(pool)
    event = {"type": "SAVE", "ruleId": rule, "idempotencyKey": "save-1"}
    first = (await post(http, [event, event, {**event, "type": "COPY"}])).json()
    assert first == {"accepted": 1, "duplicates": 2, "rejected": []}
    again = (await post(http, [event])).json()
    assert again == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert await count(pool, "idempotency_key = 'save-1'") == 1


async def test_twenty_concurrent_identical_requests_store_one_event(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    rule = await create_rule(pool)
    events = [
        {"type": "VOTE", "ruleId": rule, "idempotencyKey": "vote-1"},
        {"type": "FORK", "ruleId": rule, "idempotencyKey": "fork-1"},
    ]
    responses = await asyncio.gather(*(post(http, events) for _ in range(20)))
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    assert sum(r.json()["accepted"] for r in responses) == 2
    assert sum(r.json()["duplicates"] for r in responses) == 38
    assert await count(pool) == 2


async def test_every_valid_view_is_stored_whatever_its_order(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Intake keeps no window: each view is stored (the rollup decides which count,
    tests/integration/test_view_counting.py); only a repeated idempotency key is a duplicate."""
    rule = await create_rule(pool)
    ip = "198.51.100.7"
    times = [T0, T0 + timedelta(minutes=9), T0 - timedelta(days=2), T0 + timedelta(seconds=1)]
    views = [{"type": "VIEW", "ruleId": rule, "ip": ip, "ts": iso(t)} for t in times]
    assert (await post(http, views[:2])).json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert (await post(http, views[2:])).json()["accepted"] == 2
    keyed = {**views[0], "idempotencyKey": "view-1"}
    assert (await post(http, [keyed, keyed])).json() == {
        "accepted": 1,
        "duplicates": 1,
        "rejected": [],
    }
    stored = [r["ts"] for r in await pool.fetch("SELECT ts FROM events ORDER BY ts, id")]
    assert stored == sorted([*times, T0])


async def test_client_ip_falls_back_to_forwarded_for_then_peer(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    rule = await create_rule(pool)
    await post(http, [{"type": "SAVE", "ruleId": rule, "ip": "192.0.2.1"}])
    await post(
        http, [{"type": "SAVE", "ruleId": rule}], **{"x-forwarded-for": "192.0.2.1, 10.0.0.1"}
    )
    await post(http, [{"type": "SAVE", "ruleId": rule}])
    hashes = [r["ip_hash"] for r in await pool.fetch("SELECT ip_hash FROM events ORDER BY id")]
    assert hashes[0] == hashes[1] != hashes[2]


async def test_raw_ip_is_never_stored_or_logged(
    http: httpx.AsyncClient, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    rule = await create_rule(pool)
    ips = ["203.0.113.77", "2001:db8:feed::77", "198.51.100.177"]
    caplog.set_level(logging.DEBUG)
    await post(
        http,
        [
            {"type": "VIEW", "ruleId": rule, "ip": ips[0]},
            {"type": "VIEW", "ruleId": rule, "ip": ips[1]},
            {"type": "VIEW", "ruleId": rule, "ip": "bad"},
        ],
        **{"x-forwarded-for": ips[2]},
    )
    await post(http, [{"type": "COPY", "ruleId": rule}], **{"x-forwarded-for": ips[2]})
    assert await count(pool) == 3
    tables = await pool.fetch(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) AS name "
        "FROM pg_stat_user_tables"
    )
    dump = []
    for table in tables:
        dump += [r[0] for r in await pool.fetch(f"SELECT t::text FROM {table['name']} t")]
    text = "\n".join(dump)
    logged = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    assert "request" in logged  # the access log did run
    for ip in ips:
        assert ip not in text
        assert ip not in logged


async def test_one_audit_row_per_request(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    rule = await create_rule(pool)
    events = [{"type": "VIEW", "ruleId": rule, "ip": f"192.0.2.{i}"} for i in range(1, 6)]
    events.append({"type": "VIEW", "ruleId": "rul_gone"})
    response = await post(http, events, **{"x-request-id": "req-audit-1"})
    rows = await pool.fetch("SELECT * FROM audit_log WHERE action = 'events.accepted'")
    assert len(rows) == 1
    row = rows[0]
    assert row["actor"].startswith("app:") and row["request_id"] == "req-audit-1"
    assert row["details"] == {"received": 6, "accepted": 5, "duplicates": 0, "rejected": 1}
    assert response.headers["x-request-id"] == "req-audit-1"


async def test_too_many_events_are_400_and_too_large_a_body_413(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    rule = await create_rule(pool)
    response = await post(http, [{"type": "VIEW", "ruleId": rule}] * (MAX_EVENTS + 1))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_failed"
    assert "500 events" in response.json()["error"]["message"]
    pad = "x" * (1024 * 1024)
    response = await http.post(
        "/ingest/events",
        content=orjson.dumps({"events": [{"type": "VIEW", "ruleId": rule, "pad": pad}]}),
        headers=APP_HEADERS | {"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "1 MiB" in response.json()["error"]["message"]
    assert await count(pool) == 0
    full = await post(http, [{"type": "SAVE", "ruleId": rule}] * MAX_EVENTS)
    assert full.status_code == 202 and full.json()["accepted"] == MAX_EVENTS


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "bad_request"),
        (b"[]", "validation_failed"),
        (b'{"items": []}', "validation_failed"),
        (b'{"events": "VIEW"}', "validation_failed"),
        (b'{"events": []}', "validation_failed"),
    ],
)
async def test_malformed_bodies_are_400(http: httpx.AsyncClient, body: bytes, code: str) -> None:
    response = await http.post(
        "/ingest/events", content=body, headers=APP_HEADERS | {"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    if code == "validation_failed":
        assert error["details"] and {"loc", "msg", "type"} <= set(error["details"][0])


async def test_requires_app_token(http: httpx.AsyncClient) -> None:
    response = await http.post("/ingest/events", json={"events": []})
    assert response.status_code == 401


async def test_batch_of_500_issues_as_many_statements_as_a_batch_of_one(
    pool: asyncpg.Pool,
) -> None:
    rules = [await create_rule(pool) for _ in range(5)]
    hasher = IpHasher("test-secret")
    now = datetime.now(UTC)

    def events(n: int, tag: str) -> list[Any]:
        kinds = ["VIEW", "COPY", "SAVE", "FORK", "VOTE"]
        return [
            {
                "type": kinds[i % 5],
                "ruleId": rules[i % 5],
                "ip": f"10.{ord(tag)}.{i // 250}.{i % 250}",
                "idempotencyKey": f"{tag}-{i}" if i % 3 == 0 else None,
                "ts": iso(now - timedelta(seconds=i)),
            }
            for i in range(n)
        ]

    async def statements(n: int, tag: str) -> tuple[int, int]:
        batch = prepare_batch(events(n, tag), now=now, request_ip_hash="x", hasher=hasher)
        seen: list[str] = []
        async with pool.acquire() as conn:

            def log(record: Any) -> None:
                seen.append(record.query)

            conn.add_query_logger(log)
            async with conn.transaction():
                report = await ingest_batch(conn, batch=batch, actor="app:t", request_id=None)
            conn.remove_query_logger(log)
        return len(seen), report.accepted

    await statements(1, "w")  # the first call also prepares the statement and its types
    one, accepted_one = await statements(1, "a")
    many, accepted_many = await statements(500, "b")
    assert accepted_one == 1 and accepted_many == 500
    assert one == many <= 3  # BEGIN, the batch statement, COMMIT


async def test_purge_drops_only_full_rate_limit_buckets(
    pool: asyncpg.Pool, proc_app: Any, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    await pool.execute(
        "INSERT INTO rate_limit_buckets VALUES ('old', 0, now() - interval '1 hour', true), "
        "('new', 0, now(), true)"
    )
    await proc_app.configure_task("purge_event_state").defer_async()
    await run_jobs()
    assert [r["key"] for r in await pool.fetch("SELECT key FROM rate_limit_buckets")] == ["new"]


def test_client_ip_rules_and_hash() -> None:
    from app.client_ip import forwarded_or_peer, normalise_ip

    assert normalise_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert normalise_ip("2001:DB8::1") == "2001:db8::1"
    assert normalise_ip("999.1.1.1") is None
    assert forwarded_or_peer("192.0.2.1, 10.0.0.1", "127.0.0.1") == "192.0.2.1"
    assert forwarded_or_peer("garbage", "127.0.0.1") == "127.0.0.1"
    assert forwarded_or_peer(None, None) is None
    one, other = IpHasher("secret-a"), IpHasher("secret-b")
    assert one.hash("192.0.2.1") == one.hash("192.0.2.1") != other.hash("192.0.2.1")
    assert len(one.hash("192.0.2.1")) == 32 and "192" not in one.hash("192.0.2.1")
