"""POST /ingest/events: the main API's engagement events, in batches of up to 500."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, Field, ValidationError, WithJsonSchema
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from app.client_ip import forwarded_or_peer
from app.errors import ValidationFailed
from app.events import (
    ID_PATTERN,
    MAX_AGE,
    MAX_BODY_BYTES,
    MAX_EVENTS,
    MAX_FUTURE,
    MAX_IDEMPOTENCY_KEY_CHARS,
    TS_PATTERN,
    EventBatch,
    EventIngestReport,
    EventType,
    check_batch_size,
    prepare_batch,
    store_batch,
)
from app.http.openapi import (
    APP_TOKEN,
    checked_one_by_one,
    error_responses,
    json_body,
    json_response_of,
)
from app.http.render import json_response, read_json, validation_details

bp = Blueprint("events")

# The rules `app.events` applies, as the document states them.
SITE_ID = f"^{ID_PATTERN}$"
Timestamp = Annotated[str, Field(pattern=TS_PATTERN, json_schema_extra={"format": "date-time"})]
IpAddress = Annotated[
    str, WithJsonSchema({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
]


class Event(BaseModel):
    """One event as the main API sends it: exactly what `app.events.prepare_batch` accepts
    (a test holds the two equal). An event that does not fit is listed in `rejected`, not
    refused with a 400; one whose rule or user is unknown too."""

    type: EventType
    rule_id: str = Field(alias="ruleId", pattern=SITE_ID)
    user_id: str | None = Field(default=None, alias="userId", pattern=SITE_ID)
    ts: Timestamp | None = Field(
        default=None,
        description=f"RFC 3339 with an offset (`T` and `Z` upper case, no leap second), at "
        f"most {MAX_AGE.days} days old and at most {MAX_FUTURE.total_seconds() / 60:g} "
        "minutes ahead of the service's clock; default: now",
    )
    idempotency_key: str | None = Field(
        default=None,
        alias="idempotencyKey",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_CHARS,
        description="the event counts once however often it is sent",
    )
    ip: IpAddress | None = Field(
        default=None, description="the end user's IPv4 or IPv6 address; default: the caller's"
    )


EVENTS_SCHEMA = {
    **checked_one_by_one(Event, min_items=1, max_items=MAX_EVENTS),
    "description": f"1 to {MAX_EVENTS} events. Each is checked on its own: "
    "one that is not an `Event` is listed in `rejected` and the others are stored.",
}


@bp.post(
    "/ingest/events",
    ctx_credential="app",
    ctx_body_limit=MAX_BODY_BYTES,
    ctx_rate_limit="events",
)
@openapi.definition(
    summary="Store a batch of engagement events",
    body=json_body(EventBatch, properties={"events": EVENTS_SCHEMA}),
    response=[
        json_response_of(202, EventIngestReport, "Stored; duplicates and rejections counted"),
        *error_responses(400, 401, 403, 413, 415, 429, 503),
    ],
    secured=APP_TOKEN,
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
    res = request.app.ctx.res
    hasher = await res.ip_hasher()
    request_ip = forwarded_or_peer(request.headers.get("x-forwarded-for"), request.ip)
    batch = prepare_batch(
        envelope.events,
        now=received_at,
        request_ip_hash=hasher.hash(request_ip or "0.0.0.0"),
        hasher=hasher,
    )
    report = await store_batch(
        res.db, batch=batch, actor=request.ctx.actor, request_id=request.ctx.request_id
    )
    return json_response(report.as_json(), status=202)
