"""Request middleware: request id, browser refusal, credentials, body limits, access log.

Routes declare what they need through Sanic route context:
`ctx_credential="app"` (x-app-token) or `"cron"` (x-cron-secret), `ctx_body_limit=<bytes>`, and
`ctx_rate_limit="events"|"crawl"` (limit read from `rate_limit_<name>_per_minute`, 0 = off).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from sanic import Request, Sanic
from sanic.response import HTTPResponse

from app import metrics
from app.client_ip import forwarded_or_peer
from app.credentials import fingerprint, matches_any
from app.errors import Unauthorized
from app.http.exceptions import BrowserForbidden, PayloadTooLarge, RateLimited

logger = logging.getLogger("ingest.access")

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
CREDENTIAL_HEADERS = {"app": "x-app-token", "cron": "x-cron-secret"}
OPEN_PATHS = frozenset({"/health"})


def _mib(limit: int) -> str:
    return f"{limit / 1024 / 1024:g} MiB"


def assign_request_id(request: Request) -> None:
    """Keep the caller's `x-request-id` when it is sane, otherwise make one."""
    request.ctx.started = time.perf_counter()
    given = request.headers.get("x-request-id", "")
    request.ctx.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def refuse_browsers(request: Request) -> None:
    if request.headers.get("origin") is not None and request.path not in OPEN_PATHS:
        raise BrowserForbidden()


def check_credentials(request: Request) -> None:
    """Authenticate per the route's `credential`; the actor is a fingerprint, never the secret."""
    kind = getattr(request.route.ctx, "credential", None) if request.route else None
    if kind is None:
        return
    settings = request.app.ctx.settings
    accepted = settings.app_tokens if kind == "app" else settings.cron_secrets
    header = CREDENTIAL_HEADERS[kind]
    secret = matches_any(request.headers.get(header), accepted)
    if secret is None:
        raise Unauthorized(f"missing or invalid {header} header")
    request.ctx.actor = f"{kind}:{fingerprint(secret)}"


def enforce_body_limit(request: Request) -> None:
    limit = getattr(request.route.ctx, "body_limit", None) if request.route else None
    if limit is not None and len(request.body or b"") > limit:
        raise PayloadTooLarge(f"the request body exceeds the {_mib(limit)} limit ({limit} bytes)")


async def enforce_rate_limit(request: Request) -> None:
    """Token bucket per (limit, credential, client IP); the IP enters the key only as a hash."""
    name = getattr(request.route.ctx, "rate_limit", None) if request.route else None
    if name is None:
        return
    settings = request.app.ctx.settings
    limit = int(getattr(settings, f"rate_limit_{name}_per_minute", 0) or 0)
    if limit <= 0:
        return
    ip = forwarded_or_peer(request.headers.get("x-forwarded-for"), request.ip)
    res = request.app.ctx.res
    ip_key = (await res.ip_hasher()).hash(ip) if ip else "-"
    actor = getattr(request.ctx, "actor", None) or "anonymous"
    decision = await res.rate_limiter.take(f"{name}:{actor}:{ip_key}", limit)
    request.ctx.rate_limit = decision
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(name).inc()
        raise RateLimited(
            f"rate limit of {limit} requests per minute exceeded; retry in "
            f"{decision.retry_after_s} s",
            headers=decision.headers(),
        )


def finish_response(request: Request, response: HTTPResponse) -> None:
    """Echo the request id and write the one access-log line for this request."""
    request_id = getattr(request.ctx, "request_id", None) or uuid.uuid4().hex
    response.headers["x-request-id"] = request_id
    decision = getattr(request.ctx, "rate_limit", None)
    if decision is not None:
        response.headers.update(decision.headers())
    started = getattr(request.ctx, "started", None)
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
    logger.info(
        "request",
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": duration_ms,
            "request_id": request_id,
        },
    )


def register(app: Sanic) -> None:
    app.on_request(assign_request_id, priority=100)
    app.on_request(refuse_browsers, priority=90)
    app.on_request(check_credentials, priority=80)
    app.on_request(enforce_rate_limit, priority=75)
    app.on_request(enforce_body_limit, priority=70)
    app.on_response(finish_response, priority=100)
