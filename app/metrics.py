"""Prometheus metrics.

With several Sanic workers every process keeps its own counters, so the service uses
prometheus-client's multiprocess mode: `ingest serve`/`ingest run` point
PROMETHEUS_MULTIPROC_DIR at a fresh folder before the workers start, each worker writes its
samples there, and a scrape of any worker aggregates all of them. Figures that live in
PostgreSQL (queue depth, failed jobs, last rollup) are read from the database at scrape time,
so they are the same whichever worker answers.
"""

from __future__ import annotations

import os
from datetime import date
from typing import Any

import asyncpg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from app.db import queries

HTTP_REQUESTS = Counter(
    "ingest_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "ingest_http_request_duration_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS = Counter("ingest_events_total", "Events by outcome", ["outcome"])
EVENTS_REJECTED = Counter("ingest_events_rejected_total", "Rejected events by reason", ["reason"])
WEBHOOKS = Counter(
    "ingest_stripe_webhooks_total", "Stripe events by type and outcome", ["type", "outcome"]
)
CRAWL_ITEMS = Counter("ingest_crawl_items_total", "Crawl items by outcome", ["outcome"])
RATE_LIMITED = Counter("ingest_rate_limited_total", "Requests refused by a rate limit", ["limit"])
POOL_CONNECTIONS = Gauge(
    "ingest_db_pool_connections", "asyncpg pool connections", ["state"], multiprocess_mode="livesum"
)


def observe_pool(pool: asyncpg.Pool) -> None:
    size = pool.get_size()
    idle = pool.get_idle_size()
    POOL_CONNECTIONS.labels("in_use").set(size - idle)
    POOL_CONNECTIONS.labels("idle").set(idle)
    POOL_CONNECTIONS.labels("max").set(pool.get_max_size())


async def database_gauges(
    conn: asyncpg.Connection, *, rollup_floor: date | None = None
) -> list[Any]:
    """Figures read from PostgreSQL at scrape time (`rollup_floor`: the oldest day the rollup
    still rolls, EVENT_RETENTION_DAYS)."""
    depth = GaugeMetricFamily(
        "ingest_jobs", "Procrastinate jobs by queue and status", labels=["queue", "status"]
    )
    async for row in queries.jobs_queue_depth(conn):
        depth.add_metric([row["queue_name"], row["status"]], row["jobs"])
    runs = await queries.metrics_rollup_runs(conn)
    last = GaugeMetricFamily(
        "ingest_rollup_last_success_timestamp_seconds",
        "When the last successful rollup run finished (0: never)",
    )
    last.add_metric([], runs["finished"] or 0)
    duration = GaugeMetricFamily(
        "ingest_rollup_last_duration_seconds", "How long the last successful rollup run took"
    )
    duration.add_metric([], float(runs["duration_s"] or 0))
    failed = GaugeMetricFamily(
        "ingest_rollup_failed_runs_last_day", "Rollup runs that failed in the last 24 hours"
    )
    failed.add_metric([], runs["failed_last_day"])
    return [
        depth,
        last,
        duration,
        failed,
        *await _rollup_freshness(conn, rollup_floor),
        *await _stripe_reconcile_families(conn),
    ]


async def _rollup_freshness(conn: asyncpg.Connection, floor: date | None) -> list[Any]:
    """What on-call alerts on when the numbers fall behind the facts (docs/rollups.md)."""
    row = await queries.metrics_rollup_freshness(conn, floor=floor)
    dirty = GaugeMetricFamily(
        "ingest_rollup_dirty_days",
        "Days whose numbers do not include every stored fact yet (never rolled, newer events "
        "or donation changes)",
    )
    dirty.add_metric([], row["dirty_days"])
    age = GaugeMetricFamily(
        "ingest_rollup_oldest_change_age_seconds",
        "Age of the oldest stored change the rollup has not rolled yet (0: none)",
    )
    age.add_metric([], row["oldest_change_age_s"])
    return [dirty, age]


async def _stripe_reconcile_families(conn: asyncpg.Connection) -> list[Any]:
    """Inbox rows recovered by reconciliation (any increase: webhook delivery failed) and
    how old the watermark is (no sample before the first run)."""
    state = await queries.metrics_stripe_reconcile(conn)
    recovered = CounterMetricFamily(
        "ingest_stripe_events_recovered",
        "Stripe events stored by reconciliation because no webhook delivery brought them",
    )
    recovered.add_metric([], state["recovered"])
    age = GaugeMetricFamily(
        "ingest_stripe_reconcile_watermark_age_seconds",
        "Seconds since the Stripe event time up to which the inbox is known complete",
    )
    if state["watermark_age_s"] is not None:
        age.add_metric([], state["watermark_age_s"])
    return [recovered, age]


class _Static:
    """A collector that yields metric families gathered beforehand (async) for one scrape."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def render(families: list[Any]) -> tuple[bytes, str]:
    """The exposition text: this process's (or all processes') metrics plus database figures."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = CollectorRegistry()
        registry.register(_Static(list(REGISTRY.collect())))
    registry.register(_Static(families))
    return generate_latest(registry), CONTENT_TYPE_LATEST
