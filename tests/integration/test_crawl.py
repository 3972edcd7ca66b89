"""Crawl intake over HTTP, as a partner uses it: batches sent, edited and sent again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.crawl import MAX_ITEMS, MAX_RAW_BYTES, import_items, validate_items
from tests.conftest import APP_HEADERS, RunningServer, make_settings
from tests.factories import add_source
from tests.http_helpers import announce


def item(external_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "externalId": external_id,
        "url": f"https://partner.example/rules/{external_id}",
        "title": f"Rule {external_id}",
        "summary": f"What rule {external_id} does",
    }
    body.update(fields)
    return body


async def send(
    http: httpx.AsyncClient, source_id: str, items: list[Any], **kwargs: Any
) -> httpx.Response:
    return await http.post(
        "/ingest/crawl",
        json={"sourceId": source_id, "items": items},
        headers=APP_HEADERS,
        **kwargs,
    )


async def row_versions(pool: asyncpg.Pool, table: str) -> dict[str, str]:
    """external_id -> xmin: any write to a row changes it."""
    rows = await pool.fetch(f"SELECT external_id, xmin::text AS v FROM {table}")
    return {r["external_id"]: r["v"] for r in rows}


async def test_one_request_creates_updates_skips_and_rejects(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    source_id, curator = await add_source(pool)
    first = await send(http, source_id, [item("keep"), item("edit"), item("old")])
    assert first.status_code == 200, first.text
    assert first.json()["created"] == 3

    response = await send(
        http,
        source_id,
        [
            item("keep"),
            item("edit", title="Rule edit, second edition"),
            item("new", tags=["Python", "python", "lint"], model="gpt-4o"),
            item("bad", url="ftp://partner.example/x"),
        ],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["created"], body["updated"], body["unchanged"]) == (1, 1, 1)
    assert body["rejected"] == [{"index": 3, "reason": body["rejected"][0]["reason"]}]
    assert "url" in body["rejected"][0]["reason"]
    statuses = {o["externalId"]: o["status"] for o in body["items"]}
    assert statuses == {"keep": "unchanged", "edit": "updated", "new": "created"}

    rules = {
        r["external_id"]: r
        for r in await pool.fetch(
            "SELECT id, external_id, title, author_id, source_id, tags, model FROM rules"
        )
    }
    assert set(rules) == {"keep", "edit", "old", "new"}
    assert rules["edit"]["title"] == "Rule edit, second edition"
    assert rules["new"]["tags"] == ["python", "lint"] and rules["new"]["model"] == "gpt-4o"
    assert {r["author_id"] for r in rules.values()} == {curator}
    assert {r["source_id"] for r in rules.values()} == {source_id}
    items = await pool.fetch("SELECT external_id, rule_id, title FROM crawl_items")
    assert {i["external_id"]: i["rule_id"] for i in items} == {k: r["id"] for k, r in rules.items()}
    ids = {o["externalId"]: o["ruleId"] for o in body["items"]}
    assert ids == {k: rules[k]["id"] for k in ("keep", "edit", "new")}


async def test_identical_resubmission_is_all_unchanged_and_writes_nothing(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    source_id, _ = await add_source(pool)
    batch = [item(str(n), raw={"stars": n, "meta": {"b": 1, "a": 2}}) for n in range(20)]
    assert (await send(http, source_id, batch)).json()["created"] == 20
    before = (await row_versions(pool, "crawl_items"), await row_versions(pool, "rules"))

    # The same content, differently spelled: key order, surrounding whitespace.
    again = [
        {**i, "title": f"  {i['title']} ", "raw": {"meta": {"a": 2, "b": 1}, "stars": n}}
        for n, i in enumerate(batch)
    ]
    body = (await send(http, source_id, again)).json()
    assert (body["created"], body["updated"], body["unchanged"], body["rejected"]) == (
        0,
        0,
        20,
        [],
    )
    after = (await row_versions(pool, "crawl_items"), await row_versions(pool, "rules"))
    assert after == before
    audit = await pool.fetch(
        "SELECT actor, subject, details FROM audit_log WHERE action = 'crawl.import' ORDER BY id"
    )
    assert [a["details"] for a in audit] == [
        {"items": 20, "created": 20, "updated": 0, "unchanged": 0, "rejected": 0},
        {"items": 20, "created": 0, "updated": 0, "unchanged": 20, "rejected": 0},
    ]
    assert {a["subject"] for a in audit} == {source_id}
    assert all(a["actor"].startswith("app:") for a in audit)


async def test_unknown_source_is_404_and_writes_nothing(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    response = await send(http, "src_nope", [item("a")])
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_source"
    assert "ingest sources add" in error["message"]
    assert await pool.fetchval("SELECT count(*) FROM rules") == 0


async def test_source_without_curator_is_refused_with_409(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    source_id = await pool.fetchval(
        "INSERT INTO crawl_sources (name) VALUES ('by hand') RETURNING id"
    )
    response = await send(http, source_id, [item("a")])
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "source_without_curator"
    assert "set-curator" in response.json()["error"]["message"]


async def test_duplicate_external_id_rejects_the_later_copy(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    source_id, _ = await add_source(pool)
    body = (
        await send(
            http,
            source_id,
            [
                item("x", title="first"),
                item("y"),
                {**item("x", title="second"), "externalId": " x "},
            ],
        )
    ).json()
    assert body["created"] == 2
    assert [r["index"] for r in body["rejected"]] == [2]
    assert "duplicate externalId" in body["rejected"][0]["reason"]
    assert await pool.fetchval("SELECT title FROM rules WHERE external_id = 'x'") == "first"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "https://x.example/" + "a" * 2040}, "url"),
        ({"url": "https://x.example/a b"}, "url"),
        ({"title": "t" * 301}, "title"),
        ({"title": "   "}, "title"),
        ({"title": 42}, "title"),
        ({"summary": "s" * 2001}, "summary"),
        ({"raw": ["not", "an", "object"]}, "raw"),
        ({"raw": {"blob": "x" * MAX_RAW_BYTES}}, "raw"),
        ({"raw": {"nul": "a\u0000b"}}, "raw"),
        ({"title": "nul\u0000"}, "title"),
        ({"externalId": ""}, "externalId"),
        ({"tags": ["t"] * 21}, "tags"),
    ],
)
def test_item_limits_reject_only_that_item(fields: dict[str, Any], reason: str) -> None:
    checked = validate_items([item("ok"), item("bad", **fields)])
    assert [i for i, _ in checked.accepted] == [0]
    assert [r.index for r in checked.rejected] == [1]
    assert checked.rejected[0].reason.startswith(reason), checked.rejected[0].reason


def test_items_at_the_limits_are_accepted() -> None:
    raw = {"blob": "x" * (MAX_RAW_BYTES - len(b'{"blob":""}'))}
    assert len(orjson.dumps(raw)) == MAX_RAW_BYTES
    url = "https://x.example/" + "a" * (2048 - len("https://x.example/"))
    checked = validate_items(
        [item("max", url=url, title="t" * 300, summary="s" * 2000, raw=raw), "not an object"]
    )
    assert [i for i, _ in checked.accepted] == [0]
    assert checked.rejected[0].index == 1


def test_lenient_spellings_of_optional_and_numeric_fields() -> None:
    checked = validate_items(
        [{**item("x"), "externalId": 1234, "tags": None, "summary": "", "model": " "}]
    )
    ((_, accepted),) = checked.accepted
    assert accepted.external_id == "1234" and accepted.tags == []
    assert accepted.canonical()["summary"] is None and accepted.canonical()["model"] is None
    assert validate_items([{**item("x"), "externalId": True}]).rejected


def test_content_hash_ignores_spelling_but_not_content() -> None:
    def hash_of(**fields: Any) -> str:
        return validate_items([item("h", **fields)]).accepted[0][1].content_hash()

    base = hash_of(raw={"a": 1, "b": {"c": 2, "d": 3}}, tags=["x", "y"])
    assert base == hash_of(raw={"b": {"d": 3, "c": 2}, "a": 1}, tags=["X", "y", "x"])
    assert base == hash_of(raw={"a": 1, "b": {"c": 2, "d": 3}}, tags=["x", "y"], extra="ignored")
    assert base != hash_of(raw={"a": 1, "b": {"c": 2, "d": 4}}, tags=["x", "y"])
    assert base != hash_of(raw={"a": 1, "b": {"c": 2, "d": 3}}, tags=["y", "x"])
    assert base.startswith("v1:")


async def test_request_limits(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    source_id, _ = await add_source(pool)
    too_many = await send(http, source_id, [item(str(n)) for n in range(MAX_ITEMS + 1)])
    assert too_many.status_code == 400
    assert too_many.json()["error"]["details"][0]["loc"] == ["items"]
    empty = await send(http, source_id, [])
    assert empty.status_code == 400

    status, answer = await announce(http, "/ingest/crawl", 5 * 1024 * 1024 + 1)
    message = answer["error"]["message"]
    assert status == 413
    assert str(5 * 1024 * 1024) in message

    full = await send(http, source_id, [item(str(n)) for n in range(MAX_ITEMS)])
    assert full.status_code == 200 and full.json()["created"] == MAX_ITEMS
    assert await pool.fetchval("SELECT count(*) FROM crawl_items") == MAX_ITEMS


async def test_crawl_needs_the_app_token(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    source_id, _ = await add_source(pool)
    response = await http.post("/ingest/crawl", json={"sourceId": source_id, "items": [item("a")]})
    assert response.status_code == 401
    wrong = await http.post(
        "/ingest/crawl",
        json={"sourceId": source_id, "items": [item("a")]},
        headers={"x-app-token": "nope"},
    )
    assert wrong.status_code == 401


def test_crawl_route_declares_its_limits(server: Any) -> None:
    route = next(
        r for r in server.app.router.routes if r.path == "ingest/crawl" and "POST" in r.methods
    )
    assert route.ctx.credential == "app"
    assert route.ctx.rate_limit == "crawl"
    assert route.ctx.body_limit == 5 * 1024 * 1024


async def test_statement_count_does_not_grow_with_the_batch(pool: asyncpg.Pool) -> None:
    source_id, _ = await add_source(pool)

    async def statements_for(count: int, prefix: str) -> int:
        seen: list[str] = []

        def log(record: Any) -> None:
            seen.append(record.query)

        async with pool.acquire() as conn:
            conn.add_query_logger(log)
            async with conn.transaction():
                await import_items(
                    conn,
                    source_id=source_id,
                    items=validate_items([item(f"{prefix}{n}") for n in range(count)]),
                    actor="test",
                )
            conn.remove_query_logger(log)
        return len([q for q in seen if q.strip().upper() not in ("BEGIN;", "COMMIT;")])

    assert await statements_for(1, "one-") == await statements_for(MAX_ITEMS, "many-") == 3
    assert await pool.fetchval("SELECT count(*) FROM rules") == MAX_ITEMS + 1


async def test_a_rule_deleted_upstream_comes_back_only_when_its_item_changes(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    source_id, _ = await add_source(pool)
    await send(http, source_id, [item("gone")])
    await pool.execute("DELETE FROM rules WHERE external_id = 'gone'")
    unchanged = (await send(http, source_id, [item("gone")])).json()
    assert unchanged["unchanged"] == 1 and unchanged["items"][0]["ruleId"] is None
    changed = (await send(http, source_id, [item("gone", title="Back again")])).json()
    assert changed["updated"] == 1
    rule_id = changed["items"][0]["ruleId"]
    assert await pool.fetchval("SELECT title FROM rules WHERE id = $1", rule_id) == "Back again"
    assert await pool.fetchval("SELECT rule_id FROM crawl_items") == rule_id


async def test_imported_rules_are_searchable(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    source_id, _ = await add_source(pool)
    await send(
        http,
        source_id,
        [item("z", title="Zebra striping for tables", tags=["css"], model="claude-3")],
    )
    hits = await http.get("/internal/search", params={"q": "zebra"}, headers=APP_HEADERS)
    assert [h["title"] for h in hits.json()["results"]] == ["Zebra striping for tables"]
    await send(http, source_id, [item("z", title="Alternating row colours", tags=["css"])])
    stale = await http.get("/internal/search", params={"q": "zebra"}, headers=APP_HEADERS)
    assert stale.json()["results"] == []


async def test_concurrent_overlapping_batches_all_succeed(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    source_id, _ = await add_source(pool)
    batch = [item(f"{n:03}") for n in range(60)]
    orders = [batch, batch[::-1], batch[30:] + batch[:30], batch[::-1]]
    responses = await asyncio.gather(*(send(http, source_id, order) for order in orders))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert sum(r.json()["created"] for r in responses) >= 60
    assert await pool.fetchval("SELECT count(*) FROM rules") == 60
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM crawl_items ci JOIN rules r ON r.id = ci.rule_id "
            "AND r.external_id = ci.external_id"
        )
        == 60
    )


async def test_crawl_is_rate_limited_per_client(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, pool: asyncpg.Pool
) -> None:
    running = await start_server(make_settings(db_url, rate_limit_crawl_per_minute=3))
    source_id, _ = await add_source(pool)
    statuses = [(await send(running.client, source_id, [item("a")])).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = await send(running.client, source_id, [item("a")])
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
