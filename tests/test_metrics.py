"""GET /metrics: Prometheus text with request, pool and queue figures; optional bearer token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

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
