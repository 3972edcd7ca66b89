"""Full-text search over rules: the read path and the steps of a full rebuild.

`rule_search` holds one weighted tsvector per rule (title A, summary B, tags C, model D) under
a GIN index. Triggers on `rules` keep it current on every write; a full rebuild (the
`rebuild_search` job) builds `rule_search_next` beside it and swaps it in by renaming, so
readers are never blocked for longer than the rename. The read path is the SQL function
`search_rules(query, lim)`, which the main API can call directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass

import asyncpg

from app import audit
from app.db import connect, init_connection
from app.sql import queries
from app.wire import WireModel

logger = logging.getLogger("ingest.search")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY_CHARS = 500
ACTOR = "job:rebuild_search"  # the audit actor of a rebuild run outside a job


class SearchHit(WireModel):
    rule_id: str
    title: str
    rank: float
    headline: str


async def search_rules(
    conn: asyncpg.Connection, *, query: str, limit: int = DEFAULT_LIMIT
) -> list[SearchHit]:
    """Rules matching `query` (web-search syntax), best first, through `search_rules()`."""
    rows = queries.search_find(conn, query=query, lim=limit)
    return [
        SearchHit(
            rule_id=row["rule_id"],
            title=row["title"],
            rank=float(row["rank"]),
            headline=row["headline"],
        )
        async for row in rows
    ]


async def take_rebuild_lock(conn: asyncpg.Connection) -> bool:
    """True when no other full rebuild is running; held until the caller's transaction ends."""
    return bool(await queries.search_try_rebuild_lock(conn))


async def build_next_table(conn: asyncpg.Connection) -> int:
    """Create, fill and index `rule_search_next`; return the number of documents built.

    Runs in the caller's transaction. It reads `rules` without blocking anyone: writers go on
    updating `rule_search` through the triggers, and `catch_up_next_table` copies their
    changes over before the swap.
    """
    await queries.search_create_next_table(conn)
    built = int(await queries.search_fill_next_table(conn))
    await queries.search_index_next_table(conn)
    return built


async def catch_up_next_table(conn: asyncpg.Connection) -> int:
    """Redo the documents of rules written or deleted since the fill; return how many."""
    return int(await queries.search_catch_up_next_table(conn))


async def swap_in_next_table(conn: asyncpg.Connection, *, lock_timeout_ms: int) -> int:
    """Make `rule_search_next` the live `rule_search`; return the late changes it caught.

    Holds writers of `rules` (never readers) while it applies the last changes, then renames
    under a short exclusive lock on `rule_search`. Every lock wait gives up after
    `lock_timeout_ms` with `asyncpg.LockNotAvailableError`, so a long reader makes the swap
    retry later instead of queueing every other reader behind it. Call it in a savepoint.
    """
    await queries.session_set_lock_timeout(conn, ms=lock_timeout_ms)
    await queries.search_freeze_rules(conn)
    late = await catch_up_next_table(conn)
    await queries.search_swap_tables(conn)
    return late


# --- the full rebuild (the nightly task, POST /cron/rebuild-search, `ingest`) ---

# How long the swap may wait for a lock before giving up and trying again: readers that
# arrive meanwhile queue behind it, so keep it short.
SWAP_LOCK_TIMEOUT_MS = 2000
SWAP_ATTEMPTS = 5
SWAP_RETRY_WAIT_S = 1.0
_SWAP_CONFLICTS = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)


@dataclass
class RebuildReport:
    skipped: bool = False
    documents: int = 0
    caught_up: int = 0
    late_changes: int = 0
    swap_attempts: int = 0
    duration_ms: float = 0.0


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
    if not await take_rebuild_lock(conn):
        report.skipped = True
        return report
    report.documents = await build_next_table(conn)
    report.caught_up = await catch_up_next_table(conn)
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
                late = await swap_in_next_table(conn, lock_timeout_ms=lock_timeout_ms)
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
