"""POST /cron/rollup: queue the rollup task, or compute a dry run and roll it back."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)
from sanic import Blueprint, Request
from sanic.response import HTTPResponse
from sanic_ext import openapi

from app import audit, rollup
from app.http.openapi import (
    CRON_SECRET,
    JobQueued,
    ResponseModel,
    error_responses,
    json_body,
    json_response_of,
)
from app.http.render import json_response, parse_body

bp = Blueprint("rollup")

BODY_LIMIT = 4096


def _whole_number(value: object) -> object:
    """29.0 is the integer 29 in JSON (and in JSON Schema); 29.5 and "29" stay refused."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


class RollupRequest(BaseModel):
    """An empty body is `{}`: the last 7 days up to today (UTC), queued."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    date: dt.date | None = Field(
        default=None,
        ge=rollup.FIRST_DAY,
        le=rollup.LAST_DAY,
        description=f"last day rolled up, {rollup.FIRST_DAY} to {rollup.LAST_DAY}; "
        "default today (UTC)",
        json_schema_extra={"pattern": rollup.DAY_PATTERN},
    )
    dry_run: StrictBool = Field(default=False, alias="dryRun")
    days_to_process: Annotated[StrictInt, BeforeValidator(_whole_number)] = Field(
        default=rollup.DEFAULT_DAYS,
        ge=rollup.MIN_DAYS,
        le=rollup.MAX_DAYS,
        alias="daysToProcess",
        description=f"days ending on `date`, {rollup.MIN_DAYS} to {rollup.MAX_DAYS} (the same "
        "range as the `rollup` job's `days` and `ingest rollup --days`); every dirty day is "
        "rolled too",
    )

    @field_validator("date", mode="before")
    @classmethod
    def _day_text(cls, value: object) -> object:
        """Only YYYY-MM-DD text in the range (not a timestamp number, not a datetime)."""
        if value is None:
            return value
        if type(value) is not str or not re.fullmatch(rollup.DAY_PATTERN, value):
            raise ValueError(
                f"date must be YYYY-MM-DD from {rollup.FIRST_DAY} to {rollup.LAST_DAY}"
            )
        return value


class RollupDryRun(ResponseModel):
    """What the rollup would write, computed and rolled back."""

    status: Literal["dry_run"]
    run_id: int | None
    end_day: dt.date
    days: list[dt.date]
    refreshed_days: list[dt.date]
    skipped_days: list[dt.date]
    dry_run: bool
    row_counts: dict[str, int]
    duration_ms: float
    stage_ms: float
    apply_ms: float
    top: list[dict[str, Any]]
    reasons: dict[str, list[str]] = Field(
        description="why each day would be rolled: schedule, operator, never_rolled, events, "
        "donations, or cascade (trending and boards only)"
    )


@bp.post("/cron/rollup", ctx_credential="cron", ctx_body_limit=BODY_LIMIT)
@openapi.definition(
    summary="Queue the daily rollup, or compute a dry run",
    body=json_body(RollupRequest, required=False),
    response=[
        json_response_of(202, JobQueued, "The rollup job is queued (or already waiting)"),
        json_response_of(200, RollupDryRun, "Dry run: the report of a rolled-back run"),
        *error_responses(400, 401, 403, 413, 415, 503),
    ],
    secured=CRON_SECRET,
)
async def trigger_rollup(request: Request) -> HTTPResponse:
    """202 with the queued job (the waiting one when one waits); dry run: 200 with the report."""
    body = parse_body(request, RollupRequest, empty_ok=True)
    if body.dry_run:
        return await _dry_run(request, body)
    res = request.app.ctx.res
    queued = await res.queue.rollup(end_day=body.date, days=body.days_to_process)
    await res.db.run(
        "audit.rollup_requested",
        audit.record,
        actor=request.ctx.actor,
        action="rollup.requested",
        subject=f"job:{queued.job_id}",
        request_id=request.ctx.request_id,
        details={
            "jobId": queued.job_id,
            "alreadyQueued": queued.already_queued,
            "date": body.date.isoformat() if body.date else None,
            "daysToProcess": body.days_to_process,
        },
    )
    answer = {"jobId": queued.job_id, "status": "queued", "alreadyQueued": queued.already_queued}
    return json_response(answer, status=202)


async def _dry_run(request: Request, body: RollupRequest) -> HTTPResponse:
    res = request.app.ctx.res
    report = await rollup.run_rollup(
        res.db,
        end_day=body.date or rollup.utc_today(),
        days=body.days_to_process,
        settings=res.settings,
        dry_run=True,
        actor=request.ctx.actor,
    )
    await res.db.run(
        "audit.rollup_dry_run",
        audit.record,
        actor=request.ctx.actor,
        action="rollup.dry_run",
        subject=f"rollup_run:{report.run_id}",
        request_id=request.ctx.request_id,
        details=rollup.report_details(report),
    )
    return json_response({"status": "dry_run", **report.as_json()})
