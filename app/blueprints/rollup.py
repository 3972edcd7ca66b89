"""POST /cron/rollup: queue the rollup task, or compute a dry run and roll it back."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from app import audit, rollup
from app.db import transaction
from app.http.render import json_response, parse_body
from jobs.rollup import defer_rollup

bp = Blueprint("rollup")

BODY_LIMIT = 4096


class RollupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    date: dt.date | None = None
    dry_run: bool = Field(default=False, alias="dryRun")
    days_to_process: int = Field(default=7, ge=1, le=30, alias="daysToProcess")


@bp.post("/cron/rollup", ctx_credential="cron", ctx_body_limit=BODY_LIMIT)
async def trigger_rollup(request: Request) -> HTTPResponse:
    """202 with the queued job (the waiting one when one waits); dry run: 200 with the report."""
    body = parse_body(request, RollupRequest, empty_ok=True)
    if body.dry_run:
        return await _dry_run(request, body)
    settings = request.app.ctx.settings
    pool = request.app.ctx.pool
    queued = await defer_rollup(
        request.app.ctx.jobs,
        pool,
        end_day=body.date,
        days=body.days_to_process,
        timeout=settings.db_acquire_timeout_s,
    )
    async with transaction(pool, timeout=settings.db_acquire_timeout_s) as conn:
        await audit.record(
            conn,
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
    settings = request.app.ctx.settings
    report = await rollup.run_rollup(
        request.app.ctx.pool,
        end_day=body.date or rollup.utc_today(),
        days=body.days_to_process,
        settings=settings,
        dry_run=True,
        actor=request.ctx.actor,
    )
    async with transaction(request.app.ctx.pool, timeout=settings.db_acquire_timeout_s) as conn:
        await audit.record(
            conn,
            actor=request.ctx.actor,
            action="rollup.dry_run",
            subject=f"rollup_run:{report.run_id}",
            request_id=request.ctx.request_id,
            details=rollup.report_details(report),
        )
    return json_response({"status": "dry_run", **report.as_json()})
