"""Search: POST /cron/rebuild-search queues a full rebuild; GET /internal/search for operators."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from app import audit, search
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

bp = Blueprint("search")


# The whitespace a query is trimmed of; a query must hold something else (and no NUL).
QUERY_SPACE = " \t\n\x0b\x0c\r"
QUERY_PATTERN = r"^[^\x00]*[^\x00\t\n\x0b\x0c\r ][^\x00]*$"
# An integer in a query string, written as JSON writes it ("05", "+5" and "5.0" are not).
INTEGER_TEXT = re.compile(r"^(0|-?[1-9][0-9]*)$")


def _integer_text(value: object) -> object:
    if isinstance(value, str) and INTEGER_TEXT.fullmatch(value) is None:
        raise ValueError("must be an integer")
    return value


class SearchParams(BaseModel):
    """The query string as sent: `q` is counted before it is trimmed of `QUERY_SPACE`."""

    model_config = ConfigDict(extra="ignore")

    q: str = Field(
        min_length=1,
        max_length=search.MAX_QUERY_CHARS,
        pattern=QUERY_PATTERN,
        description='web-search syntax: words, "quoted phrases", or, -excluded; not only spaces',
    )
    limit: Annotated[int, BeforeValidator(_integer_text)] = Field(
        default=search.DEFAULT_LIMIT, ge=1, le=search.MAX_LIMIT
    )


class SearchResults(ResponseModel):
    query: str
    count: int
    results: list[search.SearchHit]


def _search_params(request: Request) -> SearchParams:
    # An empty value (`limit=`) is a value, and not an integer: keep blank values.
    args = request.get_args(keep_blank_values=True)
    values = {key: args.get(key) for key in ("q", "limit") if key in args}
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
    res = request.app.ctx.res
    queued = await res.queue.search_rebuild()
    await res.db.run(
        "audit.search_rebuild_requested",
        audit.record,
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
    query = params.q.strip(QUERY_SPACE)
    hits = await request.app.ctx.res.db.run(
        "search.search_rules", search.search_rules, query=query, limit=params.limit
    )
    body = {"query": query, "count": len(hits), "results": [hit.as_json() for hit in hits]}
    return json_response(body)
