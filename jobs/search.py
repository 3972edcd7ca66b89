"""The full search rebuild: nightly, on `POST /cron/rebuild-search`, or from a shell.

    procrastinate --app=jobs.app defer rebuild_search '{}'

The triggers on `rules` keep `rule_search` current; the rebuild exists to repair drift (a
restore, a trigger disabled during a bulk load, a changed document definition) and to shed
the bloat of many small updates. It builds a new table in one transaction and swaps it in;
readers keep using the old table until the swap, which takes a few catalog updates.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from procrastinate import App, JobContext, RetryStrategy

from app.queue import REBUILD_SEARCH_LOCK, REBUILD_SEARCH_TASK
from app.search import rebuild_search_index
from jobs.resources import job_actor, resources_for

logger = logging.getLogger("ingest.jobs.search")


async def rebuild_search(context: JobContext, timestamp: int | None = None) -> None:
    """The task: rebuild the whole search table (idempotent: the same rules, the same table)."""
    res = await resources_for(context)
    if not res.settings.database_url:
        raise RuntimeError("DATABASE_URL is not set for this worker")
    actor = job_actor(context, REBUILD_SEARCH_TASK)
    report = await rebuild_search_index(res.settings.database_url, actor=actor)
    logger.info("search rebuilt", extra=asdict(report))


def register(app: App) -> None:
    task = app.task(
        name=REBUILD_SEARCH_TASK,
        pass_context=True,
        queue="search",
        queueing_lock=REBUILD_SEARCH_LOCK,
        retry=RetryStrategy(max_attempts=3, exponential_wait=30),
    )(rebuild_search)
    app.periodic(cron="15 2 * * *", periodic_id="nightly_search_rebuild")(task)
