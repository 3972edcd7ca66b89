"""The HTTP edge: error model, request ids, credentials, browser refusal, body limits, health."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import httpx
import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse

from app.http.render import json_response
from app.settings import Settings
from tests.conftest import (
    APP_TOKEN,
    CRON_SECRET,
    OLD_APP_TOKEN,
    RunningServer,
    make_settings,
)


async def _echo_actor(request: Request) -> HTTPResponse:
    return json_response({"actor": request.ctx.actor, "size": len(request.body or b"")})


@pytest.fixture
async def guarded(
    start_server: Callable[..., Awaitable[RunningServer]], settings: Settings
) -> httpx.AsyncClient:
    """A server with two extra routes guarded the way the real ones are."""

    def add_routes(app: Sanic) -> None:
        app.add_route(
            _echo_actor,
            "/t/app",
            methods=["POST"],
            ctx_credential="app",
            ctx_body_limit=64,
            name="t_app",
        )
        app.add_route(
            _echo_actor, "/t/cron", methods=["POST"], ctx_credential="cron", name="t_cron"
        )

    running = await start_server(settings, customize=add_routes)
    return running.client


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


async def test_health_reports_database_and_version(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["reachable"] is True
    assert body["version"]
    assert body["timestamp"].endswith("+00:00")


async def test_health_is_503_when_database_is_down(
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    running = await start_server(
        make_settings("postgresql://postgres@127.0.0.1:1/nothing", db_acquire_timeout_s=1)
    )
    response = await running.client.get("/health")
    assert response.status_code == 503
    assert response.json()["database"]["reachable"] is False
    assert response.headers["retry-after"]


async def test_unknown_path_is_json_404_with_request_id(http: httpx.AsyncClient) -> None:
    response = await http.get("/no/such/path")
    assert_error(response, 404, "not_found")
    assert len(response.headers["x-request-id"]) >= 16


async def test_request_id_is_kept_when_given_and_replaced_when_unsafe(
    http: httpx.AsyncClient,
) -> None:
    kept = await http.get("/health", headers={"x-request-id": "abc-123"})
    assert kept.headers["x-request-id"] == "abc-123"
    replaced = await http.get("/health", headers={"x-request-id": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"


async def test_browser_requests_are_refused_except_health(guarded: httpx.AsyncClient) -> None:
    origin = {"origin": "https://example.com"}
    assert_error(
        await guarded.post("/t/app", headers={**origin, "x-app-token": APP_TOKEN}),
        403,
        "browser_forbidden",
    )
    preflight = await guarded.options(
        "/t/app", headers={**origin, "access-control-request-method": "POST"}
    )
    assert_error(preflight, 403, "browser_forbidden")
    assert (await guarded.get("/health", headers=origin)).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"x-app-token": "wrong"}, 401),
        ({"x-app-token": ""}, 401),
        ({"x-cron-secret": CRON_SECRET}, 401),
        ({"x-app-token": APP_TOKEN}, 200),
        ({"x-app-token": OLD_APP_TOKEN}, 200),
    ],
)
async def test_app_token_is_required_and_rotation_accepts_both(
    guarded: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    response = await guarded.post("/t/app", headers=headers, content=b"{}")
    assert response.status_code == status
    if status == 401:
        assert_error(response, 401, "unauthorized")


async def test_actor_is_a_fingerprint_never_the_token(guarded: httpx.AsyncClient) -> None:
    current = (await guarded.post("/t/app", headers={"x-app-token": APP_TOKEN})).json()["actor"]
    previous = (await guarded.post("/t/app", headers={"x-app-token": OLD_APP_TOKEN})).json()
    assert current.startswith("app:") and APP_TOKEN not in current
    assert current != previous["actor"]


async def test_cron_secret_guards_cron_routes(guarded: httpx.AsyncClient) -> None:
    assert_error(
        await guarded.post("/t/cron", headers={"x-app-token": APP_TOKEN}), 401, "unauthorized"
    )
    ok = await guarded.post("/t/cron", headers={"x-cron-secret": CRON_SECRET})
    assert ok.json()["actor"].startswith("cron:")


async def test_body_over_the_route_limit_is_413_naming_the_limit(
    guarded: httpx.AsyncClient,
) -> None:
    headers = {"x-app-token": APP_TOKEN}
    assert (await guarded.post("/t/app", headers=headers, content=b"x" * 64)).status_code == 200
    error = assert_error(
        await guarded.post("/t/app", headers=headers, content=b"x" * 65), 413, "payload_too_large"
    )
    assert "64 bytes" in error["message"]


async def test_access_log_has_one_line_per_request_and_no_secret(
    guarded: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ingest.access"):
        await guarded.post("/t/app", headers={"x-app-token": APP_TOKEN, "x-request-id": "rid-1"})
        await guarded.post("/t/app", headers={"x-app-token": "wrong-token-value"})
    lines = [r for r in caplog.records if r.name == "ingest.access"]
    assert [(r.path, r.status) for r in lines] == [("/t/app", 200), ("/t/app", 401)]
    assert lines[0].request_id == "rid-1" and lines[0].method == "POST"
    assert lines[0].duration_ms >= 0
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert APP_TOKEN not in text and "wrong-token-value" not in text
