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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from app.db import queries
from app.errors import ConfigurationError
from app.settings import Settings

logger = logging.getLogger("ingest.rollup")

# The original service's cap: at most this many views per (client IP, rule, UTC day).
VIEW_CAP = 5
# Days a rollup can be asked for, by HTTP, job or CLI: none before the site, and room for the
# date arithmetic of windows and horizons (Python dates end at 9999-12-31).
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(9999, 12, 1)
EVENT_TYPES = ("view", "copy", "save", "fork", "vote")
# Trending and WEEKLY/MONTHLY boards of a day read the days before it: re-rolling a day also
# refreshes the already-rolled days this many days after it.
MONTHLY_WINDOW_DAYS = 30
DRY_RUN_TOP = 5
# rollup_stage_rule's columns, in the order rollup_day_rule_counts returns them.
STAGE_RULE_COLUMNS = ("run_id", "day", "rule_id", "views", "copies", "saves", "forks", "votes")


def parse_day(text: str) -> date:
    """A rollup's last day from YYYY-MM-DD text; ValueError, saying why, for anything else."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"date must be YYYY-MM-DD, got {text!r}") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"date must be between {FIRST_DAY} and {LAST_DAY}, got {text!r}")
    return day


@dataclass(frozen=True)
class TrendingWeights:
    view: float = 1.0
    copy: float = 3.0
    save: float = 4.0
    fork: float = 6.0
    vote: float = 2.0

    @classmethod
    def parse(cls, text: str) -> TrendingWeights:
        """Parse "view=1,copy=3,...": a type left out weighs 0; an unknown type is an error."""
        weights = dict.fromkeys(EVENT_TYPES, 0.0)
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            key = name.strip().lower()
            if not sep or key not in weights:
                raise ConfigurationError(f"TRENDING_WEIGHTS: cannot read {part!r}")
            try:
                weights[key] = float(value)
            except ValueError as exc:
                raise ConfigurationError(f"TRENDING_WEIGHTS: {part!r} is not a number") from exc
        return cls(**weights)

    def as_params(self) -> dict[str, float]:
        return {f"w_{name}": getattr(self, name) for name in EVENT_TYPES}


@dataclass(frozen=True)
class RollupConfig:
    """What a run needs from the settings, validated once."""

    weights: TrendingWeights
    half_life_days: float
    horizon_days: int
    board_size: int
    work_mem: str
    parallelism: int
    retention_days: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RollupConfig:
        return cls(
            weights=TrendingWeights.parse(settings.trending_weights),
            half_life_days=settings.trending_half_life_days,
            horizon_days=settings.trending_horizon_days,
            board_size=settings.leaderboard_size,
            work_mem=settings.rollup_work_mem,
            parallelism=settings.rollup_parallelism,
            retention_days=settings.event_retention_days,
        )

    def trend_params(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon_days,
            "half_life": self.half_life_days,
            **self.weights.as_params(),
        }


@dataclass
class DayResult:
    day: date
    rule_rows: int = 0
    author_rows: int = 0
    leaderboard_rows: int = 0
    trending_updated: int = 0
    recomputed_only: bool = False


@dataclass
class RollupReport:
    run_id: int | None
    end_day: date
    days: list[date]
    dry_run: bool
    refreshed_days: list[date] = field(default_factory=list)
    skipped_days: list[date] = field(default_factory=list)
    rule_metric_daily: int = 0
    author_metric_daily: int = 0
    leaderboard_snapshot: int = 0
    trending_updated: int = 0
    duration_ms: float = 0.0
    stage_ms: float = 0.0
    apply_ms: float = 0.0
    top: list[dict[str, Any]] = field(default_factory=list)

    def add(self, result: DayResult) -> None:
        self.rule_metric_daily += result.rule_rows
        self.author_metric_daily += result.author_rows
        self.leaderboard_snapshot += result.leaderboard_rows
        self.trending_updated += result.trending_updated

    def row_counts(self) -> dict[str, int]:
        return {
            "rule_metric_daily": self.rule_metric_daily,
            "author_metric_daily": self.author_metric_daily,
            "leaderboard_snapshot": self.leaderboard_snapshot,
            "trending_updated": self.trending_updated,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "endDay": self.end_day.isoformat(),
            "days": [d.isoformat() for d in self.days],
            "refreshedDays": [d.isoformat() for d in self.refreshed_days],
            "skippedDays": [d.isoformat() for d in self.skipped_days],
            "dryRun": self.dry_run,
            "rowCounts": self.row_counts(),
            "durationMs": self.duration_ms,
            "stageMs": self.stage_ms,
            "applyMs": self.apply_ms,
            "top": self.top,
        }


def utc_today() -> date:
    return datetime.now(UTC).date()


def window(end_day: date, days: int) -> list[date]:
    """The `days` days ending on `end_day`, oldest first."""
    return [end_day - timedelta(days=n) for n in range(days - 1, -1, -1)]


def retention_floor(config: RollupConfig, today: date) -> date | None:
    """The oldest day whose events are all still kept; older days must not be re-rolled."""
    if config.retention_days <= 0:
        return None
    return today - timedelta(days=config.retention_days - 1)


# --- repository functions: each runs inside the caller's transaction ---


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
    conn: asyncpg.Connection, *, run_id: int, run_days: list[date], day: date, config: RollupConfig
) -> DayResult:
    """Replace the day's metric rows with the staged ones, then derive its scores."""
    result = DayResult(day=day)
    source = {"run_id": run_id, "run_days": run_days, "day": day, **config.trend_params()}
    result.rule_rows = int(await queries.rollup_apply_rule_day(conn, run_id=run_id, day=day))
    result.author_rows = int(await queries.rollup_apply_author_day(conn, **source))
    result.leaderboard_rows = await rebuild_boards(conn, run_id=run_id, day=day, config=config)
    await queries.rollup_mark_day(conn, day=day, run_id=run_id)
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


async def roll_day(
    conn: asyncpg.Connection, *, run_id: int, run_days: list[date], day: date, config: RollupConfig
) -> DayResult:
    """A run day is applied; a later day it affects only gets its scores and boards again."""
    if day in run_days:
        return await apply_day(conn, run_id=run_id, run_days=run_days, day=day, config=config)
    return await derive_day(
        conn,
        run_id=run_id,
        run_days=run_days,
        day=day,
        config=config,
        result=DayResult(day, recomputed_only=True),
    )


async def rolled_days(conn: asyncpg.Connection, *, first_day: date, last_day: date) -> list[date]:
    return [
        r["day"]
        async for r in queries.rollup_rolled_days(conn, first_day=first_day, last_day=last_day)
    ]


async def days_to_backfill(
    conn: asyncpg.Connection, *, first_day: date, last_day: date
) -> list[date]:
    """Days never rolled, or whose donations changed since they were rolled."""
    rows = queries.rollup_days_to_backfill(conn, first_day=first_day, last_day=last_day)
    return [r["day"] async for r in rows]


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


async def queued_rollup_job(conn: asyncpg.Connection, *, queueing_lock: str) -> int | None:
    job_id = await queries.rollup_queued_job(conn, queueing_lock=queueing_lock)
    return int(job_id) if job_id is not None else None


# --- the unit of work ---


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


def report_details(report: RollupReport) -> dict[str, Any]:
    """The report as plain JSON for audit rows and logs."""
    details = report.as_json()
    details.pop("top", None)
    return details
