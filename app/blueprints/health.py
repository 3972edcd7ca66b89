"""GET /health: liveness plus database reachability, for load balancers and HEALTHCHECK."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from app import __version__
from app.db import MISCONFIGURATION_ERRORS, MISCONFIGURATION_HINT, UNAVAILABLE_ERRORS
from app.http.openapi import ResponseModel, json_response_of
from app.http.render import json_response

bp = Blueprint("health")

HEALTH_DB_TIMEOUT_S = 2.0


class DatabaseHealth(ResponseModel):
    reachable: bool
    latency_ms: float | None
    error: str | None = None  # what is wrong when it answers but cannot serve


class Health(ResponseModel):
    """Liveness and database reachability."""

    status: Literal["ok", "degraded"]
    timestamp: AwareDatetime
    database: DatabaseHealth
    version: str


@bp.get("/health")
@openapi.definition(
    summary="Liveness and database reachability (no credential; browsers allowed)",
    response=[
        json_response_of(200, Health, "The service and its database answer"),
        json_response_of(
            503,
            Health,
            "The database does not answer within two seconds, or rejects the service's"
            " statements (a pooler or server misconfiguration: `database.error` says which)",
        ),
    ],
)
async def health(request: Request) -> HTTPResponse:
    """200 when the database answers within two seconds and accepts the service's statements
    (none failed as misconfigured in the last minute), 503 otherwise."""
    db = request.app.ctx.res.db
    faults = db.faults
    try:
        latency = await asyncio.wait_for(db.ping(), HEALTH_DB_TIMEOUT_S)
        database: dict[str, object] = {"reachable": True, "latencyMs": round(latency, 2)}
    except UNAVAILABLE_ERRORS:
        database = {"reachable": False, "latencyMs": None}
    except MISCONFIGURATION_ERRORS as exc:
        faults.record(exc)
        database = {"reachable": True, "latencyMs": None}
    if faults.recent():
        database["error"] = MISCONFIGURATION_HINT
    healthy = database["reachable"] and "error" not in database
    body = {
        "status": "ok" if healthy else "degraded",
        "timestamp": datetime.now(UTC).isoformat(),
        "database": database,
        "version": __version__,
    }
    headers = {} if healthy else {"retry-after": str(request.app.ctx.settings.retry_after_s)}
    return json_response(body, status=200 if healthy else 503, headers=headers)
