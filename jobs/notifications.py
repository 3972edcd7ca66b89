"""The `notify_authors` task: after every rollup, and every 5 minutes for new donations.

    procrastinate --app=jobs.app defer notify_authors '{}'

Running it periodically keeps donation notifications a few minutes behind the webhook
without coupling the Stripe code to this one (the Stripe code may also defer it right after
a donation; the queueing lock folds the two). Idempotent: see app/notifications.py.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict
from datetime import UTC, datetime

from procrastinate import App, JobContext, RetryStrategy
from procrastinate.exceptions import AlreadyEnqueued

from app import notifications
from app.db import transaction
from jobs.resources import resources_for

logger = logging.getLogger("ingest.jobs.notifications")

NOTIFY_TASK = "notify_authors"


async def notify_authors(context: JobContext, timestamp: int | None = None) -> int:
    res = await resources_for(context)
    async with transaction(res.pool, timeout=res.settings.db_acquire_timeout_s) as conn:
        counts = await notifications.notify_authors(conn, now=datetime.now(UTC))
    if counts.total:
        logger.info("authors notified", extra=asdict(counts))
    return counts.total


async def defer_notify(proc_app: App) -> None:
    """Queue a notification run unless one is already waiting."""
    with contextlib.suppress(AlreadyEnqueued):
        await proc_app.configure_task(NOTIFY_TASK, queueing_lock=NOTIFY_TASK).defer_async()


def register(app: App) -> None:
    task = app.task(
        name=NOTIFY_TASK,
        pass_context=True,
        queue="notifications",
        queueing_lock=NOTIFY_TASK,
        retry=RetryStrategy(max_attempts=5, exponential_wait=4),
    )(notify_authors)
    app.periodic(cron="*/5 * * * *", periodic_id="notify_every_5_minutes")(task)
