"""Full-text search over rules: the read path and the steps of a full rebuild.

`rule_search` holds one weighted tsvector per rule (title A, summary B, tags C, model D) under
a GIN index. Triggers on `rules` keep it current on every write; a full rebuild (the
`rebuild_search` job) builds `rule_search_next` beside it and swaps it in by renaming, so
readers are never blocked for longer than the rename. The read path is the SQL function
`search_rules(query, lim)`, which the main API can call directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from app.sql import queries

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY_CHARS = 500
# The queueing lock of the `rebuild_search` task: at most one rebuild waits in the queue.
REBUILD_QUEUEING_LOCK = "rebuild_search"


@dataclass(frozen=True)
class SearchHit:
    rule_id: str
    title: str
    rank: float
    headline: str

    def as_json(self) -> dict[str, object]:
        return {
            "ruleId": self.rule_id,
            "title": self.title,
            "rank": self.rank,
            "headline": self.headline,
        }


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


async def queued_rebuild_job(conn: asyncpg.Connection) -> int | None:
    """The id of the rebuild job waiting in the queue, if one is."""
    job_id = await queries.search_queued_job(conn, queueing_lock=REBUILD_QUEUEING_LOCK)
    return int(job_id) if job_id is not None else None


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
    await queries.search_set_lock_timeout(conn, ms=lock_timeout_ms)
    await queries.search_freeze_rules(conn)
    late = await catch_up_next_table(conn)
    await queries.search_swap_tables(conn)
    return late
