"""Secrets stay secret: no token, webhook secret, signature or raw client IP in the logs, the
audit trail or any table, on success and error paths alike; error bodies never show stack
traces or SQL; credentials are compared in constant time."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from app import credentials as auth
from app.logs import JsonFormatter
from app.settings import Settings
from tests import stripe_helpers
from tests.conftest import (
    APP_TOKEN,
    CRON_SECRET,
    OLD_APP_TOKEN,
    WEBHOOK_SECRET,
    RunningServer,
    make_settings,
)
from tests.factories import create_rule

METRICS_TOKEN = "metrics-token-secret-value"
IP_HASH_SECRET = "ip-hash-secret-value-0123456789"
# Credentials a caller got wrong are secrets too (a typo of the real one, an old one).
WRONG_TOKEN = "wrong-token-almost-the-real-one"
WRONG_WEBHOOK_SECRET = "whsec_wrong_secret_value"
CLIENT_IPS = ("198.51.100.23", "2001:db8::77", "203.0.113.99")
SECRETS = (
    APP_TOKEN,
    OLD_APP_TOKEN,
    CRON_SECRET,
    WEBHOOK_SECRET,
    METRICS_TOKEN,
    IP_HASH_SECRET,
    WRONG_TOKEN,
    WRONG_WEBHOOK_SECRET,
)
LEAKS = ("Traceback", 'File "', "asyncpg", "SELECT", "FROM ", "rule_search", "sqlstate")


def secret_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "metrics_token": METRICS_TOKEN,
        "ip_hash_secret": IP_HASH_SECRET,
        "rate_limit_backend": "postgres",
        "rate_limit_events_per_minute": 1000,
        "rate_limit_crawl_per_minute": 1000,
    }
    return make_settings(db_url, **{**values, **overrides})


@pytest.fixture
async def secret_server(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str
) -> RunningServer:
    running: RunningServer = await start_server(secret_settings(db_url))
    return running


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as the service writes it (JSON, extra fields and tracebacks)."""
    formatter = JsonFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


def assert_no_secret(text: str, where: str, *also: str) -> None:
    for secret in (*SECRETS, *CLIENT_IPS, *also):
        assert secret not in text, f"{secret!r} found in {where}"


async def exercise(http: httpx.AsyncClient, pool: asyncpg.Pool) -> list[str]:
    """Success and failure on every credential and every route that handles client IPs;
    returns the Stripe signatures sent (they are credentials too)."""
    rule = await create_rule(pool)
    forwarded = {"x-forwarded-for": f"{CLIENT_IPS[0]}, 10.0.0.1"}
    for token in (APP_TOKEN, OLD_APP_TOKEN, WRONG_TOKEN):
        events = [
            {"type": "VIEW", "ruleId": rule, "ip": CLIENT_IPS[1]},
            {"type": "COPY", "ruleId": rule, "ip": CLIENT_IPS[2], "idempotencyKey": "k"},
            {"type": "SAVE", "ruleId": rule, "ip": "not-an-ip"},
        ]
        await http.post(
            "/ingest/events", json={"events": events}, headers={"x-app-token": token, **forwarded}
        )
        await http.post(
            "/ingest/crawl",
            json={"sourceId": "src_none", "items": [{}]},
            headers={"x-app-token": token, **forwarded},
        )
        await http.get("/internal/search", params={"q": "x"}, headers={"x-app-token": token})
    for secret in (CRON_SECRET, WRONG_TOKEN):
        await http.post("/cron/rollup", json={"dryRun": True}, headers={"x-cron-secret": secret})
        await http.post("/cron/rebuild-search", headers={"x-cron-secret": secret})
    for bearer in (METRICS_TOKEN, WRONG_TOKEN):
        await http.get("/metrics", headers={"authorization": f"Bearer {bearer}"})
    evt = stripe_helpers.event("ping", {"id": "ch_1"})
    body = stripe_helpers.body_of(evt)
    signatures = []
    for secret in (WEBHOOK_SECRET, WRONG_WEBHOOK_SECRET):
        signature = stripe_helpers.sign(body, secret=secret)
        signatures.append(signature.split("v1=", 1)[1])
        await http.post(
            stripe_helpers.WEBHOOK_PATH, content=body, headers={"stripe-signature": signature}
        )
    await stripe_helpers.deliver(http, evt, timestamp=1)  # expired signature
    await http.post(stripe_helpers.WEBHOOK_PATH, content=b"{}", headers={"stripe-signature": "x"})
    await http.post(
        "/ingest/events", json={"events": [{}]}, headers={"x-app-token": APP_TOKEN, "origin": "x"}
    )
    return signatures


