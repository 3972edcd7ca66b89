"""What on-call reads: every documented series from the first scrape, and a dashboard and alert
rules (deploy/) that use only series the service exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.client_ip import IpHasher
from app.crawl import CrawlReport
from app.donations import HANDLED_TYPES
from app.events import ingest_batch, prepare_batch
from tests.conftest import _new_database as new_database
from tests.conftest import free_port, with_database
from tests.factories import create_rule
from tests.faults.conftest import service_env

INGEST = str(Path(sys.executable).parent / "ingest")
DEPLOY = Path(__file__).parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "ingest.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

METRIC_NAME = re.compile(r"\bingest_[a-z0-9_]+\b")


def _scrape_fresh_server(database_url: str) -> str:
    """`ingest serve` as in production (multiprocess metrics), scraped once before any traffic."""
    port = free_port()
    proc = subprocess.Popen(
        [INGEST, "serve"],
        env=service_env(
            DATABASE_URL=database_url,
            INGEST_APP_TOKEN="t",
            CRON_SECRET="c",
            STRIPE_WEBHOOK_SECRET="whsec_s",
            PORT=str(port),
            LOG_LEVEL="WARNING",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return str(response.read().decode())
            except OSError:
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def first_scrape(
    pg_admin_url: str, created_databases: list[str], template_db: str
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value} of a fresh server's first scrape (one per module:
    nothing here sends it traffic). A declared family without a sample yet (the Stripe
    reconciliation watermark before its first run) maps to no values."""
    name = new_database(pg_admin_url, created_databases, template=template_db)
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    text = _scrape_fresh_server(with_database(pg_admin_url, name))
    for family in text_string_to_metric_families(text):
        if not family.samples:
            samples.setdefault(family.name, {})
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def _values(samples: dict[str, Any], name: str, **labels: str) -> list[float]:
    """The values of every sample of `name` whose labels include `labels`."""
    return [
        value for key, value in samples.get(name, {}).items() if labels.items() <= dict(key).items()
    ]


def test_first_scrape_has_every_known_series_at_zero(first_scrape: dict[str, Any]) -> None:
    expected: list[tuple[str, dict[str, str]]] = [
        *[("ingest_events_total", {"outcome": o}) for o in metrics.EVENT_OUTCOMES],
        *[("ingest_events_rejected_total", {"reason": r}) for r in metrics.EVENT_REJECT_REASONS],
        *[("ingest_crawl_items_total", {"outcome": o}) for o in metrics.CRAWL_OUTCOMES],
        *[("ingest_rate_limited_total", {"limit": n}) for n in metrics.RATE_LIMITS],
        ("ingest_stripe_webhooks_total", {"type": "unverified", "outcome": "rejected"}),
        *[
            ("ingest_stripe_webhooks_total", {"type": t, "outcome": o})
            for t in HANDLED_TYPES
            for o in metrics.WEBHOOK_OUTCOMES
        ],
        *[
            ("ingest_http_requests_total", {"route": route, "method": "POST", "status": status})
            for route in ("ingest/events", "ingest/crawl", "ingest/stripe/webhook", "cron/rollup")
            for status in metrics.HTTP_ERROR_STATUSES
        ],
        ("ingest_http_request_duration_seconds_count", {"route": "ingest/events"}),
        *[
            ("ingest_jobs", {"queue": q, "status": s})
            for q in metrics.JOB_QUEUES
            for s in metrics.JOB_STATUSES
        ],
        *[("ingest_jobs_oldest_todo_age_seconds", {"queue": q}) for q in metrics.JOB_QUEUES],
        ("ingest_stripe_inbox_pending", {}),
        ("ingest_stripe_inbox_oldest_pending_age_seconds", {}),
        ("ingest_stripe_inbox_failing", {}),
        ("ingest_rollup_last_success_timestamp_seconds", {}),
        ("ingest_rollup_failed_runs_last_day", {}),
    ]
    missing = [(n, labels) for n, labels in expected if _values(first_scrape, n, **labels) != [0]]
    assert not missing, f"absent (or not 0) on the first scrape: {missing}"
    assert _values(first_scrape, "ingest_database_up") == [1]
    assert _values(first_scrape, "ingest_db_pool_connections", state="max") == [8]


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return [*exprs, dashboard["templating"]["list"][1]["definition"]]


def _alert_queries() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_dashboard_and_alerts_use_only_series_the_service_exposes(
    first_scrape: dict[str, Any],
) -> None:
    used = {
        name for q in _dashboard_queries() + _alert_queries() for name in METRIC_NAME.findall(q)
    }
    exposed = set(first_scrape)
    unknown = used - exposed
    assert not unknown, f"used but never exposed: {sorted(unknown)}"


def test_the_dashboard_covers_what_on_call_reads() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in (
        "events by outcome",
        "rejected events by reason",
        "latency p50 / p95 / p99 by route",
        "503",
        "pool",
        "queue depth by queue",
        "failed jobs by queue",
        "inbox lag",
        "rollup freshness",
        "rollup duration",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, wrapped in a recording rule, passes `promtool check rules`."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": q.replace("$job", ".+")}
        for i, q in enumerate(_dashboard_queries())
        if not q.startswith("label_values(")
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_known_rejection_reasons_are_every_reason_intake_gives(pool: asyncpg.Pool) -> None:
    """The zero-initialised reasons are exactly those intake reports, no more, no fewer."""
    now = datetime.now(UTC)
    events: list[Any] = [
        "not an object",
        {"type": "LIKE", "ruleId": "rul_1"},
        {"type": "VIEW", "ruleId": "no spaces"},
        {"type": "VIEW", "ruleId": "rul_1", "userId": "no spaces"},
        {"type": "VIEW", "ruleId": "rul_1", "idempotencyKey": ""},
        {"type": "VIEW", "ruleId": "rul_1", "ts": "yesterday"},
        {"type": "VIEW", "ruleId": "rul_1", "ts": (now + timedelta(days=1)).isoformat()},
        {"type": "VIEW", "ruleId": "rul_1", "ts": (now - timedelta(days=400)).isoformat()},
        {"type": "VIEW", "ruleId": "rul_1", "ip": "not an address"},
        {"type": "SAVE", "ruleId": "rul_missing"},
        {"type": "SAVE", "ruleId": "rul_known", "userId": "usr_missing"},
    ]
    batch = prepare_batch(events, now=now, request_ip_hash="x", hasher=IpHasher("k"))
    async with pool.acquire() as conn:
        await create_rule(conn, id="rul_known")
        report = await ingest_batch(conn, batch=batch, actor="app:t", request_id=None)
    assert [r.reason for r in report.rejected] == list(metrics.EVENT_REJECT_REASONS)


def test_known_crawl_outcomes_queues_and_limits_are_the_services() -> None:
    import jobs
    from app.server import create_app
    from tests.conftest import make_settings

    empty = CrawlReport(source_id="s", created=0, updated=0, unchanged=0, rejected=[], items=[])
    assert tuple(empty.counts()) == metrics.CRAWL_OUTCOMES
    tasks = jobs.create_app("postgresql:///unused").tasks.values()
    # "builtin": Procrastinate's own tasks, which the service never defers.
    assert {task.queue for task in tasks} - {"builtin"} == set(metrics.JOB_QUEUES)
    app = create_app(make_settings("postgresql:///unused"), configure_logging=False)
    limits = {getattr(route.ctx, "rate_limit", None) for route in app.router.routes} - {None}
    assert limits == set(metrics.RATE_LIMITS)
