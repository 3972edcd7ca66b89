"""POST /ingest/crawl: partner crawlers bulk-import rules from a registered source."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from app.crawl import MAX_BODY_BYTES, CrawlBatch, import_items, validate_items
from app.db import transaction
from app.http.render import json_response, parse_body

bp = Blueprint("crawl")


@bp.post(
    "/ingest/crawl",
    ctx_credential="app",
    ctx_body_limit=MAX_BODY_BYTES,
    ctx_rate_limit="crawl",
)
async def ingest_crawl(request: Request) -> HTTPResponse:
    """200 with counts and per-item outcomes; invalid items are listed, not fatal."""
    batch = parse_body(request, CrawlBatch)
    items = validate_items(batch.items)
    settings = request.app.ctx.settings
    async with transaction(request.app.ctx.pool, timeout=settings.db_acquire_timeout_s) as conn:
        report = await import_items(
            conn,
            source_id=batch.source_id,
            items=items,
            actor=request.ctx.actor,
            request_id=request.ctx.request_id,
        )
    return json_response(report.as_json())
