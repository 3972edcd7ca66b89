"""Property tests: whatever JSON (or bytes) a caller sends to a POST endpoint, the answer is a
2xx matching the documented response model, or a 4xx with the error model; never a 5xx.

Hypothesis runs in a worker thread with a blocking client, so the real server keeps serving
in the test's event loop. Examples are derandomized (the same ones every run: no flaky CI)
and few enough that the file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from app.blueprints.crawl import CrawlReport
from app.blueprints.rollup import RollupDryRun
from app.blueprints.stripe import WebhookReceipt
from app.events import EventIngestReport
from app.http.openapi import ErrorBody, JobQueued
from app.http.render import unstorable
from tests import stripe_helpers
from tests.conftest import APP_HEADERS, CRON_HEADERS, RunningServer
from tests.factories import add_source, create_rule, create_user

EXAMPLES = 75
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
any_json = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=25,
)


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with (some of) the real field names, each holding a plausible or any value."""
    return st.fixed_dictionaries({}, optional={k: v | any_json for k, v in fields.items()})


def timestamps() -> st.SearchStrategy[str]:
    return st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat())


def bodies(rule: str, user: str, source: str) -> dict[str, st.SearchStrategy[Any]]:
    event = shaped(
        {
            "type": st.sampled_from(["VIEW", "COPY", "SAVE", "FORK", "VOTE", "view", ""]),
            "ruleId": st.sampled_from([rule, "rul_missing"]) | st.text(max_size=130),
            "userId": st.sampled_from([user, "usr_missing"]),
            "ts": timestamps(),
            "idempotencyKey": st.text(max_size=130),
            "ip": st.sampled_from(["203.0.113.7", "::1", "2001:db8::1", "999.1.1.1"]),
        }
    )
    item = shaped(
        {
            "externalId": st.text(max_size=20) | st.integers(),
            "url": st.sampled_from(["https://p.example/r/1", "ftp://x", "http://", "https://a.b"]),
            "title": st.text(max_size=50),
            "summary": st.text(max_size=50),
            "tags": st.lists(st.text(max_size=10), max_size=25),
            "model": st.text(max_size=10),
            "raw": st.dictionaries(st.text(max_size=5), any_json, max_size=3),
        }
    )
    rollup = shaped(
        {
            "date": st.dates().map(lambda d: d.isoformat()),
            "dryRun": st.just(True),  # queued rollups are covered by the rollup tests
            "daysToProcess": st.integers(min_value=-2, max_value=33),
        }
    )
    return {
        "/ingest/events": any_json | shaped({"events": st.lists(event | any_json, max_size=8)}),
        "/ingest/crawl": any_json
        | shaped(
            {
                "sourceId": st.sampled_from([source, "src_missing"]),
                "items": st.lists(item | any_json, max_size=6),
            }
        ),
        "/cron/rollup": any_json | rollup,
    }


SUCCESS_MODELS: dict[str, dict[int, type[BaseModel]]] = {
    "/ingest/events": {202: EventIngestReport},
    "/ingest/crawl": {200: CrawlReport},
    "/cron/rollup": {200: RollupDryRun, 202: JobQueued},
    stripe_helpers.WEBHOOK_PATH: {200: WebhookReceipt},
}


def post(url: str, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST, retried after a 503: on a machine shared with other load, a pooled connection can
    take longer than the acquire timeout, and 503 is then the documented, correct answer."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(3):
            response = client.post(path, content=content, headers=headers)
            if response.status_code != 503:
                break
            time.sleep(1)
    return response


def check_answer(path: str, response: httpx.Response) -> None:
    assert response.status_code < 500, (path, response.status_code, response.text[:300])
    body = response.json()
    if response.status_code >= 400:
        ErrorBody.model_validate(body)
    else:
        SUCCESS_MODELS[path][response.status_code].model_validate(body)


@PROPERTY_SETTINGS
@given(data=st.data())
def _never_a_5xx(url: str, path: str, headers: dict[str, str], strategy: Any, data: Any) -> None:
    payload = data.draw(strategy)
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = post(url, path, content, {**headers, "content-type": "application/json"})
    check_answer(path, response)


async def run_property(test: Callable[..., None], **kwargs: Any) -> None:
    """Run a Hypothesis test in a thread while the server goes on serving in this loop."""
    await asyncio.to_thread(test, **kwargs)


async def _world(pool: asyncpg.Pool) -> tuple[str, str, str]:
    rule = await create_rule(pool)
    user = await create_user(pool)
    source, _ = await add_source(pool, "Property partner")
    return rule, user, source


async def test_any_json_to_any_json_endpoint_is_answered_2xx_or_4xx(
    server: RunningServer, pool: asyncpg.Pool
) -> None:
    strategies = bodies(*await _world(pool))
    headers = {**APP_HEADERS, **CRON_HEADERS}
    for path, strategy in strategies.items():
        await run_property(
            _never_a_5xx, url=server.url, path=path, headers=headers, strategy=strategy
        )


async def test_any_bytes_to_any_post_endpoint_is_answered_2xx_or_4xx(
    server: RunningServer,
) -> None:
    headers = {**APP_HEADERS, **CRON_HEADERS}
    for path in SUCCESS_MODELS:
        await run_property(
            _never_a_5xx, url=server.url, path=path, headers=headers, strategy=st.binary()
        )


stripe_objects = shaped(
    {
        "id": st.text(max_size=30),
        "object": st.just("charge"),
        "amount": st.integers(min_value=-(2**64), max_value=2**64),
        "payment_intent": st.text(max_size=20) | st.none(),
        "metadata": st.dictionaries(st.sampled_from(["authorId", "ruleId", "userId"]), any_json),
    }
)


@PROPERTY_SETTINGS
@given(data=st.data())
def _signed_events_are_stored_or_refused(url: str, data: Any) -> None:
    evt = data.draw(
        shaped(
            {
                "id": st.text(min_size=1, max_size=40),
                "type": st.sampled_from(["charge.refunded", "payment_intent.succeeded", "x"]),
                "created": st.integers(min_value=-(2**64), max_value=2**64),
                "data": st.fixed_dictionaries({"object": stripe_objects}),
                "livemode": any_json,
            }
        )
        | any_json
    )
    body = json.dumps(evt).encode()
    headers = {"stripe-signature": stripe_helpers.sign(body), "content-type": "application/json"}
    response = post(url, stripe_helpers.WEBHOOK_PATH, body, headers)
    check_answer(stripe_helpers.WEBHOOK_PATH, response)
    is_event = (
        isinstance(evt, dict)
        and isinstance(evt.get("id"), str)
        and evt["id"]
        and isinstance(evt.get("type"), str)
        and type(evt.get("created")) is int
        and -62135596800 <= evt["created"] <= 253402300799
        and unstorable(body, evt) is None
    )
    assert (response.status_code == 200) == bool(is_event), (evt, response.text)


async def test_any_signed_json_to_the_stripe_webhook_is_stored_or_refused(
    server: RunningServer,
) -> None:
    await run_property(_signed_events_are_stored_or_refused, url=server.url)
