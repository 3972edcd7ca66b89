"""The `notify_authors` task: after every rollup, and every 5 minutes for new donations.

    procrastinate --app=jobs.app defer notify_authors '{}'

Running it periodically keeps donation notifications a few minutes behind the webhook
without coupling the Stripe code to this one (the Stripe code may also defer it right after
a donation; the queueing lock folds the two). Idempotent: see app/notifications.py.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime

from procrastinate import App, JobContext, RetryStrategy

from app import notifications
from app.queue import NOTIFY_TASK
from jobs.resources import resources_for

logger = logging.getLogger("ingest.jobs.notifications")


async def notify_authors(context: JobContext, timestamp: int | None = None) -> int:
    res = await resources_for(context)
    counts = await res.db.run(
        "notifications.notify_authors", notifications.notify_authors, now=datetime.now(UTC)
    )
    if counts.total:
        logger.info("authors notified", extra=asdict(counts))
    return counts.total


def register(app: App) -> None:
    task = app.task(
        name=NOTIFY_TASK,
        pass_context=True,
        queue="notifications",
        queueing_lock=NOTIFY_TASK,
        retry=RetryStrategy(max_attempts=5, exponential_wait=4),
    )(notify_authors)
    app.periodic(cron="*/5 * * * *", periodic_id="notify_every_5_minutes")(task)
