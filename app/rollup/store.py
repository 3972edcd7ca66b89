"""Per-day repository functions of the rollup; each runs inside the caller's transaction.

The counting itself is SQL (`sql/rollup.sql`, and `rollup_rule_counts_of_day` in the migrations).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from app.rollup.config import VIEW_CAP, RollupConfig
from app.rollup.report import DayResult
from app.sql import queries

# With a standby for the events: how long an intake or Stripe transaction may take from its start
# to its commit (its statements time out after DB_COMMAND_TIMEOUT_S, 30 s by default), so that
# one begun before the standby's last replayed commit less this has been replayed.
REPLICA_MARGIN_S = 120

# rollup_stage_rule's columns, in the order rollup_day_rule_counts returns them.
STAGE_RULE_COLUMNS = ("run_id", "day", "rule_id", "views", "copies", "saves", "forks", "votes")


async def lock_day(conn: asyncpg.Connection, *, day: date, work_mem: str) -> None:
    """Wait for any other rollup of `day`, then raise work_mem for this transaction."""
    await queries.rollup_lock_day(conn, day=day)
    await queries.rollup_set_work_mem(conn, work_mem=work_mem)


async def count_day_events(
    conn: asyncpg.Connection, *, run_id: int, day: date
) -> list[asyncpg.Record]:
    """One day of events counted per rule (a plain SELECT: a read-only standby can run it),
    as rows of `rollup_stage_rule`."""
    rows = queries.rollup_day_rule_counts(conn, run_id=run_id, day=day, view_cap=VIEW_CAP)
    return [r async for r in rows]


async def stage_rule_rows(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> int:
    """Copy rows of `count_day_events` into the stage (binary COPY, one round trip)."""
    if rows:
        await conn.copy_records_to_table(
            "rollup_stage_rule", records=rows, columns=STAGE_RULE_COLUMNS
        )
    return len(rows)


async def stage_day(
    conn: asyncpg.Connection,
    *,
    run_id: int,
    day: date,
    events_conn: asyncpg.Connection | None = None,
) -> int:
    """Aggregate one day of events (and donations) into this run's scratch rows.

    Without `events_conn`, the day's events are counted into the stage by one statement on
    `conn`. With it (a replica's connection), they are counted there and the rows copied into
    the stage on `conn`. The donations are always read, and the stage written, on `conn`."""
    if events_conn is None:
        staged = int(
            await queries.rollup_stage_rule_day(conn, run_id=run_id, day=day, view_cap=VIEW_CAP)
        )
    else:
        rows = await count_day_events(events_conn, run_id=run_id, day=day)
        staged = await stage_rule_rows(conn, rows)
    await queries.rollup_stage_author_day(conn, run_id=run_id, day=day)
    return staged


async def apply_day(
    conn: asyncpg.Connection,
    *,
    run_id: int,
    run_days: list[date],
    day: date,
    config: RollupConfig,
    reasons: list[str],
    facts_as_of: datetime,
) -> DayResult:
    """Replace the day's metric rows with the staged ones, derive its scores, and record which
    facts the day now includes (`facts_as_of`, see `facts_horizon`)."""
    result = DayResult(day=day)
    source = {"run_id": run_id, "run_days": run_days, "day": day, **config.trend_params()}
    result.rule_rows = int(await queries.rollup_apply_rule_day(conn, run_id=run_id, day=day))
    result.author_rows = int(await queries.rollup_apply_author_day(conn, **source))
    result.leaderboard_rows = await rebuild_boards(conn, run_id=run_id, day=day, config=config)
    await queries.rollup_mark_day(
        conn, day=day, run_id=run_id, reasons=reasons, facts_as_of=facts_as_of
    )
    return result


async def stage_windows(
    conn: asyncpg.Connection, *, run_id: int, run_days: list[date], day: date, config: RollupConfig
) -> int:
    """Every rule's window sums and trending score as of `day`, read once for the rule rows
    and the boards of the day (the run's days from the stage, the others from the metric
    table)."""
    return int(
        await queries.rollup_stage_window_day(
            conn, run_id=run_id, run_days=run_days, day=day, **config.trend_params()
        )
    )


async def derive_day(
    conn: asyncpg.Connection,
    *,
    run_id: int,
    run_days: list[date],
    day: date,
    config: RollupConfig,
    result: DayResult,
) -> DayResult:
    """Trending scores and every leaderboard of a rolled day that reads a re-rolled one (its
    window rows are staged with the run's)."""
    source = {"run_id": run_id, "run_days": run_days, "day": day, **config.trend_params()}
    result.trending_updated = int(await queries.rollup_trend_rule_day(conn, run_id=run_id, day=day))
    result.trending_updated += int(await queries.rollup_trend_author_day(conn, **source))
    result.leaderboard_rows = await rebuild_boards(conn, run_id=run_id, day=day, config=config)
    return result


async def rebuild_boards(
    conn: asyncpg.Connection, *, run_id: int, day: date, config: RollupConfig
) -> int:
    """Every leaderboard of `day`, from the day's window rows (`stage_windows`), which read the
    run's staged days and the stored other days (sql/rollup.sql explains why)."""
    await queries.rollup_clear_leaderboards_day(conn, day=day)
    return int(
        await queries.rollup_leaderboards_day(
            conn, run_id=run_id, day=day, board_size=config.board_size
        )
    )


async def facts_horizon(
    conn: asyncpg.Connection, *, margin_s: float, events_conn: asyncpg.Connection | None
) -> datetime:
    """Up to when a run starting now will see every fact: the start of the oldest transaction
    still open in the database (one begun earlier has committed or aborted by now; intake and
    Stripe stamp their rows with their transaction's start), less `margin_s`. With a standby for
    the events, also no later than what it has replayed, less REPLICA_MARGIN_S."""
    horizon: datetime = await queries.rollup_facts_horizon(conn, margin_s=margin_s)
    if events_conn is not None:
        replayed = await queries.rollup_replay_timestamp(events_conn)
        if replayed is not None:
            horizon = min(horizon, replayed - timedelta(seconds=REPLICA_MARGIN_S))
    return horizon


async def changed_days(conn: asyncpg.Connection, *, run_id: int, days: list[date]) -> list[date]:
    """The staged days whose rule counts differ from the stored ones: the later days' trending
    and boards read them, so those must follow."""
    rows = queries.rollup_changed_days(conn, run_id=run_id, days=days)
    return [r["day"] async for r in rows]


async def rolled_days_after(conn: asyncpg.Connection, *, day: date) -> list[date]:
    """Every rolled day after `day`: ALL_TIME boards read every day before theirs."""
    return [r["day"] async for r in queries.rollup_rolled_days_after(conn, day=day)]


async def top_entries(conn: asyncpg.Connection, *, day: date, limit: int) -> list[dict[str, Any]]:
    rows = queries.rollup_top_entries(conn, day=day, limit_=limit)
    return [
        {
            "period": r["period"],
            "entity": r["entity"],
            "rank": r["rank"],
            "entityId": r["entity_id"],
            "score": r["score"],
        }
        async for r in rows
    ]
