"""POST /ingest/events: the main API's engagement events, in batches of up to 500."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from app.client_ip import forwarded_or_peer
from app.errors import ValidationFailed
from app.events import (
    MAX_BODY_BYTES,
    EventBatch,
    check_batch_size,
    ip_hasher,
    prepare_batch,
    store_batch,
)
from app.http.render import json_response, read_json, validation_details

bp = Blueprint("events")


@bp.post(
    "/ingest/events",
    ctx_credential="app",
    ctx_body_limit=MAX_BODY_BYTES,
    ctx_rate_limit="events",
)
async def ingest_events(request: Request) -> HTTPResponse:
    """202 with `accepted`, `duplicates` and the index and reason of every rejected event."""
    received_at = datetime.now(UTC)
    data = read_json(request)
    check_batch_size(data)
    try:
        envelope = EventBatch.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(details=validation_details(exc)) from exc
    hasher = await ip_hasher(request.app.ctx)
    request_ip = forwarded_or_peer(request.headers.get("x-forwarded-for"), request.ip)
    batch = prepare_batch(
        envelope.events,
        now=received_at,
        request_ip_hash=hasher.hash(request_ip or "0.0.0.0"),
        hasher=hasher,
    )
    settings = request.app.ctx.settings
    report = await store_batch(
        request.app.ctx.pool,
        batch=batch,
        actor=request.ctx.actor,
        request_id=request.ctx.request_id,
        timeout=settings.db_acquire_timeout_s,
    )
    return json_response(report.as_json(), status=202)
