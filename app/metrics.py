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
from collections.abc import Iterable
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

from app.sql import queries

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
DB_UNIT_SECONDS = Histogram(
    "ingest_db_unit_duration_seconds",
    "Units of database work by name and outcome (app/db.py `Database.run`), retries included",
    ["unit", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)
POOL_CONNECTIONS = Gauge(
    "ingest_db_pool_connections", "asyncpg pool connections", ["state"], multiprocess_mode="livesum"
)


# Label values known in advance. Each of their series exists, at 0, from the first scrape
# (`zero_initialise`): `rate()` and `increase()` only see a counter's first increment when
# the series existed before it, and alerts then work before any traffic.
EVENT_OUTCOMES = ("accepted", "duplicate", "rejected")
EVENT_REJECT_REASONS = (
    "invalid_event",
    "unknown_type",
    "invalid_rule_id",
    "invalid_user_id",
    "invalid_idempotency_key",
    "invalid_ts",
    "ts_in_future",
    "ts_too_old",
    "invalid_ip",
    "unknown_rule",
    "unknown_user",
)
WEBHOOK_OUTCOMES = ("stored", "duplicate")  # and ("unverified", "rejected"): refused deliveries
CRAWL_OUTCOMES = ("created", "updated", "unchanged", "rejected")
RATE_LIMITS = ("events", "crawl")
HTTP_ERROR_STATUSES = ("500", "503")  # what the error-rate alerts count, per route
JOB_QUEUES = ("maintenance", "notifications", "rollup", "search", "stripe")
JOB_STATUSES = ("todo", "doing", "failed")


def zero_initialise(*, routes: Iterable[tuple[str, str]], stripe_types: Iterable[str]) -> None:
    """Create every series whose label values are known, at 0 (in each worker process)."""
    for outcome in EVENT_OUTCOMES:
        EVENTS.labels(outcome)
    for reason in EVENT_REJECT_REASONS:
        EVENTS_REJECTED.labels(reason)
    for kind in stripe_types:
        for outcome in WEBHOOK_OUTCOMES:
            WEBHOOKS.labels(kind, outcome)
    WEBHOOKS.labels("unverified", "rejected")
    for outcome in CRAWL_OUTCOMES:
        CRAWL_ITEMS.labels(outcome)
    for limit in RATE_LIMITS:
        RATE_LIMITED.labels(limit)
    for route, method in routes:
        HTTP_LATENCY.labels(route, method)
        for status in HTTP_ERROR_STATUSES:
            HTTP_REQUESTS.labels(route, method, status)


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
    jobs = {(queue, status): 0 for queue in JOB_QUEUES for status in JOB_STATUSES}
    async for row in queries.jobs_queue_depth(conn):
        jobs[(row["queue_name"], row["status"])] = row["jobs"]
    for (queue, status), count in sorted(jobs.items()):
        depth.add_metric([queue, status], count)
    waiting = GaugeMetricFamily(
        "ingest_jobs_oldest_todo_age_seconds",
        "Age of the oldest job due and waiting per queue (0: none waiting)",
        labels=["queue"],
    )
    ages = dict.fromkeys(JOB_QUEUES, 0.0)
    async for row in queries.metrics_oldest_todo_jobs(conn):
        ages[row["queue_name"]] = float(row["age_s"])
    for queue, age in sorted(ages.items()):
        waiting.add_metric([queue], age)
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
        waiting,
        last,
        duration,
        failed,
        *await _stripe_inbox_gauges(conn),
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


async def _stripe_inbox_gauges(conn: asyncpg.Connection) -> list[GaugeMetricFamily]:
    inbox = await queries.metrics_stripe_inbox(conn)
    pending = GaugeMetricFamily(
        "ingest_stripe_inbox_pending", "Stripe events stored but not applied yet"
    )
    pending.add_metric([], inbox["pending"])
    age = GaugeMetricFamily(
        "ingest_stripe_inbox_oldest_pending_age_seconds",
        "Age of the oldest Stripe event not applied yet (0: none)",
    )
    age.add_metric([], float(inbox["oldest_age_s"]))
    failing = GaugeMetricFamily(
        "ingest_stripe_inbox_failing", "Stripe events not applied whose last attempt failed"
    )
    failing.add_metric([], inbox["failing"])
    return [pending, age, failing]


def database_up(up: bool) -> GaugeMetricFamily:
    """1 when this scrape read the database figures, 0 when the database did not answer."""
    family = GaugeMetricFamily(
        "ingest_database_up", "Whether the database answered this scrape (1) or not (0)"
    )
    family.add_metric([], 1 if up else 0)
    return family


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
