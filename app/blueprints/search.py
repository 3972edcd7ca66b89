"""Search: POST /cron/rebuild-search queues a full rebuild; GET /internal/search for operators."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from app import audit, search
from app.db import transaction
from app.errors import ValidationFailed
from app.http.openapi import (
    APP_TOKEN,
    CRON_SECRET,
    JobQueued,
    ResponseModel,
    error_responses,
    json_response_of,
    query_parameters,
)
from app.http.render import json_response, validation_details
from jobs.search import defer_rebuild

bp = Blueprint("search")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class SearchParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    q: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=search.MAX_QUERY_CHARS),
        AfterValidator(_no_nul),
        Field(description='web-search syntax: words, "quoted phrases", or, -excluded'),
    ]
    limit: int = Field(default=search.DEFAULT_LIMIT, ge=1, le=search.MAX_LIMIT)


class SearchHit(ResponseModel):
    rule_id: str
    title: str
    rank: float
    headline: str


class SearchResults(ResponseModel):
    query: str
    count: int
    results: list[SearchHit]


def _search_params(request: Request) -> SearchParams:
    values = {key: request.args.get(key) for key in ("q", "limit") if key in request.args}
    try:
        return SearchParams.model_validate(values)
    except ValidationError as exc:
        raise ValidationFailed(
            "query parameter q (1 to 500 characters) is required; limit is 1 to 100",
            details=validation_details(exc),
        ) from exc


@bp.post("/cron/rebuild-search", ctx_credential="cron")
@openapi.definition(
    summary="Queue a full rebuild of the search index (no body)",
    response=[
        json_response_of(202, JobQueued, "The rebuild job is queued (or already waiting)"),
        *error_responses(401, 403, 413, 503),
    ],
    secured=CRON_SECRET,
)
async def rebuild_search(request: Request) -> HTTPResponse:
    """202 with the queued job; while one waits, every call answers with that same job."""
    settings = request.app.ctx.settings
    pool = request.app.ctx.pool
    queued = await defer_rebuild(request.app.ctx.jobs, pool, timeout=settings.db_acquire_timeout_s)
    async with transaction(pool, timeout=settings.db_acquire_timeout_s) as conn:
        await audit.record(
            conn,
            actor=request.ctx.actor,
            action="search.rebuild_requested",
            subject=f"job:{queued.job_id}",
            request_id=request.ctx.request_id,
            details={"jobId": queued.job_id, "alreadyQueued": queued.already_queued},
        )
    body = {"jobId": queued.job_id, "status": "queued", "alreadyQueued": queued.already_queued}
    return json_response(body, status=202)


@bp.get("/internal/search", ctx_credential="app")
@openapi.definition(
    summary="Search rules, ranked as the main API ranks them",
    parameter=query_parameters(SearchParams),
    response=[
        json_response_of(200, SearchResults, "Best matches first"),
        *error_responses(400, 401, 403, 503),
    ],
    secured=APP_TOKEN,
)
async def internal_search(request: Request) -> HTTPResponse:
    """Ranked rules for `q` (web-search syntax), the same ranking the main API gets."""
    params = _search_params(request)
    settings = request.app.ctx.settings
    async with transaction(request.app.ctx.pool, timeout=settings.db_acquire_timeout_s) as conn:
        hits = await search.search_rules(conn, query=params.q, limit=params.limit)
    body = {"query": params.q, "count": len(hits), "results": [hit.as_json() for hit in hits]}
    return json_response(body)
