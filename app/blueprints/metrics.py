"""GET /metrics: Prometheus exposition, optionally behind `Authorization: Bearer METRICS_TOKEN`."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from app import metrics
from app.credentials import matches_any
from app.db import Unit
from app.errors import DatabaseUnavailable, Unauthorized
from app.http.openapi import METRICS_TOKEN_SCHEME, error_responses
from app.rollup.config import retention_floor_of, utc_today
from app.settings import split_secret

bp = Blueprint("metrics")


# Reads only: no transaction around the scrape's queries.
SCRAPE = Unit("metrics.database_gauges", transaction=False)


@bp.get("/metrics")
@openapi.definition(
    summary="Prometheus exposition (bearer METRICS_TOKEN when it is set)",
    response=[
        {
            "status": 200,
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format 0.0.4",
        },
        *error_responses(401, 403),
    ],
)
@openapi.secured({METRICS_TOKEN_SCHEME: []})
@openapi.secured({})
async def scrape(request: Request) -> HTTPResponse:
    """Process, request and database metrics; served while the database is down too."""
    settings = request.app.ctx.settings
    accepted = split_secret(settings.metrics_token)
    if accepted:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or matches_any(token.strip(), accepted) is None:
            raise Unauthorized("missing or invalid bearer token for /metrics")
    db = request.app.ctx.res.db
    metrics.observe_pool(db.pool)
    try:
        floor = retention_floor_of(settings, utc_today())
        gauges = await db.run(SCRAPE, metrics.database_gauges, rollup_floor=floor)
        families = [*gauges, metrics.database_up(True)]
    except DatabaseUnavailable:
        # The process metrics are still worth serving while the database is down.
        families = [metrics.database_up(False)]
    body, content_type = metrics.render(families)
    return HTTPResponse(body, content_type=content_type)
