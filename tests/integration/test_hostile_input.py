"""Hostile input: every endpoint answers 4xx with the error model (or 2xx with per-item
rejections), never 5xx, and a refused request writes nothing.

Decisions where the contract was silent:
- duplicate keys in a JSON object: the last one wins (orjson, like most JSON parsers);
- NUL (`\\u0000`) in any JSON string, keys included: 400 for the whole request (PostgreSQL
  text and jsonb cannot hold it), also in a signed Stripe event (400 invalid_stripe_event);
- JSON nested deeper than 254 levels (what jsonb values can be written with): 400;
- the Stripe webhook verifies the raw body whatever its Content-Type (Stripe's own contract);
- timestamps: an event's `ts` must carry an offset, be at most 30 days old and at most 5
  minutes ahead (else the event alone is rejected); a rollup day is 2000-01-01..9999-12-01.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests import stripe_helpers
from tests.conftest import APP_HEADERS, CRON_HEADERS, RunningServer
from tests.factories import add_source, create_rule, create_user
from tests.http_helpers import announce

COUNTED_TABLES = ("events", "rules", "crawl_items", "stripe_events", "donations")
LEAKS = ("Traceback", 'File "', "asyncpg", "psycopg", "SELECT ", "INSERT ", "sqlstate")


@pytest.fixture
async def world(server: RunningServer, pool: asyncpg.Pool) -> dict[str, Any]:
    """A rule, a user and a crawl source to aim valid-looking requests at."""
    user = await create_user(pool)
    rule = await create_rule(pool)
    source, _ = await add_source(pool, "Hostile partner")
    return {"user": user, "rule": rule, "source": source}


def now_iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def valid_bodies(world: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """A valid body per JSON endpoint, with every kind of field, and its credential."""
    event = {
        "type": "VIEW",
        "ruleId": world["rule"],
        "userId": world["user"],
        "ts": now_iso(),
        "idempotencyKey": "key-1",
        "ip": "203.0.113.7",
    }
    item = {
        "externalId": "ext-1",
        "url": "https://partner.example/rules/1",
        "title": "A rule",
        "summary": "What it does",
        "tags": ["python", "testing"],
        "model": "gpt-5",
        "raw": {"stars": 3, "author": {"name": "Ann"}},
    }
    return {
        "/ingest/events": ({"events": [event]}, APP_HEADERS),
        "/ingest/crawl": ({"sourceId": world["source"], "items": [item]}, APP_HEADERS),
        "/cron/rollup": ({"dryRun": True, "daysToProcess": 1, "date": "2026-11-01"}, CRON_HEADERS),
    }


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every string value in a JSON document."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, sub in value.items():
            yield from string_paths(sub, (*path, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            yield from string_paths(sub, (*path, index))


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    result = copy.deepcopy(document)
    target = result
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return result


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def assert_error(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx with exactly the error model, and nothing that belongs to the server's insides."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    if status is not None:
        assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["details"], list)
    for leak in LEAKS:
        assert leak not in response.text, leak
    return body["error"]  # type: ignore[no-any-return]


def assert_answered(response: httpx.Response) -> None:
    """Not a 5xx: a 2xx, or a 4xx with the error model."""
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert_error(response)


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in COUNTED_TABLES}


async def post_signed(http: httpx.AsyncClient, body: bytes, **headers: str) -> httpx.Response:
    signature = stripe_helpers.sign(body) if _utf8(body) else "t=1,v1=00"
    return await http.post(
        stripe_helpers.WEBHOOK_PATH,
        content=body,
        headers={"stripe-signature": signature, "content-type": "application/json", **headers},
    )


def _utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


# --- NUL characters ---------------------------------------------------------------------


async def test_nul_in_any_string_or_key_is_a_400_and_writes_nothing(
    http: httpx.AsyncClient, pool: asyncpg.Pool, world: dict[str, Any]
) -> None:
    before = await counts(pool)
    tried = 0
    for path, (body, headers) in valid_bodies(world).items():
        for where in string_paths(body):
            for value in ("\x00", "abc\x00def"):
                response = await http.post(path, json=replaced(body, where, value), headers=headers)
                error = assert_error(response, 400)
                assert "NUL" in error["message"], (path, where)
                tried += 1
        with_key = {**body, "extra\x00key": 1}
        assert_error(await http.post(path, json=with_key, headers=headers), 400)
    assert tried > 20
    assert await counts(pool) == before


async def test_escaped_backslash_before_u0000_is_not_a_nul(
    http: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    """The text `\\u0000` (an escaped backslash, then "u0000") is an ordinary string."""
    body, headers = valid_bodies(world)["/ingest/crawl"]
    body = replaced(body, ("items", 0, "summary"), "literally \\u0000 here")
    response = await http.post("/ingest/crawl", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 1


async def test_nul_in_a_signed_stripe_event_or_a_search_query_is_a_400(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    before = await counts(pool)
    evt = stripe_helpers.event("charge.succeeded", {"id": "ch_1", "description": "a\x00b"})
    error = assert_error(await stripe_helpers.deliver(http, evt), 400)
    assert error["code"] == "invalid_stripe_event"
    response = await http.get("/internal/search", params={"q": "a\x00b"}, headers=APP_HEADERS)
    assert_error(response, 400)
    assert await counts(pool) == before


# --- size, depth, encoding, content type -----------------------------------------------

ROUTE_LIMITS = {
    "/ingest/events": 1024 * 1024,
    "/ingest/crawl": 5 * 1024 * 1024,
    "/cron/rollup": 4096,
    stripe_helpers.WEBHOOK_PATH: 1024 * 1024,
}


SERVER_LIMIT = 5 * 1024 * 1024


@pytest.mark.parametrize("path", sorted(ROUTE_LIMITS))
async def test_oversized_bodies_are_413_naming_the_limit(
    http: httpx.AsyncClient, pool: asyncpg.Pool, path: str
) -> None:
    limit = ROUTE_LIMITS[path]
    if limit < SERVER_LIMIT:
        headers = {**APP_HEADERS, **CRON_HEADERS, "content-type": "application/json"}
        body = b'{"x": "' + b"a" * limit + b'"}'
        error = assert_error(await http.post(path, content=body, headers=headers), 413)
    else:
        status, answer = await announce(http, path, limit + 1)
        assert status == 413 and set(answer["error"]) == {"code", "message", "details"}
        error = answer["error"]
    assert str(limit) in error["message"]
    assert await counts(pool) == dict.fromkeys(COUNTED_TABLES, 0)


async def test_too_many_events_are_400_and_a_body_over_the_server_limit_413(
    http: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    event = {"type": "VIEW", "ruleId": world["rule"]}
    response = await http.post(
        "/ingest/events", json={"events": [event] * 501}, headers=APP_HEADERS
    )
    error = assert_error(response, 400)
    assert error["code"] == "validation_failed" and "500" in error["message"]
    status, answer = await announce(http, "/cron/rebuild-search", SERVER_LIMIT + 1)
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize("depth", [255, 300, 1100, 100_000])
async def test_deeply_nested_json_is_a_400_everywhere(
    http: httpx.AsyncClient, pool: asyncpg.Pool, world: dict[str, Any], depth: int
) -> None:
    for path, (body, headers) in valid_bodies(world).items():
        field = {"/ingest/events": "events", "/ingest/crawl": "items"}.get(path, "dryRun")
        payload = orjson.dumps({**body, field: "PLACEHOLDER"})
        payload = payload.replace(b'"PLACEHOLDER"', b"[" * depth + b"]" * depth)
        if len(payload) > ROUTE_LIMITS[path]:
            continue
        response = await http.post(
            path, content=payload, headers={**headers, "content-type": "application/json"}
        )
        assert_error(response, 400)
    evt = {**stripe_helpers.event("ping", {}), "deep": "PLACEHOLDER"}
    text = orjson.dumps(evt).replace(b'"PLACEHOLDER"', b"[" * depth + b"]" * depth)
    error = assert_error(await post_signed(http, text), 400)
    assert error["code"] == "invalid_stripe_event"
    assert await counts(pool) == {**dict.fromkeys(COUNTED_TABLES, 0), "rules": 1}


async def test_raw_nested_as_deep_as_the_body_allows_is_stored(
    http: httpx.AsyncClient, pool: asyncpg.Pool, world: dict[str, Any]
) -> None:
    """body > items > item > raw: raw may nest 250 more levels and still be written as jsonb."""
    body, headers = valid_bodies(world)["/ingest/crawl"]
    body = replaced(body, ("items", 0, "raw"), {"deep": nested(250)})
    response = await http.post("/ingest/crawl", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 1


async def test_invalid_utf8_is_a_400_everywhere(
    http: httpx.AsyncClient, pool: asyncpg.Pool, world: dict[str, Any]
) -> None:
    for path, (body, headers) in valid_bodies(world).items():
        for bad in (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"):
            text = orjson.dumps(body).replace(b'"', b'"' + bad, 1)
            response = await http.post(
                path, content=text, headers={**headers, "content-type": "application/json"}
            )
            assert_error(response, 400)
    for escape in (b'"\\ud800"', b'"\\udc00x"'):  # lone surrogates, escaped
        text = (
            orjson.dumps(valid_bodies(world)["/cron/rollup"][0])[:-1] + b', "x": ' + escape + b"}"
        )
        assert_error(await http.post("/cron/rollup", content=text, headers=CRON_HEADERS), 400)
    evt = orjson.dumps(stripe_helpers.event("ping", {})).replace(b"ping", b"p\xffng")
    error = assert_error(await post_signed(http, evt), 400)
    assert error["code"] == "invalid_stripe_event"
    assert await counts(pool) == {**dict.fromkeys(COUNTED_TABLES, 0), "rules": 1}


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "xml"],
)
async def test_a_non_json_content_type_is_415(
    http: httpx.AsyncClient, pool: asyncpg.Pool, world: dict[str, Any], content_type: str
) -> None:
    for path, (body, headers) in valid_bodies(world).items():
        response = await http.post(
            path, content=orjson.dumps(body), headers={**headers, "content-type": content_type}
        )
        assert assert_error(response, 415)["code"] == "unsupported_media_type"
    assert await counts(pool) == {**dict.fromkeys(COUNTED_TABLES, 0), "rules": 1}


async def test_json_media_types_with_parameters_or_suffixes_are_accepted(
    http: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    body, headers = valid_bodies(world)["/cron/rollup"]
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        response = await http.post(
            "/cron/rollup",
            content=orjson.dumps(body),
            headers={**headers, "content-type": content_type},
        )
        assert response.status_code == 200, response.text


async def test_non_object_bodies_are_400(http: httpx.AsyncClient, world: dict[str, Any]) -> None:
    for path, (_, headers) in valid_bodies(world).items():
        for text in (b"null", b"[]", b'"x"', b"1", b"true", b"{", b"{}garbage", b" "):
            response = await http.post(
                path, content=text, headers={**headers, "content-type": "application/json"}
            )
            assert_error(response, 400)


# --- huge strings, numbers out of range ----------------------------------------------

HUGE = {"/ingest/events": 900_000, "/ingest/crawl": 4_000_000, "/cron/rollup": 3_500}


async def test_a_huge_string_in_every_field_is_refused_or_rejected_never_stored(
    http: httpx.AsyncClient, pool: asyncpg.Pool, world: dict[str, Any]
) -> None:
    for path, (body, headers) in valid_bodies(world).items():
        for where in string_paths(body):
            response = await http.post(
                path, json=replaced(body, where, "x" * HUGE[path]), headers=headers
            )
            assert_answered(response)
            if response.status_code < 300 and path != "/cron/rollup":
                answer = response.json()
                assert [r["index"] for r in answer["rejected"]] == [0], (path, where, answer)
    assert await counts(pool) == {**dict.fromkeys(COUNTED_TABLES, 0), "rules": 1}
    response = await http.get("/internal/search", params={"q": "x" * 6000}, headers=APP_HEADERS)
    assert_error(response)


@pytest.mark.parametrize(
    "value", [2**63, 2**64, -(2**63) - 1, 10**30, -1, 0, 31, 1.5, 31.0, "7", True, None, [7], {}]
)
async def test_rollup_days_out_of_range_or_of_the_wrong_type_are_400(
    http: httpx.AsyncClient, value: Any
) -> None:
    response = await http.post("/cron/rollup", json={"daysToProcess": value}, headers=CRON_HEADERS)
    assert_error(response, 400)


async def test_rollup_days_written_as_a_whole_float_is_that_integer(
    http: httpx.AsyncClient,
) -> None:
    """7.0 is the integer 7 in JSON and in the published schema (`type: integer`)."""
    body = {"daysToProcess": 7.0, "dryRun": True}
    response = await http.post("/cron/rollup", json=body, headers=CRON_HEADERS)
    assert response.status_code == 200, response.text
    assert len(response.json()["days"]) == 7


async def test_numbers_out_of_range_elsewhere(
    http: httpx.AsyncClient, pool: asyncpg.Pool, world: dict[str, Any]
) -> None:
    too_big = b"1" + b"0" * 400  # beyond a double: orjson refuses it
    text = b'{"daysToProcess": ' + too_big + b"}"
    assert_error(await http.post("/cron/rollup", content=text, headers=CRON_HEADERS), 400)
    event = {"type": "VIEW", "ruleId": world["rule"]}
    for field in ("ts", "ruleId", "userId", "idempotencyKey", "ip", "type"):
        for number in (2**64, -(2**63) - 1, 1e308):
            body = {"events": [{**event, field: number}]}
            response = await http.post("/ingest/events", json=body, headers=APP_HEADERS)
            assert response.status_code == 202, response.text
            assert response.json()["accepted"] == 0
    item = {"externalId": 2**63 - 1, "url": "https://p.example/1", "title": "Big id"}
    body = {"sourceId": world["source"], "items": [item, {**item, "externalId": 2**64}]}
    answer = (await http.post("/ingest/crawl", json=body, headers=APP_HEADERS)).json()
    assert answer["created"] == 1 and [r["index"] for r in answer["rejected"]] == [1]
    for limit in ("0", "101", "-1", "99999999999999999999999", "1e3", "x"):
        response = await http.get(
            "/internal/search", params={"q": "x", "limit": limit}, headers=APP_HEADERS
        )
        assert_error(response, 400)
    assert await counts(pool) == {**dict.fromkeys(COUNTED_TABLES, 0), "rules": 2, "crawl_items": 1}


@pytest.mark.parametrize("created", [2**63, 10**18, 253402300800, -62135596801, -(10**18)])
async def test_signed_stripe_events_with_a_created_time_out_of_range_are_400(
    http: httpx.AsyncClient, pool: asyncpg.Pool, created: int
) -> None:
    evt = {**stripe_helpers.event("ping", {}), "created": created}
    assert (
        assert_error(await stripe_helpers.deliver(http, evt), 400)["code"] == "invalid_stripe_event"
    )
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_signed_stripe_events_at_the_edges_of_time_and_size_are_stored(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    for created in (-62135596800, 0, 253402300799):
        evt = {**stripe_helpers.event("ping", {}), "created": created}
        assert (await stripe_helpers.deliver(http, evt)).status_code == 200
    long_id = {**stripe_helpers.event("ping", {}), "id": "evt_" + "x" * 300}
    assert_error(await stripe_helpers.deliver(http, long_id), 400)
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 3


# --- timestamps at the edges --------------------------------------------------------------

EDGE_TS = [
    ("0001-01-01T00:00:00+00:00", "ts_too_old"),
    ("0001-01-01T00:00:00+01:00", "ts_too_old"),
    ("0001-01-01T00:00:00-23:59", "ts_too_old"),
    ("9999-12-31T23:59:59.999999+00:00", "ts_in_future"),
    ("9999-12-31T23:59:59-23:59", "ts_in_future"),
    ("9999-12-31T23:59:59+23:59", "ts_in_future"),
    ("2026-06-30T23:59:60+00:00", "invalid_ts"),  # leap second: not representable
    ("2026-11-29T10:00:00", "invalid_ts"),  # no offset: not an instant
    ("2026-11-29", "invalid_ts"),
    ("", "invalid_ts"),
    ("yesterday", "invalid_ts"),
    ("10000-01-01T00:00:00+00:00", "invalid_ts"),
    ("2026-02-30T00:00:00+00:00", "invalid_ts"),
]


async def test_event_timestamps_at_the_edges(
    http: httpx.AsyncClient, pool: asyncpg.Pool, world: dict[str, Any]
) -> None:
    relative = [
        (now_iso(-timedelta(days=30) + timedelta(seconds=20)), None),
        (now_iso(-timedelta(days=30) - timedelta(seconds=20)), "ts_too_old"),
        (now_iso(timedelta(minutes=5) - timedelta(seconds=20)), None),
        (now_iso(timedelta(minutes=5) + timedelta(seconds=20)), "ts_in_future"),
        (datetime.now(UTC).astimezone(_offset(14)).isoformat(), None),
        (datetime.now(UTC).astimezone(_offset(-12)).isoformat(), None),
        (datetime.now(UTC).isoformat().replace("+00:00", "Z"), None),
    ]
    cases = EDGE_TS + relative
    events = [{"type": "COPY", "ruleId": world["rule"], "ts": ts} for ts, _ in cases]
    response = await http.post("/ingest/events", json={"events": events}, headers=APP_HEADERS)
    assert response.status_code == 202, response.text
    reasons = {r["index"]: r["reason"] for r in response.json()["rejected"]}
    assert reasons == {i: reason for i, (_, reason) in enumerate(cases) if reason is not None}
    assert await pool.fetchval("SELECT count(*) FROM events") == sum(r is None for _, r in cases)


def _offset(hours: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


@pytest.mark.parametrize(
    ("day", "days", "status"),
    [
        ("0001-01-01", 1, 400),
        ("1999-12-31", 1, 400),
        ("9999-12-31", 1, 400),
        ("10000-01-01", 1, 400),
        ("2026-02-30", 1, 400),
        ("2000-01-01", 30, 200),
        ("9999-12-01", 30, 200),
        ("2026-11-01", 30, 200),
    ],
)
async def test_rollup_days_at_the_edges(
    http: httpx.AsyncClient, day: str, days: int, status: int
) -> None:
    body = {"date": day, "daysToProcess": days, "dryRun": True}
    response = await http.post("/cron/rollup", json=body, headers=CRON_HEADERS)
    if status == 400:
        assert_error(response, 400)
    else:
        assert response.status_code == 200, response.text
        assert response.json()["endDay"] == day


# --- duplicate keys ---------------------------------------------------------------------------


async def test_duplicate_keys_the_last_one_wins(
    http: httpx.AsyncClient, pool: asyncpg.Pool, world: dict[str, Any]
) -> None:
    text = b'{"dryRun": false, "daysToProcess": 0, "daysToProcess": 2, "dryRun": true}'
    response = await http.post("/cron/rollup", content=text, headers=CRON_HEADERS)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "dry_run" and len(response.json()["days"]) == 2
    rule = world["rule"].encode()
    text = (
        b'{"events": [], "events": [{"type": "FORK", "type": "SAVE", "ruleId": "' + rule + b'"}]}'
    )
    response = await http.post(
        "/ingest/events", content=text, headers={**APP_HEADERS, "content-type": "application/json"}
    )
    assert response.status_code == 202 and response.json()["accepted"] == 1
    assert await pool.fetchval("SELECT type FROM events") == "SAVE"


# --- browsers ---------------------------------------------------------------------------------


async def test_browser_requests_and_preflights_are_refused_on_every_endpoint(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    spec = (await http.get("/openapi.json")).json()
    origin = {"origin": "https://evil.example"}
    credentials = {**APP_HEADERS, **CRON_HEADERS}
    checked = 0
    for path, operations in spec["paths"].items():
        for method in operations:
            preflight = await http.options(
                path, headers={**origin, "access-control-request-method": method.upper()}
            )
            call = await http.request(method.upper(), path, headers={**origin, **credentials})
            if path == "/health":
                assert call.status_code == 200
                assert "access-control-allow-origin" not in preflight.headers
                continue
            for response in (preflight, call):
                assert assert_error(response, 403)["code"] == "browser_forbidden"
                assert "access-control-allow-origin" not in response.headers
            checked += 1
    assert checked >= 8
    assert await counts(pool) == dict.fromkeys(COUNTED_TABLES, 0)


# --- headers ----------------------------------------------------------------------------------


async def test_odd_credential_headers_are_401_not_500(http: httpx.AsyncClient) -> None:
    tokens = [
        "é".encode(),
        b"\xff\xfe",
        b"x" * 4000,
        b"a b",
        APP_HEADERS["x-app-token"].encode() + b"x",
    ]
    for token in tokens:
        response = await http.post(
            "/ingest/events", json={"events": [{}]}, headers=[("x-app-token", token)]
        )
        assert_error(response, 401)


async def test_odd_query_strings_and_paths_are_answered_never_5xx(http: httpx.AsyncClient) -> None:
    for query in (
        "q=%ff%fe",
        "q=%00",
        "q=%",
        "q=a&q=b&limit=%ff",
        "limit=1&limit=x&q=a",
        "q=" + "%e2%82" * 50,
    ):
        response = await http.get(f"/internal/search?{query}", headers=APP_HEADERS)
        assert_answered(response)
    for path in ("/ingest/events%00", "/%ff", "/ingest/../cron/rollup", "/" + "a" * 5000):
        response = await http.post(path, json={}, headers={**APP_HEADERS, **CRON_HEADERS})
        assert_answered(response)


async def test_headers_over_the_size_limit_are_a_4xx_with_the_error_model(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/ingest/events", json={"events": [{}]}, headers={"x-app-token": "x" * 20_000}
    )
    error = assert_error(response, 431)
    assert error["code"] == "request_headers_too_large"
    assert "8192 bytes" in error["message"]


async def test_the_webhook_verifies_the_raw_body_whatever_its_content_type(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Stripe's contract is the signature over the raw bytes, not the Content-Type."""
    body = orjson.dumps(stripe_helpers.event("ping", {}))
    for content_type in ("text/plain", "application/octet-stream"):
        response = await http.post(
            stripe_helpers.WEBHOOK_PATH,
            content=body,
            headers={"stripe-signature": stripe_helpers.sign(body), "content-type": content_type},
        )
        assert response.status_code == 200, response.text
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 1
