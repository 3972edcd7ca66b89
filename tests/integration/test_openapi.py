"""The OpenAPI document describes the service as it really is: every route, its credential,
the models its handlers validate with, and the error model of every failure status."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from app.blueprints.rollup import RollupRequest
from app.blueprints.search import SearchParams
from app.blueprints.stripe import StripeEvent
from app.crawl import MAX_ITEMS, CrawlBatch, CrawlItem
from app.events import MAX_EVENTS, EventBatch
from app.http.openapi import model_schema
from tests import stripe_helpers
from tests.conftest import APP_HEADERS, CRON_HEADERS, RunningServer, make_settings

# Routes sanic-ext adds for the documentation pages themselves.
DOCS_PREFIX = "/docs"
SCHEME_OF_CREDENTIAL = {"app": "appToken", "cron": "cronSecret"}
# Routes whose credential is not `ctx_credential` (checked in the handler itself).
OWN_SECURITY = {
    ("POST", "/ingest/stripe/webhook"): [{"stripeSignature": []}],
}


@pytest.fixture
async def spec(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _routes(server: RunningServer) -> list[tuple[str, str, Any]]:
    """(method, path, route) of every registered route, but HEAD/OPTIONS and the docs pages."""
    found = []
    for route in server.app.router.routes:
        if route.uri.startswith(DOCS_PREFIX):
            continue
        found += [(m, route.uri, route) for m in route.methods if m not in ("HEAD", "OPTIONS")]
    return found


def _operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = spec["paths"][path][method.lower()]
    return operation


def _component(spec: dict[str, Any], ref: dict[str, str]) -> tuple[str, dict[str, Any]]:
    name = ref["$ref"].rsplit("/", 1)[1]
    return name, spec["components"]["schemas"][name]


def test_every_registered_route_is_documented(server: RunningServer, spec: dict) -> None:
    routes = _routes(server)
    assert len(routes) >= 9
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert {(m, p) for m, p, _ in routes} == documented


def test_every_protected_route_declares_its_security(server: RunningServer, spec: dict) -> None:
    for method, path, route in _routes(server):
        declared = _operation(spec, method, path).get("security")
        credential = getattr(route.ctx, "credential", None)
        if credential is not None:
            assert declared == [{SCHEME_OF_CREDENTIAL[credential]: []}], path
            assert "401" in _operation(spec, method, path)["responses"], path
        elif (method, path) in OWN_SECURITY:
            assert declared == OWN_SECURITY[(method, path)], path
            assert "401" in _operation(spec, method, path)["responses"], path
        else:
            assert not declared, f"{method} {path} is open but declares {declared}"
    schemes = spec["components"]["securitySchemes"]
    assert schemes["appToken"] == {"type": "apiKey", "name": "x-app-token", "in": "header"}
    assert schemes["cronSecret"] == {"type": "apiKey", "name": "x-cron-secret", "in": "header"}
    assert schemes["stripeSignature"]["name"] == "stripe-signature"
    assert schemes["metricsToken"]["scheme"] == "bearer"


def test_every_failure_status_uses_the_error_model(spec: dict) -> None:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            failures = [s for s in operation["responses"] if s != "default" and int(s) >= 400]
            assert failures, f"{method} {path} documents no failure"
            if path != "/health":
                assert "403" in failures, f"{method} {path}: browser refusal undocumented"
            for status in failures:
                content = operation["responses"][status]["content"]["application/json"]
                expected = "Health" if path == "/health" else "ErrorBody"
                assert content["schema"] == {"$ref": f"#/components/schemas/{expected}"}
            success = [s for s in operation["responses"] if int(s) < 300]
            assert success, f"{method} {path} documents no success"


def test_rate_limited_and_body_routes_document_429_413_415(spec: dict) -> None:
    for path in ("/ingest/events", "/ingest/crawl"):
        statuses = set(_operation(spec, "POST", path)["responses"])
        assert {"400", "413", "415", "429", "503"} <= statuses
    assert {"400", "413", "415"} <= set(_operation(spec, "POST", "/cron/rollup")["responses"])


def _spy_on_validation(monkeypatch: pytest.MonkeyPatch) -> list[type[BaseModel]]:
    """Record every pydantic model a handler validates input with, in order."""
    seen: list[type[BaseModel]] = []
    original = BaseModel.__dict__["model_validate"].__func__

    def spy(cls: type[BaseModel], obj: Any, **kwargs: Any) -> BaseModel:
        seen.append(cls)
        return original(cls, obj, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(BaseModel, "model_validate", classmethod(spy))
    return seen


CHECKED_ONE_BY_ONE = {"events", "items"}
# A body each handler validates and refuses (400) without doing anything else.
REFUSED_BODIES = {
    "/ingest/events": ({"events": []}, APP_HEADERS, EventBatch),
    "/ingest/crawl": ({"sourceId": "", "items": []}, APP_HEADERS, CrawlBatch),
    "/cron/rollup": ({"daysToProcess": 0}, CRON_HEADERS, RollupRequest),
}


@pytest.mark.parametrize("path", sorted(REFUSED_BODIES))
async def test_the_documented_body_is_the_model_the_handler_validates_with(
    http: httpx.AsyncClient, spec: dict, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    body, headers, model = REFUSED_BODIES[path]
    seen = _spy_on_validation(monkeypatch)
    response = await http.post(path, json=body, headers=headers)
    assert response.status_code == 400
    assert seen and seen[0] is model
    schema = _operation(spec, "POST", path)["requestBody"]["content"]["application/json"]
    name, documented = _component(spec, schema["schema"])
    assert name == model.__name__
    expected = model_schema(model)
    assert documented.get("required") == expected.get("required")
    assert documented.get("additionalProperties") == expected.get("additionalProperties")
    for field, field_schema in expected["properties"].items():
        if field in CHECKED_ONE_BY_ONE:
            continue  # documented per item (see below)
        assert documented["properties"][field] == field_schema, field


@pytest.mark.parametrize(
    ("path", "array", "limit"),
    [("/ingest/events", "events", MAX_EVENTS), ("/ingest/crawl", "items", MAX_ITEMS)],
)
def test_arrays_checked_one_by_one_state_the_handler_limits(
    spec: dict, path: str, array: str, limit: int
) -> None:
    schema = _operation(spec, "POST", path)["requestBody"]["content"]["application/json"]
    _, envelope = _component(spec, schema["schema"])
    documented = envelope["properties"][array]
    assert (documented["type"], documented["minItems"], documented["maxItems"]) == (
        "array",
        1,
        limit,
    )


@pytest.mark.parametrize(
    ("path", "array", "item_model"),
    [("/ingest/events", "events", "Event"), ("/ingest/crawl", "items", CrawlItem.__name__)],
)
def test_items_checked_one_by_one_are_documented_without_refusing_others(
    spec: dict, path: str, array: str, item_model: str
) -> None:
    """A bad event or crawl item is listed in `rejected` (2xx), never a 400: the schema must
    not make it look invalid, or fuzzing would flag correct answers."""
    schema = _operation(spec, "POST", path)["requestBody"]["content"]["application/json"]
    _, envelope = _component(spec, schema["schema"])
    items = envelope["properties"][array]["items"]
    assert items == {
        "anyOf": [
            {"$ref": f"#/components/schemas/{item_model}"},
            {"$ref": "#/components/schemas/JsonValue"},
        ]
    }


async def test_search_parameters_are_the_model_the_handler_validates_with(
    http: httpx.AsyncClient, spec: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _spy_on_validation(monkeypatch)
    response = await http.get("/internal/search", params={"limit": "0"}, headers=APP_HEADERS)
    assert response.status_code == 400
    assert seen == [SearchParams]
    parameters = {p["name"]: p for p in _operation(spec, "GET", "/internal/search")["parameters"]}
    assert set(parameters) == set(SearchParams.model_fields)
    assert parameters["q"]["required"] is True and parameters["q"]["in"] == "query"
    assert parameters["q"]["schema"]["maxLength"] == 500
    assert (parameters["limit"]["schema"]["minimum"], parameters["limit"]["schema"]["maximum"]) == (
        1,
        100,
    )


async def test_stripe_event_schema_names_what_verification_requires(
    http: httpx.AsyncClient, spec: dict
) -> None:
    """The webhook verifies the raw body instead of validating a model: a signed body with
    only the documented required fields is accepted, and one without any of them is not."""
    schema = _operation(spec, "POST", "/ingest/stripe/webhook")["requestBody"]["content"]
    name, documented = _component(spec, schema["application/json"]["schema"])
    assert name == StripeEvent.__name__
    minimal = {"id": stripe_helpers.new_id("evt"), "type": "ping", "created": 1_790_000_000}
    assert set(documented["required"]) == set(minimal)
    assert (await stripe_helpers.deliver(http, minimal)).status_code == 200
    for field in minimal:
        partial = {k: v for k, v in minimal.items() if k != field}
        response = await stripe_helpers.deliver(http, partial)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_stripe_event"


async def test_documentation_pages_are_served(http: httpx.AsyncClient) -> None:
    for path in ("/docs/redoc", "/docs/swagger"):
        response = await http.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
    assert (await http.get("/docs/openapi.json")).json() == (await http.get("/openapi.json")).json()


def test_the_document_is_openapi_3_1_and_names_every_answer_header(spec: dict) -> None:
    assert spec["openapi"] == "3.1.0"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                headers = response["headers"]
                assert headers["x-request-id"]["required"] is True, (method, path, status)
                if status in ("429", "503"):
                    assert headers["Retry-After"]["required"] is True, (method, path, status)


async def test_every_answer_carries_the_documented_request_id(
    http: httpx.AsyncClient, spec: dict
) -> None:
    pattern = spec["paths"]["/health"]["get"]["responses"]["200"]["headers"]["x-request-id"]
    for response in (
        await http.get("/health"),
        await http.post("/ingest/events", json={"events": []}),
        await http.get("/internal/search", params={"q": "x"}, headers={"x-request-id": "a.b"}),
    ):
        assert re.fullmatch(pattern["schema"]["pattern"], response.headers["x-request-id"])


async def test_rate_limited_routes_document_the_limit_headers(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str
) -> None:
    limited = make_settings(db_url, rate_limit_events_per_minute=1)
    client = (await start_server(limited)).client
    document = (await client.get("/openapi.json")).json()
    responses = document["paths"]["/ingest/events"]["post"]["responses"]
    assert responses["429"]["headers"]["RateLimit-Remaining"]["required"] is True
    assert responses["202"]["headers"]["RateLimit-Remaining"]["required"] is False
    assert "RateLimit-Remaining" not in responses["401"]["headers"]  # refused before the limit
    body = {"events": [{"type": "VIEW", "ruleId": "rul_x"}]}
    first = await client.post("/ingest/events", json=body, headers=APP_HEADERS)
    second = await client.post("/ingest/events", json=body, headers=APP_HEADERS)
    assert first.status_code == 202 and "RateLimit-Remaining" in first.headers
    assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
    # Without a limit (this server's crawl route), no limit headers are documented.
    crawl = document["paths"]["/ingest/crawl"]["post"]["responses"]["200"]["headers"]
    assert "RateLimit-Remaining" not in crawl


async def test_metrics_declares_its_bearer_token_only_when_one_is_set(
    start_server: Callable[..., Awaitable[RunningServer]], db_url: str, spec: dict
) -> None:
    open_metrics = spec["paths"]["/metrics"]["get"]
    assert "security" not in open_metrics and "401" not in open_metrics["responses"]
    guarded = make_settings(db_url, metrics_token="m-token")
    client = (await start_server(guarded)).client
    operation = (await client.get("/openapi.json")).json()["paths"]["/metrics"]["get"]
    assert operation["security"] == [{"metricsToken": []}]
    assert "401" in operation["responses"]
    assert (await client.get("/metrics")).status_code == 401


async def test_an_undeclared_method_is_405_with_allow(http: httpx.AsyncClient) -> None:
    for method in ("TRACE", "DELETE", "PUT", "PATCH"):
        for path, allowed in (("/health", {"GET", "HEAD"}), ("/ingest/events", {"POST"})):
            response = await http.request(method, path)
            assert response.status_code == 405
            assert response.json()["error"]["code"] == "method_not_allowed"
            assert allowed <= {m.strip() for m in response.headers["allow"].split(",")}


SEARCH_CASES = [
    ({"q": "rule", "limit": ""}, 400),  # an empty value is not an integer
    ({"q": "rule", "limit": "05"}, 400),
    ({"q": "rule", "limit": "5.0"}, 400),
    ({"q": "rule", "limit": "5"}, 200),
    ({"q": " \t "}, 400),  # only spaces
    ({"q": "  rule  "}, 200),
    ({"q": "r" * 500}, 200),
    ({"q": " " + "r" * 500}, 400),  # counted as sent
]


async def test_search_parameters_are_judged_as_the_document_states(
    http: httpx.AsyncClient, spec: dict
) -> None:
    parameters = spec["paths"]["/internal/search"]["get"]["parameters"]
    q_schema = {p["name"]: p["schema"] for p in parameters}["q"]
    for params, status in SEARCH_CASES:
        response = await http.get("/internal/search", params=params, headers=APP_HEADERS)
        assert response.status_code == status, (params, response.text)
        q = params["q"]
        documented = q_schema["minLength"] <= len(q) <= q_schema["maxLength"] and bool(
            re.fullmatch(q_schema["pattern"], q)
        )
        assert documented == (status == 200) or "limit" in params, params
        if status == 200:
            assert response.json()["query"] == q.strip()
