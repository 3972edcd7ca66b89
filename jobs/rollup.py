"""The rollup tasks: nightly, every 5 minutes (the refresh), on `POST /cron/rollup`, from a shell.

    procrastinate --app=jobs.app defer rollup '{"date": "2026-01-31", "days": 7}'
    procrastinate --app=jobs.app defer rollup_refresh '{}'

Both roll the days they ask for plus every dirty day (app.rollup.plan). Both take
`lock="rollup"`, so two runs never overlap, and each has a queueing lock, so at most one of
each waits; inside, every day is written under a per-day advisory lock, so CLI runs and HTTP dry
runs serialize with them too. A worker killed mid-run leaves every day either at its previous
numbers or at its new ones (one transaction per day); `retry_stalled_jobs`
(jobs/maintenance.py) puts the job back in the queue and the re-run converges.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from procrastinate import App, JobContext

from app import rollup
from app.errors import ValidationFailed
from app.queue import BACKFILL_TASK, REFRESH_TASK, ROLLUP_LOCK, ROLLUP_TASK
from app.rollup.config import DEFAULT_DAYS
from app.rollup.plan import Reason
from app.rollup.run import rollup_and_record
from jobs.resources import RetryUnlessInvalid, job_actor, resources_for

logger = logging.getLogger("ingest.jobs.rollup")

QUEUE = "rollup"
NIGHTLY_CRON = "10 0 * * *"
NIGHTLY_DAYS = 2
REFRESH_CRON = "*/5 * * * *"


def parse_day(value: str | None, *, default: date) -> date:
    if value is None:
        return default
    try:
        return rollup.parse_day(value)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc


def parse_days(value: object) -> int:
    try:
        return rollup.parse_days(value)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc


async def run_rollup_task(
    context: JobContext,
    timestamp: int | None = None,
    date: str | None = None,
    days: int = DEFAULT_DAYS,
    backfill: bool = False,
) -> dict[str, object]:
    """The task. A periodic run (it gets `timestamp`) rolls the two days before that night;
    any other rolls `days` days ending on `date`; both roll every dirty day too (`backfill` is
    accepted for older callers: dirty days are always included now)."""
    res = await resources_for(context)
    if timestamp is not None:
        end_day = datetime.fromtimestamp(timestamp, UTC).date() - timedelta(days=1)
        count, reason = NIGHTLY_DAYS, Reason.SCHEDULE
    else:
        end_day = parse_day(date, default=rollup.utc_today())
        count, reason = parse_days(days), Reason.OPERATOR
    actor = job_actor(context, ROLLUP_TASK)
    report = await rollup_and_record(
        res.settings, end_day=end_day, days=count, reason=reason, actor=actor
    )
    await res.queue.author_notifications()
    return rollup.report_details(report)


async def rollup_refresh(context: JobContext, timestamp: int | None = None) -> dict[str, object]:
    """Every 5 minutes: roll the dirty days (today's new events among them) and the days whose
    trending and boards follow them. With nothing dirty it runs no rollup statement at all.

    Procrastinate skips periodic runs missed by more than 10 minutes; this one catches up on
    its first run after a worker was down, over midnight included."""
    res = await resources_for(context)
    task_name = context.job.task_name if context.job else REFRESH_TASK
    report = await rollup_and_record(res.settings, actor=job_actor(context, task_name))
    if report.is_noop:
        return {"days": []}
    await res.queue.author_notifications()
    return rollup.report_details(report)


def register(app: App) -> None:
    task = app.task(
        name=ROLLUP_TASK,
        pass_context=True,
        queue=QUEUE,
        lock=ROLLUP_LOCK,
        queueing_lock=ROLLUP_LOCK,
        # 5 retries after 4 s, 16 s, 64 s, 4 min, 17 min; none for invalid arguments.
        retry=RetryUnlessInvalid(max_attempts=5, exponential_wait=4),
    )(run_rollup_task)
    app.periodic(cron=NIGHTLY_CRON, periodic_id="nightly_rollup")(task)
    refresh = _refresh_task(app, REFRESH_TASK)
    app.periodic(cron=REFRESH_CRON, periodic_id="rollup_refresh")(refresh)
    _refresh_task(app, BACKFILL_TASK)  # the older name, for existing scripts: not scheduled


def _refresh_task(app: App, name: str) -> Any:
    """The refresh under `name`: never beside a rollup (`lock`), one waiting at most."""
    return app.task(
        name=name,
        pass_context=True,
        queue=QUEUE,
        lock=ROLLUP_LOCK,
        queueing_lock=REFRESH_TASK,
        retry=RetryUnlessInvalid(max_attempts=3, exponential_wait=4),
    )(rollup_refresh)