async def test_no_secret_or_raw_ip_in_logs_audit_rows_or_tables(
    secret_server: RunningServer, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signatures = await exercise(secret_server.client, pool)
    assert len(caplog.records) > 20
    assert_no_secret(log_text(caplog), "the logs", *signatures)
    audit = await pool.fetch("SELECT to_jsonb(a)::text AS row FROM audit_log a")
    actions = await pool.fetch("SELECT DISTINCT action FROM audit_log")
    assert {"events.accepted", "stripe.webhook_rejected"} <= {r["action"] for r in actions}
    assert_no_secret("\n".join(r["row"] for r in audit), "audit_log", *signatures)
    for table in ("events", "rate_limit_buckets", "stripe_events"):
        rows = await pool.fetch(f"SELECT to_jsonb(t)::text AS row FROM {table} t")
        assert_no_secret("\n".join(r["row"] for r in rows), table)
    assert await pool.fetchval("SELECT count(*) FROM events") >= 2
    assert await pool.fetchval("SELECT count(*) FROM rate_limit_buckets") >= 1


async def test_error_paths_log_and_answer_nothing_secret(
    start_server: Callable[..., Awaitable[RunningServer]],
    db_url: str,
    pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A query that fails inside PostgreSQL (500), a database that is down (503) and a server
    without a webhook secret: the bodies say nothing about the insides, the logs no secret."""
    caplog.set_level(logging.DEBUG)
    running = await start_server(secret_settings(db_url))
    await pool.execute("DROP TABLE rule_search CASCADE")
    failed = await running.client.get(
        "/internal/search", params={"q": "rules"}, headers={"x-app-token": APP_TOKEN}
    )
    assert failed.status_code == 500
    assert failed.json() == {
        "error": {"code": "internal_error", "message": "internal error", "details": []}
    }
    down = await start_server(
        secret_settings("postgresql://postgres@127.0.0.1:1/nothing", db_acquire_timeout_s=1)
    )
    answers = [failed]
    app_headers = {"x-app-token": APP_TOKEN, "x-forwarded-for": CLIENT_IPS[0]}
    for method, path, headers, body in (
        ("POST", "/ingest/events", app_headers, {"events": [{"type": "VIEW", "ruleId": "r"}]}),
        ("POST", "/cron/rebuild-search", {"x-cron-secret": CRON_SECRET}, None),
        ("POST", "/cron/rollup", {"x-cron-secret": CRON_SECRET}, {}),
        ("GET", "/health", {}, None),
    ):
        started = time.perf_counter()
        response = await down.client.request(method, path, json=body, headers=headers)
        # Bounded by the acquire timeout (1 s here), Procrastinate's defers included.
        assert time.perf_counter() - started < 5, path
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
        answers.append(response)
    evt = stripe_helpers.event("ping", {})
    unconfigured = await start_server(make_settings(db_url, stripe_webhook_secret=None))
    answers.append(await stripe_helpers.deliver(unconfigured.client, evt))
    assert answers[-1].json()["error"]["code"] == "configuration_error", answers[-1].text
    for response in answers:
        for leak in LEAKS:
            assert leak not in response.text, (leak, response.text)
        assert_no_secret(response.text, "an error body")
    text = log_text(caplog)
    assert "UndefinedTableError" in text  # the operator sees the cause in the log...
    assert_no_secret(text, "the logs")  # ...and no secret


async def test_credentials_are_compared_in_constant_time_against_every_accepted_value(
    secret_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    http = secret_server.client
    cases = [
        ("/internal/search?q=x", {"x-app-token": APP_TOKEN}, APP_TOKEN, 2),
        ("/internal/search?q=x", {"x-app-token": WRONG_TOKEN}, WRONG_TOKEN, 2),
        ("/metrics", {"authorization": f"Bearer {METRICS_TOKEN}"}, METRICS_TOKEN, 1),
        ("/metrics", {"authorization": f"Bearer {WRONG_TOKEN}"}, WRONG_TOKEN, 1),
    ]
    for path, headers, presented, accepted in cases:
        compared.clear()
        await http.get(path, headers=headers)
        # Every accepted value (both rotation tokens) is compared, the match included: no
        # early exit, so the time taken does not tell which one matched.
        assert [a for a, _ in compared] == [presented.encode()] * accepted, path
    compared.clear()
    await http.post("/cron/rebuild-search", headers={"x-cron-secret": CRON_SECRET})
    assert compared == [(CRON_SECRET.encode(), CRON_SECRET.encode())]
    # The webhook signature is checked by stripe-python, with the same function.
    compared.clear()
    evt = stripe_helpers.event("ping", {})
    assert (await stripe_helpers.deliver(http, evt)).status_code == 200
    assert compared and all(isinstance(a, str) and len(a) == 64 for a, _ in compared)


def test_no_credential_is_compared_with_equality_in_the_http_edge() -> None:
    """Every credential check goes through `auth.matches_any` (hmac.compare_digest)."""
    import inspect

    from app.blueprints import metrics as metrics_bp
    from app.http import middleware

    for module in (middleware, metrics_bp):
        source = inspect.getsource(module)
        assert "matches_any(" in source
        for forbidden in ("== token", "== secret", "token ==", "secret ==", "in accepted"):
            assert forbidden not in source, (module.__name__, forbidden)
