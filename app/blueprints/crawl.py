"""POST /ingest/crawl: partner crawlers bulk-import rules from a registered source."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from app.crawl import (
    MAX_BODY_BYTES,
    MAX_ITEMS,
    CrawlBatch,
    CrawlItem,
    CrawlReport,
    import_items,
    validate_items,
)
from app.http.openapi import (
    APP_TOKEN,
    checked_one_by_one,
    error_responses,
    json_body,
    json_response_of,
)
from app.http.render import json_response, parse_body

bp = Blueprint("crawl")


ITEMS_SCHEMA = checked_one_by_one(CrawlItem, min_items=1, max_items=MAX_ITEMS)


@bp.post(
    "/ingest/crawl",
    ctx_credential="app",
    ctx_body_limit=MAX_BODY_BYTES,
    ctx_rate_limit="crawl",
)
@openapi.definition(
    summary="Import a partner source's rules",
    body=json_body(CrawlBatch, properties={"items": ITEMS_SCHEMA}),
    response=[
        json_response_of(200, CrawlReport, "Imported; per-item outcomes and rejections"),
        *error_responses(400, 401, 403, 404, 409, 413, 415, 429, 503),
    ],
    secured=APP_TOKEN,
)
async def ingest_crawl(request: Request) -> HTTPResponse:
    """200 with counts and per-item outcomes; invalid items are listed, not fatal."""
    batch = parse_body(request, CrawlBatch)
    items = validate_items(batch.items)
    report = await request.app.ctx.res.db.run(
        "crawl.import_items",
        import_items,
        source_id=batch.source_id,
        items=items,
        actor=request.ctx.actor,
        request_id=request.ctx.request_id,
    )
    return json_response(report.as_json())
