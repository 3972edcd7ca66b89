"""Rollups: events and donations into daily metrics, trending scores and leaderboards.

All counting is done by the SQL in `sql/rollup.sql`; Python only orders the work. A run has
two phases:

1. *stage*: the per-day event aggregates (the only statements that read `events`) run in
   parallel over `ROLLUP_PARALLELISM` connections into the unlogged `rollup_stage_rule`;
   with an `events_pool` (a read replica, `ROLLUP_DATABASE_URL`) they run there as plain
   SELECTs whose rows are copied into the stage, and everything else runs on `pool`, the
   primary;
   then, again in parallel, each day to apply gets its rules' window sums and trending
   scores (`rollup_stage_window`, one read of the days up to it: the run's other days from
   the stage, their final new numbers, and older days from the metric tables); the boards'
   scopes are numbered once (`rollup_stage_scope`) and the stage is analyzed;
2. *apply*: one transaction per day, again over parallel connections, replaces the day's
   rule and author rows with their trending scores and rebuilds its leaderboards, all from
   the stage.

A day is therefore either entirely the previous numbers or entirely the new ones, and every
committed day was computed from the numbers the whole run leaves, whatever order the days
were committed in. `run_rollup` is the only
function here that opens transactions; the others run inside the caller's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Any

import asyncpg

from app import audit
from app.db import create_pool, queries
from app.rollup.config import (
    DRY_RUN_TOP,
    MONTHLY_WINDOW_DAYS,
    RollupConfig,
    retention_floor,
    utc_today,
    window,
)
from app.rollup.report import RollupReport, report_details
from app.rollup.store import (
    days_to_backfill,
    lock_day,
    roll_day,
    rolled_days,
    stage_day,
    stage_windows,
    top_entries,
)
from app.settings import Settings

logger = logging.getLogger("ingest.rollup")


def plan_days(
    *, end_day: date, days: int, extra_days: Iterable[date], config: RollupConfig, today: date
) -> tuple[list[date], list[date]]:
    """(days to roll, days skipped because their events may already be purged)."""
    wanted = sorted(set(window(end_day, days)) | set(extra_days))
    floor = retention_floor(config, today)
    if floor is None:
        return wanted, []
    return [d for d in wanted if d >= floor], [d for d in wanted if d < floor]


async def run_rollup(
    pool: asyncpg.Pool,
    *,
    end_day: date,
    days: int,
    settings: Settings,
    dry_run: bool = False,
    extra_days: Sequence[date] = (),
    actor: str = "rollup",
    events_pool: asyncpg.Pool | None = None,
) -> RollupReport:
    """Roll up `days` days ending on `end_day` (plus `extra_days`); see the module docstring.

    With `dry_run`, everything runs on one connection in one transaction that is rolled back,
    and the report says what would have been written. With `events_pool` (a read replica of
    `pool`'s database), the per-day event aggregates are read there, in read-only
    transactions, and nothing else is: every write and every other read stays on `pool`.
    """
    config = RollupConfig.from_settings(settings)
    planned, skipped = plan_days(
        end_day=end_day, days=days, extra_days=extra_days, config=config, today=utc_today()
    )
    report = RollupReport(
        run_id=None, end_day=end_day, days=planned, dry_run=dry_run, skipped_days=skipped
    )
    args = {
        "endDay": end_day.isoformat(),
        "days": days,
        "dryRun": dry_run,
        "extraDays": [d.isoformat() for d in extra_days],
    }
    started = time.perf_counter()
    if dry_run:
        await _dry_run(pool, events_pool, report=report, config=config, actor=actor, args=args)
    else:
        await _real_run(
            pool,
            events_pool,
            report=report,
            config=config,
            actor=actor,
            args=args,
            started=started,
        )
    report.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    if dry_run:
        await _record_dry_run(pool, report=report, actor=actor, args=args)
    logger.info("rollup finished", extra={"run": report.as_json()})
    return report


async def _real_run(
    pool: asyncpg.Pool,
    events_pool: asyncpg.Pool | None,
    *,
    report: RollupReport,
    config: RollupConfig,
    actor: str,
    args: dict[str, Any],
    started: float,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        run_id = int(
            await queries.rollup_start_run(
                conn, actor=actor, end_day=report.end_day, days=report.days, args=args
            )
        )
        await queries.rollup_clear_stage(conn, run_id=run_id)
    report.run_id = run_id
    try:
        await _stage_in_parallel(pool, events_pool, run_id=run_id, report=report, config=config)
        report.stage_ms = round((time.perf_counter() - started) * 1000, 1)
        await _apply_in_parallel(pool, run_id=run_id, report=report, config=config)
        report.apply_ms = round((time.perf_counter() - started) * 1000 - report.stage_ms, 1)
    except BaseException as exc:
        await _finish(pool, report=report, started=started, status="failed", error=repr(exc))
        raise
    await _finish(pool, report=report, started=started, status="succeeded", error=None)


async def _in_lanes(
    pool: asyncpg.Pool,
    days: list[date],
    lanes: int,
    work: Callable[[asyncpg.Connection, date], Awaitable[None]],
) -> None:
    """Run `work` for every day, one transaction each, over `lanes` connections."""
    todo: asyncio.Queue[date] = asyncio.Queue()
    for day in days:
        todo.put_nowait(day)

    async def lane() -> None:
        async with pool.acquire() as conn:
            while not todo.empty():
                day = todo.get_nowait()
                async with conn.transaction():
                    await work(conn, day)

    await asyncio.gather(*(lane() for _ in range(max(1, min(lanes, len(days))))))


@asynccontextmanager
async def _events_connection(
    events_pool: asyncpg.Pool | None, *, work_mem: str
) -> AsyncIterator[asyncpg.Connection | None]:
    """Where a day's events are read: a read-only transaction on the replica, with the rollup's
    planner settings (a standby accepts these); None without a replica (`stage_day` then
    reads them on its own connection)."""
    if events_pool is None:
        yield None
        return
    async with events_pool.acquire() as replica, replica.transaction(readonly=True):
        await queries.rollup_set_work_mem(replica, work_mem=work_mem)
        yield replica


async def _stage_in_parallel(
    pool: asyncpg.Pool,
    events_pool: asyncpg.Pool | None,
    *,
    run_id: int,
    report: RollupReport,
    config: RollupConfig,
) -> None:
    """The event scans, then every applied day's windows, each spread over `parallelism`
    connections, one day per transaction, each followed by fresh statistics; then the boards'
    scopes. Only the event scans read from `events_pool`, when there is one."""

    async def stage(conn: asyncpg.Connection, day: date) -> None:
        await queries.rollup_set_work_mem(conn, work_mem=config.work_mem)
        async with _events_connection(events_pool, work_mem=config.work_mem) as source:
            await stage_day(conn, run_id=run_id, day=day, events_conn=source)

    async def windows(conn: asyncpg.Connection, day: date) -> None:
        await queries.rollup_set_work_mem(conn, work_mem=config.work_mem)
        await stage_windows(conn, run_id=run_id, run_days=report.days, day=day, config=config)

    await _in_lanes(pool, report.days, config.parallelism, stage)
    async with pool.acquire() as conn:
        await queries.rollup_analyze_stage(conn)
        report.refreshed_days = await _days_to_refresh(conn, days=report.days, config=config)
    # Latest first: a day's windows read every staged day up to it, so the lanes end together.
    every_day = sorted([*report.days, *report.refreshed_days], reverse=True)
    await _in_lanes(pool, every_day, config.parallelism, windows)
    async with pool.acquire() as conn:
        await queries.rollup_stage_scopes(conn, run_id=run_id)
        await queries.rollup_analyze_windows(conn)


async def _apply_in_parallel(
    pool: asyncpg.Pool, *, run_id: int, report: RollupReport, config: RollupConfig
) -> None:
    """One transaction per day, in parallel: the run's days, then the rolled days that follow.

    Each day reads the other run days from the stage, so no day waits for another."""

    async def apply(conn: asyncpg.Connection, day: date) -> None:
        await lock_day(conn, day=day, work_mem=config.work_mem)
        report.add(
            await roll_day(conn, run_id=run_id, run_days=report.days, day=day, config=config)
        )

    days = sorted([*report.days, *report.refreshed_days])
    await _in_lanes(pool, days, config.parallelism, apply)


async def _days_to_refresh(
    conn: asyncpg.Connection, *, days: list[date], config: RollupConfig
) -> list[date]:
    """Already-rolled days whose trending or boards read one of `days`."""
    if not days:
        return []
    reach = max(config.horizon_days, MONTHLY_WINDOW_DAYS) - 1
    found = await rolled_days(conn, first_day=days[0], last_day=days[-1] + timedelta(days=reach))
    return [d for d in found if d not in set(days)]


async def _finish(
    pool: asyncpg.Pool, *, report: RollupReport, started: float, status: str, error: str | None
) -> None:
    report.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    async with pool.acquire() as conn, conn.transaction():
        await queries.rollup_clear_stage(conn, run_id=report.run_id)
        await queries.rollup_finish_run(
            conn,
            run_id=report.run_id,
            status=status,
            duration_ms=report.duration_ms,
            row_counts=report.row_counts(),
            error=error,
        )


class _RollBack(Exception):
    """Raised to roll the dry run's transaction back."""


async def _dry_run(
    pool: asyncpg.Pool,
    events_pool: asyncpg.Pool | None,
    *,
    report: RollupReport,
    config: RollupConfig,
    actor: str,
    args: dict[str, Any],
) -> None:
    """Everything a run would do, in one transaction that is then rolled back."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                run_id = int(
                    await queries.rollup_start_run(
                        conn, actor=actor, end_day=report.end_day, days=report.days, args=args
                    )
                )
                await _dry_run_days(conn, events_pool, run_id=run_id, report=report, config=config)
                raise _RollBack()
        except _RollBack:
            pass


async def _dry_run_days(
    conn: asyncpg.Connection,
    events_pool: asyncpg.Pool | None,
    *,
    run_id: int,
    report: RollupReport,
    config: RollupConfig,
) -> None:
    await queries.rollup_set_work_mem(conn, work_mem=config.work_mem)
    report.refreshed_days = await _days_to_refresh(conn, days=report.days, config=config)
    every_day = sorted([*report.days, *report.refreshed_days])
    for day in every_day:  # in order, so two dry runs cannot deadlock
        await queries.rollup_lock_day(conn, day=day)
    for day in report.days:
        async with _events_connection(events_pool, work_mem=config.work_mem) as source:
            await stage_day(conn, run_id=run_id, day=day, events_conn=source)
    await queries.rollup_analyze_stage(conn)
    for day in every_day:
        await stage_windows(conn, run_id=run_id, run_days=report.days, day=day, config=config)
    await queries.rollup_stage_scopes(conn, run_id=run_id)
    await queries.rollup_analyze_windows(conn)
    for day in every_day:
        report.add(
            await roll_day(conn, run_id=run_id, run_days=report.days, day=day, config=config)
        )
    report.top = await top_entries(conn, day=report.end_day, limit=DRY_RUN_TOP)


async def _record_dry_run(
    pool: asyncpg.Pool, *, report: RollupReport, actor: str, args: dict[str, Any]
) -> None:
    """The audit row of a dry run, written after its rollback (it changes no data)."""
    async with pool.acquire() as conn, conn.transaction():
        run_id = int(
            await queries.rollup_start_run(
                conn, actor=actor, end_day=report.end_day, days=report.days, args=args
            )
        )
        await queries.rollup_finish_run(
            conn,
            run_id=run_id,
            status="dry_run",
            duration_ms=report.duration_ms,
            row_counts=report.row_counts(),
            error=None,
        )
    report.run_id = run_id


# --- pools and the recorded run (task, CLI and benchmarks) ---

# A long statement is normal here: no command timeout beyond an hour.
COMMAND_TIMEOUT_S = 3600.0
BACKFILL_DAYS = 30


async def open_rollup_pool(settings: Settings) -> asyncpg.Pool:
    """A pool for one run on DATABASE_URL, the primary: every write and every read but the
    event scans (`open_events_pool`). One connection per lane, and one more."""
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set for this worker")
    return await create_pool(
        settings.database_url,
        min_size=0,
        max_size=settings.rollup_parallelism + 1,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings={"application_name": "ingest-rollup"},
    )


def events_database_url(settings: Settings) -> str | None:
    """ROLLUP_DATABASE_URL when it names another database than DATABASE_URL, else None."""
    url = settings.rollup_database_url
    return url if url and url != settings.database_url else None


async def open_events_pool(settings: Settings) -> asyncpg.Pool | None:
    """A pool on ROLLUP_DATABASE_URL (a read replica) for the run's per-day event scans, which
    are plain SELECTs in read-only transactions; None when it is unset or is DATABASE_URL."""
    url = events_database_url(settings)
    if url is None:
        return None
    return await create_pool(
        url,
        min_size=0,
        max_size=settings.rollup_parallelism,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings={"application_name": "ingest-rollup-events"},
    )


async def backfill_days(pool: asyncpg.Pool, *, today: date) -> list[date]:
    """Days of the last 30 (to yesterday) never rolled, or whose donations changed since."""
    async with pool.acquire() as conn:
        return await days_to_backfill(
            conn,
            first_day=today - timedelta(days=BACKFILL_DAYS),
            last_day=today - timedelta(days=1),
        )


async def rollup_and_record(
    settings: Settings,
    *,
    end_day: date,
    days: int,
    backfill: bool,
    actor: str,
    dry_run: bool = False,
) -> RollupReport:
    """Run on pools of its own and write the audit row; the CLI calls this too.

    With ROLLUP_DATABASE_URL (a read replica) the event scans read there; all else, writes
    included, runs on DATABASE_URL."""
    pool = await open_rollup_pool(settings)
    events_pool: asyncpg.Pool | None = None
    try:
        events_pool = await open_events_pool(settings)
        extra = await backfill_days(pool, today=utc_today()) if backfill else []
        report = await run_rollup(
            pool,
            end_day=end_day,
            days=days,
            settings=settings,
            dry_run=dry_run,
            extra_days=extra,
            actor=actor,
            events_pool=events_pool,
        )
        async with pool.acquire() as conn, conn.transaction():
            await audit.record(
                conn,
                actor=actor,
                action="rollup.dry_run" if dry_run else "rollup.run",
                subject=f"rollup_run:{report.run_id}",
                details=report_details(report),
            )
        return report
    finally:
        if events_pool is not None:
            await events_pool.close()
        await pool.close()
