"""The full search rebuild: nightly, on `POST /cron/rebuild-search`, or from a shell.

    procrastinate --app=jobs.app defer rebuild_search '{}'

The triggers on `rules` keep `rule_search` current; the rebuild exists to repair drift (a
restore, a trigger disabled during a bulk load, a changed document definition) and to shed
the bloat of many small updates. It builds a new table in one transaction and swaps it in;
readers keep using the old table until the swap, which takes a few catalog updates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass

import asyncpg
from procrastinate import App, JobContext, RetryStrategy
from procrastinate.exceptions import AlreadyEnqueued, ConnectorException

from app import audit, search
from app.db import connect, init_connection
from app.errors import DatabaseUnavailable, RebuildNotQueued
from jobs.resources import job_actor, resources_for

logger = logging.getLogger("ingest.jobs.search")

REBUILD_TASK = "rebuild_search"
ACTOR = f"job:{REBUILD_TASK}"  # a rebuild run outside a job
# How long the swap may wait for a lock before giving up and trying again: readers that
# arrive meanwhile queue behind it, so keep it short.
SWAP_LOCK_TIMEOUT_MS = 2000
SWAP_ATTEMPTS = 5
SWAP_RETRY_WAIT_S = 1.0
_SWAP_CONFLICTS = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)
# A defer that hits the queueing lock looks the waiting job up; a worker may take that job
# in between, after which a fresh defer succeeds. A few rounds settle it.
DEFER_ROUNDS = 5


@dataclass
class RebuildReport:
    skipped: bool = False
    documents: int = 0
    caught_up: int = 0
    late_changes: int = 0
    swap_attempts: int = 0
    duration_ms: float = 0.0


@dataclass(frozen=True)
class QueuedRebuild:
    job_id: int
    already_queued: bool


async def rebuild_in_transaction(
    conn: asyncpg.Connection,
    *,
    actor: str = ACTOR,
    lock_timeout_ms: int = SWAP_LOCK_TIMEOUT_MS,
    attempts: int = SWAP_ATTEMPTS,
    retry_wait_s: float = SWAP_RETRY_WAIT_S,
) -> RebuildReport:
    """Build, catch up and swap in the caller's transaction; skip if a rebuild is running."""
    started = time.perf_counter()
    report = RebuildReport()
    if not await search.take_rebuild_lock(conn):
        report.skipped = True
        return report
    report.documents = await search.build_next_table(conn)
    report.caught_up = await search.catch_up_next_table(conn)
    report.late_changes, report.swap_attempts = await _swap_with_retries(
        conn, lock_timeout_ms=lock_timeout_ms, attempts=attempts, retry_wait_s=retry_wait_s
    )
    report.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    await audit.record(conn, actor=actor, action="search.rebuild", details=asdict(report))
    return report


async def _swap_with_retries(
    conn: asyncpg.Connection, *, lock_timeout_ms: int, attempts: int, retry_wait_s: float
) -> tuple[int, int]:
    """Swap inside a savepoint; a lock timeout or deadlock rolls back only the attempt."""
    attempt = 0
    while True:
        attempt += 1
        try:
            async with conn.transaction():
                late = await search.swap_in_next_table(conn, lock_timeout_ms=lock_timeout_ms)
            return late, attempt
        except _SWAP_CONFLICTS:
            if attempt >= attempts:
                raise
            logger.info("search swap waiting for readers", extra={"attempt": attempt})
            await asyncio.sleep(retry_wait_s * attempt)


async def rebuild_search_index(
    dsn: str,
    *,
    actor: str = ACTOR,
    lock_timeout_ms: int = SWAP_LOCK_TIMEOUT_MS,
    attempts: int = SWAP_ATTEMPTS,
    retry_wait_s: float = SWAP_RETRY_WAIT_S,
) -> RebuildReport:
    """Rebuild on a connection of its own: no command timeout, since a build may be long."""
    conn = await connect(
        dsn, command_timeout=None, server_settings={"application_name": "ingest-search-rebuild"}
    )
    try:
        await init_connection(conn)
        async with conn.transaction():
            return await rebuild_in_transaction(
                conn,
                actor=actor,
                lock_timeout_ms=lock_timeout_ms,
                attempts=attempts,
                retry_wait_s=retry_wait_s,
            )
    finally:
        await conn.close()


async def rebuild_search(context: JobContext, timestamp: int | None = None) -> None:
    """The task: rebuild the whole search table (idempotent: the same rules, the same table)."""
    res = await resources_for(context)
    if not res.settings.database_url:
        raise RuntimeError("DATABASE_URL is not set for this worker")
    actor = job_actor(context, REBUILD_TASK)
    report = await rebuild_search_index(res.settings.database_url, actor=actor)
    logger.info("search rebuilt", extra=asdict(report))


async def defer_rebuild(proc_app: App, pool: asyncpg.Pool, *, timeout: float) -> QueuedRebuild:
    """Queue a rebuild, or name the one already waiting: never two waiting jobs."""
    for _ in range(DEFER_ROUNDS):
        try:
            deferrer = proc_app.configure_task(
                REBUILD_TASK, queueing_lock=search.REBUILD_QUEUEING_LOCK
            )
            return QueuedRebuild(job_id=await deferrer.defer_async(), already_queued=False)
        except AlreadyEnqueued:
            async with pool.acquire(timeout=timeout) as conn:
                waiting = await search.queued_rebuild_job(conn)
            if waiting is not None:
                return QueuedRebuild(job_id=waiting, already_queued=True)
        except ConnectorException as exc:
            raise DatabaseUnavailable() from exc
    raise RebuildNotQueued()


def register(app: App) -> None:
    task = app.task(
        name=REBUILD_TASK,
        pass_context=True,
        queue="search",
        queueing_lock=search.REBUILD_QUEUEING_LOCK,
        retry=RetryStrategy(max_attempts=3, exponential_wait=30),
    )(rebuild_search)
    app.periodic(cron="15 2 * * *", periodic_id="nightly_search_rebuild")(task)
