"""GET /metrics: Prometheus text with request, pool and queue figures; optional bearer token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from app.db import Database
from app.settings import Settings
from tests.conftest import RunningServer, make_settings


async def test_metrics_expose_requests_pool_and_queue_depth(
    http: httpx.AsyncClient, proc_app: Any
) -> None:
    await proc_app.configure_task("purge_old_jobs").defer_async()
    await http.get("/health")
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'ingest_http_requests_total{method="GET",route="health",status="200"}' in text
    assert "ingest_http_request_duration_seconds_bucket" in text
    assert 'ingest_db_pool_connections{state="max"} 8.0' in text
    assert 'ingest_jobs{queue="maintenance",status="todo"} 1.0' in text
    assert "ingest_rollup_last_success_timestamp_seconds" in text


async def test_metrics_token_is_enforced_when_configured(
    start_server: Callable[..., Awaitable[RunningServer]], settings: Settings
) -> None:
    running = await start_server(make_settings(settings.database_url or "", metrics_token="m-tok"))
    assert (await running.client.get("/metrics")).status_code == 401
    wrong = await running.client.get("/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = await running.client.get("/metrics", headers={"authorization": "Bearer m-tok"})
    assert ok.status_code == 200
    assert "m-tok" not in ok.text


async def test_metrics_report_rollup_runs_from_the_database(
    http: httpx.AsyncClient, pool: Any
) -> None:
    await pool.execute(
        "INSERT INTO rollup_runs (actor, status, end_day, days, started_at, finished_at,"
        " duration_ms) VALUES"
        " ('job:1', 'succeeded', '2026-11-01', '{2026-11-01}', to_timestamp(1790000000),"
        "  to_timestamp(1790000012.5), 12500),"
        " ('job:2', 'failed', '2026-11-02', '{2026-11-02}', now(), now(), 10)"
    )
    text = (await http.get("/metrics")).text
    assert "ingest_rollup_last_success_timestamp_seconds 1.7900000125e+09" in text
    assert "ingest_rollup_last_duration_seconds 12.5" in text
    assert "ingest_rollup_failed_runs_last_day 1.0" in text


async def test_metrics_count_crawl_items_by_outcome(http: httpx.AsyncClient, pool: Any) -> None:
    from tests.conftest import APP_HEADERS
    from tests.factories import add_source

    def counted(text: str, outcome: str) -> float:
        prefix = f'ingest_crawl_items_total{{outcome="{outcome}"}} '
        found = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(found[0].removeprefix(prefix)) if found else 0.0

    # Counters live as long as the process: compare before and after.
    before = (await http.get("/metrics")).text
    source_id, _ = await add_source(pool)
    item = {"externalId": "m-1", "url": "https://example.com/m-1", "title": "Metrics rule"}
    body = {"sourceId": source_id, "items": [item, {"externalId": "m-2"}]}
    response = await http.post("/ingest/crawl", json=body, headers=APP_HEADERS)
    assert response.status_code == 200, response.text
    after = (await http.get("/metrics")).text
    assert counted(after, "created") - counted(before, "created") == 1
    assert counted(after, "rejected") - counted(before, "rejected") == 1


def _gauge(text: str, name: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, (name, lines)
    return float(lines[0].split()[1])


async def test_metrics_say_how_far_the_rollup_is_behind_the_facts(
    http: httpx.AsyncClient, pool: Any, settings: Settings
) -> None:
    from datetime import UTC, datetime, timedelta

    from app.rollup import run_rollup
    from tests.factories import create_rule

    text = (await http.get("/metrics")).text
    assert _gauge(text, "ingest_rollup_dirty_days") == 0
    assert _gauge(text, "ingest_rollup_oldest_change_age_seconds") == 0
    rule = await create_rule(pool)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    await pool.execute(
        "INSERT INTO events (type, rule_id, ts, received_at) VALUES"
        " ('COPY', $1, $2, now() - interval '90 seconds'), ('SAVE', $1, $3, now())",
        rule,
        yesterday,
        yesterday - timedelta(days=2),
    )
    text = (await http.get("/metrics")).text
    assert _gauge(text, "ingest_rollup_dirty_days") == 2
    assert 90 <= _gauge(text, "ingest_rollup_oldest_change_age_seconds") < 150
    await run_rollup(Database(pool), settings=settings)
    text = (await http.get("/metrics")).text
    assert _gauge(text, "ingest_rollup_dirty_days") == 0
    assert _gauge(text, "ingest_rollup_oldest_change_age_seconds") == 0


def _sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


async def test_metrics_report_the_stripe_inbox_and_the_oldest_waiting_job(
    http: httpx.AsyncClient, pool: Any, proc_app: Any
) -> None:
    await pool.execute(
        "INSERT INTO stripe_events (id, type, payload, received_at, processed_at, outcome) VALUES"
        " ('evt_old', 'charge.refunded', '{}', now() - interval '10 minutes', NULL, 'failed'),"
        " ('evt_new', 'charge.refunded', '{}', now() - interval '1 minute', NULL, NULL),"
        " ('evt_done', 'charge.refunded', '{}', now() - interval '1 hour', now(), 'applied')"
    )
    job = await proc_app.configure_task("purge_old_jobs").defer_async()
    await pool.execute(
        "UPDATE procrastinate_events SET at = now() - interval '5 minutes' WHERE job_id = $1", job
    )
    await proc_app.configure_task(
        "purge_event_state", schedule_in={"hours": 1}
    ).defer_async()  # not due yet: no backlog
    text = (await http.get("/metrics")).text
    assert _sample(text, "ingest_stripe_inbox_pending") == 2
    assert _sample(text, "ingest_stripe_inbox_failing") == 1
    assert 600 <= _sample(text, "ingest_stripe_inbox_oldest_pending_age_seconds") < 660
    waited = _sample(text, 'ingest_jobs_oldest_todo_age_seconds{queue="maintenance"}')
    assert 300 <= waited < 360
    assert 'ingest_jobs_oldest_todo_age_seconds{queue="stripe"} 0.0' in text
    assert "ingest_database_up 1.0" in text


async def test_metrics_say_when_the_database_does_not_answer(
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    running = await start_server(
        make_settings("postgresql://postgres@127.0.0.1:1/nothing", db_acquire_timeout_s=1)
    )
    response = await running.client.get("/metrics")
    assert response.status_code == 200
    assert "ingest_database_up 0.0" in response.text
