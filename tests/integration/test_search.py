"""Full-text search: the trigger-kept index, ranking, the read paths, and full rebuilds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

import jobs
from app import search
from app.db import init_connection
from app.queue import REBUILD_SEARCH_LOCK
from app.queue import REBUILD_SEARCH_TASK as REBUILD_TASK
from app.search import rebuild_in_transaction, rebuild_search_index
from tests.conftest import APP_HEADERS, CRON_HEADERS
from tests.factories import create_rule, create_user


async def found(pool: asyncpg.Pool, query: str, limit: int = 20) -> list[str]:
    """Rule ids for `query`, best first, through the SQL function the main API calls."""
    rows = await pool.fetch("SELECT rule_id FROM search_rules($1, $2)", query, limit)
    return [r["rule_id"] for r in rows]


async def index_is_exact(pool: asyncpg.Pool) -> bool:
    """Every rule has exactly its current document in `rule_search`, and nothing else is there."""
    return bool(
        await pool.fetchval(
            """
            SELECT NOT EXISTS (
                SELECT r.id, rule_search_document(r.title, r.summary, r.tags, r.model)::text
                FROM rules r
                EXCEPT
                SELECT rule_id, document::text FROM rule_search
            ) AND (SELECT count(*) FROM rules) = (SELECT count(*) FROM rule_search)
            """
        )
    )


async def test_index_follows_every_write_to_rules(pool: asyncpg.Pool) -> None:
    rule = await create_rule(pool, title="Docker layer caching")
    assert await found(pool, "docker") == [rule]
    await pool.execute("UPDATE rules SET title = 'Podman layer caching' WHERE id = $1", rule)
    assert await found(pool, "docker") == []
    assert await found(pool, "podman") == [rule]
    await pool.execute("UPDATE rules SET tags = '{containers}' WHERE id = $1", rule)
    assert await found(pool, "containers") == [rule]
    await pool.execute("DELETE FROM rules WHERE id = $1", rule)
    assert await found(pool, "podman") == []
    assert await index_is_exact(pool)


async def test_title_match_ranks_above_summary_tag_and_model_matches(pool: asyncpg.Pool) -> None:
    author = await create_user(pool)
    by_model = await create_rule(pool, author_id=author, title="One", model="kubernetes")
    by_tag = await create_rule(pool, author_id=author, title="Two", tags=["kubernetes"])
    by_summary = await create_rule(
        pool, author_id=author, title="Three", summary="Deploying to kubernetes safely"
    )
    by_title = await create_rule(pool, author_id=author, title="Kubernetes deployment checklist")
    assert await found(pool, "kubernetes") == [by_title, by_summary, by_tag, by_model]
    ranks = await pool.fetch("SELECT rule_id, rank FROM search_rules('kubernetes', 10)")
    assert ranks[0]["rank"] > ranks[1]["rank"] > ranks[2]["rank"] > ranks[3]["rank"] > 0


async def test_search_rules_function_contract(pool: asyncpg.Pool) -> None:
    author = await create_user(pool)
    ids = [
        await create_rule(pool, author_id=author, title=f"Prompt caching tip {n}") for n in range(5)
    ]
    other = await create_rule(
        pool, author_id=author, title="Prompt chaining", summary="Split tasks into steps"
    )
    rows = await pool.fetch("SELECT * FROM search_rules('prompt caching', 3)")
    assert list(rows[0].keys()) == ["rule_id", "rank", "headline"]
    assert len(rows) == 3 and {r["rule_id"] for r in rows} <= set(ids)
    assert "<mark>caching</mark>" in rows[0]["headline"]
    assert set(await found(pool, '"prompt chaining" OR steps')) == {other}
    assert set(await found(pool, "prompt -caching")) == {other}
    assert await found(pool, "   ") == []
    assert await found(pool, "the and of") == []  # stop words only
    assert len(await found(pool, "prompt", 0)) == 1  # the limit is clamped to 1..100
    headline = await pool.fetchval("SELECT headline FROM search_rules('steps', 1)")
    assert headline == "Prompt chaining: Split tasks into <mark>steps</mark>"


async def test_internal_search_endpoint(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    rule = await create_rule(pool, title="Terraform module layout", summary="Keep modules small")
    response = await http.get(
        "/internal/search", params={"q": "terraform modules"}, headers=APP_HEADERS
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == "terraform modules" and body["count"] == 1
    (hit,) = body["results"]
    assert hit["ruleId"] == rule and hit["title"] == "Terraform module layout"
    assert hit["rank"] > 0 and "<mark>" in hit["headline"]

    assert (await http.get("/internal/search", params={"q": "terraform"})).status_code == 401
    for params in ({}, {"q": "  "}, {"q": "x", "limit": "0"}, {"q": "x", "limit": "many"}):
        bad = await http.get("/internal/search", params=params, headers=APP_HEADERS)
        assert bad.status_code == 400, params
        assert bad.json()["error"]["code"] == "validation_failed"


async def test_rebuild_repairs_drift_and_is_audited(db_url: str, pool: asyncpg.Pool) -> None:
    author = await create_user(pool)
    kept = await create_rule(pool, author_id=author, title="Golang error wrapping")
    wrong = await create_rule(pool, author_id=author, title="Rust lifetimes")
    await pool.execute("DELETE FROM rule_search WHERE rule_id = $1", kept)
    await pool.execute(
        "UPDATE rule_search SET document = to_tsvector('nonsense') WHERE rule_id = $1", wrong
    )
    await pool.execute("ALTER TABLE rules DISABLE TRIGGER rules_search_insert")
    unseen = await create_rule(pool, author_id=author, title="Haskell monads")
    await pool.execute("ALTER TABLE rules ENABLE TRIGGER rules_search_insert")
    await pool.execute("INSERT INTO rule_search (rule_id, document) VALUES ('rul_ghost', 'x')")
    assert not await index_is_exact(pool)

    report = await rebuild_search_index(db_url)
    assert (report.skipped, report.documents, report.swap_attempts) == (False, 3, 1)
    assert await index_is_exact(pool)
    assert await found(pool, "golang") == [kept]
    assert await found(pool, "haskell") == [unseen]
    assert await found(pool, "rust") == [wrong]
    # The swapped-in table has the same shape: indexes and constraint names.
    indexes = await pool.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'rule_search' ORDER BY 1"
    )
    assert [i["indexname"] for i in indexes] == ["rule_search_document_idx", "rule_search_pkey"]
    audit = await pool.fetchrow(
        "SELECT actor, details FROM audit_log WHERE action = 'search.rebuild'"
    )
    assert audit["actor"] == "job:rebuild_search" and audit["details"]["documents"] == 3
    # Twice gives the same table.
    await rebuild_search_index(db_url)
    assert await index_is_exact(pool)


async def test_writes_during_a_rebuild_are_not_lost(db_url: str, pool: asyncpg.Pool) -> None:
    author = await create_user(pool)
    edited = await create_rule(pool, author_id=author, title="Original title")
    deleted = await create_rule(pool, author_id=author, title="Doomed rule")
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            assert await search.take_rebuild_lock(conn)
            assert await search.build_next_table(conn) == 2
            # While the new table is being built, other sessions write rules: not blocked.
            added = await create_rule(pool, author_id=author, title="Arrived during build")
            await pool.execute("UPDATE rules SET title = 'Edited title' WHERE id = $1", edited)
            await pool.execute("DELETE FROM rules WHERE id = $1", deleted)
            late = await search.swap_in_next_table(conn, lock_timeout_ms=2000)
            assert late == 3
    finally:
        await conn.close()
    assert await index_is_exact(pool)
    assert await found(pool, "arrived") == [added]
    assert await found(pool, "edited") == [edited]
    assert await found(pool, "original") == await found(pool, "doomed") == []


async def test_readers_are_not_blocked_while_a_rebuild_builds(
    db_url: str, pool: asyncpg.Pool
) -> None:
    rule = await create_rule(pool, title="Readers keep reading")
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await search.take_rebuild_lock(conn)
            await search.build_next_table(conn)
            await search.catch_up_next_table(conn)
            async with pool.acquire() as reader:
                await reader.execute("SET statement_timeout = '1s'")
                assert (
                    await reader.fetchval("SELECT rule_id FROM search_rules('readers', 5)") == rule
                )
                await reader.execute("RESET statement_timeout")
    finally:
        await conn.close()


async def test_a_long_reader_makes_the_swap_retry_instead_of_queueing_readers(
    db_url: str, pool: asyncpg.Pool
) -> None:
    rule = await create_rule(pool, title="Patience")
    async with pool.acquire() as reader, reader.transaction():
        assert await reader.fetchval("SELECT rule_id FROM search_rules('patience', 1)") == rule
        with pytest.raises(asyncpg.LockNotAvailableError):
            await rebuild_search_index(db_url, lock_timeout_ms=100, attempts=2, retry_wait_s=0.01)
    # Nothing was left behind, and the next attempt goes through.
    assert await pool.fetchval("SELECT to_regclass('rule_search_next')") is None
    assert (await rebuild_search_index(db_url)).documents == 1
    assert await found(pool, "patience") == [rule]


async def test_only_one_rebuild_runs_at_a_time(db_url: str, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as holder, holder.transaction():
        assert await search.take_rebuild_lock(holder)
        report = await rebuild_search_index(db_url)
    assert report.skipped and report.documents == 0


async def test_rebuild_while_queries_run(db_url: str, pool: asyncpg.Pool) -> None:
    """Readers and writers keep going, without an error or a wrong answer, across swaps."""
    author = await create_user(pool)
    expected = {
        await create_rule(pool, author_id=author, title=f"Observability rule {n}")
        for n in range(30)
    }
    other = await create_rule(pool, author_id=author, title="Unrelated")
    stop = asyncio.Event()
    answers: list[int] = []

    async def read() -> None:
        while not stop.is_set():
            assert set(await found(pool, "observability", 100)) == expected
            answers.append(1)

    async def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await pool.execute("UPDATE rules SET title = $2 WHERE id = $1", other, f"Other {n}")

    workers = [asyncio.create_task(read()) for _ in range(4)] + [asyncio.create_task(write())]
    try:
        for _ in range(3):
            report = await rebuild_search_index(db_url, retry_wait_s=0.05)
            assert report.documents >= 31 and not report.skipped
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert len(answers) > 10
    assert await index_is_exact(pool)


async def test_rebuild_endpoint_deduplicates_concurrent_calls(
    http: httpx.AsyncClient,
    pool: asyncpg.Pool,
    run_jobs: Callable[[], Awaitable[None]],
) -> None:
    await create_rule(pool, title="Queued rebuilds")
    responses = await asyncio.gather(
        *(http.post("/cron/rebuild-search", headers=CRON_HEADERS) for _ in range(10))
    )
    assert {r.status_code for r in responses} == {202}
    job_ids = {r.json()["jobId"] for r in responses}
    assert len(job_ids) == 1
    assert sum(not r.json()["alreadyQueued"] for r in responses) == 1
    jobs_rows = await pool.fetch(
        "SELECT id, status, queue_name FROM procrastinate_jobs WHERE task_name = $1", REBUILD_TASK
    )
    assert [(j["id"], j["status"], j["queue_name"]) for j in jobs_rows] == [
        (job_ids.pop(), "todo", "search")
    ]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'search.rebuild_requested'"
        )
        == 10
    )

    await run_jobs()
    assert (
        await pool.fetchval(
            "SELECT status FROM procrastinate_jobs WHERE id = $1", jobs_rows[0]["id"]
        )
        == "succeeded"
    )
    rebuilt = "SELECT count(*) FROM audit_log WHERE action = 'search.rebuild'"
    assert await pool.fetchval(rebuilt) >= 1
    after = await http.post("/cron/rebuild-search", headers=CRON_HEADERS)
    assert after.status_code == 202 and after.json()["jobId"] != jobs_rows[0]["id"]


async def test_a_rebuild_already_running_does_not_hold_back_the_next_one(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    first = (await http.post("/cron/rebuild-search", headers=CRON_HEADERS)).json()
    await pool.execute(
        "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = $1", first["jobId"]
    )
    second = (await http.post("/cron/rebuild-search", headers=CRON_HEADERS)).json()
    assert second["jobId"] != first["jobId"] and not second["alreadyQueued"]
    third = (await http.post("/cron/rebuild-search", headers=CRON_HEADERS)).json()
    assert third == {**second, "alreadyQueued": True}


async def test_rebuild_endpoint_needs_the_cron_secret(http: httpx.AsyncClient) -> None:
    assert (await http.post("/cron/rebuild-search")).status_code == 401
    assert (await http.post("/cron/rebuild-search", headers=APP_HEADERS)).status_code == 401


def test_rebuild_task_is_nightly_with_a_queueing_lock() -> None:
    jobs.app.perform_import_paths()
    task = jobs.app.tasks[REBUILD_TASK]
    assert task.queueing_lock == REBUILD_SEARCH_LOCK
    assert task.lock is None
    periodic: dict[str, Any] = {
        p.task.name: p.cron for p in jobs.app.periodic_registry.periodic_tasks.values()
    }
    assert periodic[REBUILD_TASK] == "15 2 * * *"


async def test_rebuild_in_transaction_rolls_back_cleanly(db_url: str, pool: asyncpg.Pool) -> None:
    await create_rule(pool, title="Rollback safety")
    conn = await asyncpg.connect(db_url)
    await init_connection(conn)
    try:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await rebuild_in_transaction(conn)
                raise RuntimeError("the caller changed its mind")
    finally:
        await conn.close()
    assert await pool.fetchval("SELECT to_regclass('rule_search_next')") is None
    assert await index_is_exact(pool)
