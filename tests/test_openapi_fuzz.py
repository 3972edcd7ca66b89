"""Schemathesis against a real server, from the document the server publishes at /openapi.json.

With valid credentials, every operation gets schema-conforming requests and must answer with
no 5xx, a status and content type the document lists, a body matching the documented schema,
and within RESPONSE_TIME_LIMIT_S. Without credentials, every protected operation is 401 (the
Stripe webhook, whose credential is the signature, answers 400 as Stripe expects).

The webhook's body is signed here with the endpoint secret after schemathesis generates it,
exactly as Stripe would sign it. Hypothesis runs in a worker thread with blocking requests,
so the server keeps serving in the test's event loop; examples are derandomized (no flaky CI).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import max_response_time, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.http.openapi import ErrorBody
from app.settings import Settings
from tests import stripe_helpers
from tests.conftest import APP_HEADERS, CRON_HEADERS, RunningServer, make_settings
from tests.factories import add_source

METRICS_TOKEN = "test-metrics-token"
CREDENTIALS = {
    **APP_HEADERS,
    **CRON_HEADERS,
    "authorization": f"Bearer {METRICS_TOKEN}",
}
RESPONSE_TIME_LIMIT_S = 2.0
EXAMPLES = 80
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    max_response_time,
]
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def fuzz_settings(db_url: str) -> Settings:
    """The test settings, with /metrics behind a token so that every route has a credential
    to get wrong."""
    return make_settings(db_url, metrics_token=METRICS_TOKEN)


@pytest.fixture
async def fuzzed(start_server: Any, fuzz_settings: Settings) -> RunningServer:
    running: RunningServer = await start_server(fuzz_settings)
    return running


def load_schema(url: str) -> Any:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema.config.update(base_url=url)
    schema.config.checks.update(max_response_time=RESPONSE_TIME_LIMIT_S)
    return schema


def operations(schema: Any) -> list[Any]:
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 8, " ".join(op.label for op in found)  # all but /openapi.json
    return found


def is_protected(operation: Any) -> bool:
    """Declares a credential (optional for /metrics: required here, METRICS_TOKEN is set)."""
    return bool(operation.definition.raw.get("security"))


def call(case: Any, url: str, session: Any) -> Any:
    """Send the case, once more after a 503 or a slow answer: the machine is shared with other
    load, and the bound must hold for a repeated request, not for every scheduling hiccup."""
    response = send(case, url, session)
    if response.status_code == 503 or _seconds(response.elapsed) > RESPONSE_TIME_LIMIT_S:
        time.sleep(0.5)
        response = send(case, url, session)
    return response


def _seconds(elapsed: Any) -> float:
    return float(elapsed) if isinstance(elapsed, int | float) else elapsed.total_seconds()


def send(case: Any, url: str, session: Any) -> Any:
    """Send the case; the webhook's generated body is signed the way Stripe signs it."""
    if case.operation.path != stripe_helpers.WEBHOOK_PATH:
        return case.call(base_url=url, session=session, headers=CREDENTIALS)
    body = json.dumps(case.body).encode()
    headers = {"stripe-signature": stripe_helpers.sign(body), "content-type": "application/json"}
    return httpx.post(url + case.formatted_path, content=body, headers=headers, timeout=30)


def aimed_at(source_id: str) -> Callable[[Any], Any]:
    """Half the crawl cases name the registered source (the rest are an unknown one: 404)."""

    def aim(case: Any) -> Any:
        def maybe(real: bool) -> Any:
            if real and isinstance(case.body, dict):
                case.body["sourceId"] = source_id
            return case

        return st.booleans().map(maybe)

    return aim


def fuzz_operation(operation: Any, url: str, source_id: str) -> Counter[int]:
    """Run the positive fuzz of one operation; return how often each status was answered."""
    import requests

    statuses: Counter[int] = Counter()
    strategy = operation.as_strategy(headers=CREDENTIALS)
    if operation.path == "/ingest/crawl":
        strategy = strategy.flatmap(aimed_at(source_id))

    @FUZZ_SETTINGS
    @given(case=strategy)
    def run(case: Any) -> None:
        response = call(case, url, session)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    with requests.Session() as session:
        run()
    return statuses


def fuzz_all(url: str, source_id: str) -> dict[str, Counter[int]]:
    schema = load_schema(url)
    return {op.label: fuzz_operation(op, url, source_id) for op in operations(schema)}


async def test_every_operation_conforms_to_the_document_with_valid_credentials(
    fuzzed: RunningServer, pool: asyncpg.Pool
) -> None:
    source_id, _ = await add_source(pool, "Fuzz partner")
    statuses = await asyncio.to_thread(fuzz_all, fuzzed.url, source_id)
    assert sum(sum(found.values()) for found in statuses.values()) > 5 * EXAMPLES, statuses
    # The fuzz reaches the success paths, not only refusals.
    for label, success in (
        ("POST /ingest/events", 202),
        ("POST /ingest/crawl", 200),
        ("POST /ingest/stripe/webhook", 200),
        ("POST /cron/rollup", 202),
        ("GET /internal/search", 200),
        ("GET /metrics", 200),
        ("GET /health", 200),
    ):
        assert statuses[label][success] > 0, (label, statuses[label])


def statuses_without_credentials(operation: Any, url: str) -> set[int]:
    """The statuses of a few of the operation's requests, sent with no credential at all."""
    statuses: set[int] = set()

    @settings(FUZZ_SETTINGS, max_examples=5)
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        for name in (*CREDENTIALS, "stripe-signature"):
            (case.headers or {}).pop(name, None)
        response = case.call(base_url=url)
        statuses.add(response.status_code)
        ErrorBody.model_validate(response.json())

    run()
    return statuses


def refuse_without_credentials(url: str) -> dict[str, set[int]]:
    schema = load_schema(url)
    return {
        op.label: statuses_without_credentials(op, url)
        for op in operations(schema)
        if is_protected(op)
    }


async def test_every_protected_operation_is_refused_without_credentials(
    fuzzed: RunningServer,
) -> None:
    statuses = await asyncio.to_thread(refuse_without_credentials, fuzzed.url)
    webhook = f"POST {stripe_helpers.WEBHOOK_PATH}"
    assert statuses.pop(webhook) == {400}
    assert len(statuses) >= 6
    assert all(found == {401} for found in statuses.values()), statuses
