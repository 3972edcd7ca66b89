"""The rollup run: plan, then one sequence of steps that the real run and the dry run share.

`run_rollup` plans the days (`app.rollup.plan`: the days asked for plus every dirty day), then
`execute` runs the steps:

1. *stage* each planned day: its event aggregate (the only statements that read `events`; with
   an `events_pool`, a read replica, they run there as plain SELECTs whose rows are copied in)
   and its author rows, into unlogged scratch tables;
2. *cascade*: the planned days whose counts changed are compared with the stored ones; every
   rolled day after the earliest of them reads it (trending horizon, WEEKLY/MONTHLY and ALL_TIME
   boards), so it is refreshed in the same run;
3. *windows*: each planned and refreshed day's window sums and trending scores, from one read of
   the days up to it (the run's days from the stage, their final new numbers, others from the
   metric tables), and the boards' scopes, numbered once;
4. *apply*, in day order: a planned day's rule and author rows, trending and boards are replaced
   and the day is marked with the facts it now includes (`facts_as_of`); a refreshed day gets
   its trending and boards again.

The real run (`Lanes`) spreads each per-day step over ROLLUP_PARALLELISM connections, one
transaction per day, so every day is either entirely at its previous numbers or entirely at its
new ones. The dry run (`OneTransaction`) runs the same steps on one connection inside one
transaction that it rolls back. Nothing else here opens transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol, TypeVar

import asyncpg

from app import audit
from app.db import Database, Unit, create_pool
from app.rollup.config import DRY_RUN_TOP, RollupConfig, utc_today, window
from app.rollup.plan import Reason, RollupPlan, plan_rollup
from app.rollup.report import DayResult, RollupReport, report_details
from app.rollup.store import (
    apply_day,
    changed_days,
    derive_day,
    facts_horizon,
    lock_day,
    rolled_days_after,
    stage_day,
    stage_windows,
    top_entries,
)
from app.settings import Settings
from app.sql import queries

logger = logging.getLogger("ingest.rollup")

T = TypeVar("T")
DayWork = Callable[..., Awaitable[None]]  # work(conn, *, day)


class Executor(Protocol):
    """Where the steps run: `each` day in a transaction of its own (or the one of the dry run),
    `once` for a step over the whole run."""

    async def each(self, days: list[date], work: DayWork) -> None: ...

    async def once(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...


@dataclass
class Lanes:
    """The real run: every day a unit of work of its own (one transaction), `lanes` at once."""

    db: Database
    lanes: int

    async def each(self, days: list[date], work: DayWork) -> None:
        todo: asyncio.Queue[date] = asyncio.Queue()
        for day in days:
            todo.put_nowait(day)

        async def lane() -> None:
            while not todo.empty():
                await self.db.run(_unit_name(work), work, day=todo.get_nowait())

        await asyncio.gather(*(lane() for _ in range(max(1, min(self.lanes, len(days))))))

    async def once(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        return await self.db.run(_unit_name(work), work)


def _unit_name(work: Callable[..., Any]) -> str:
    """`rollup.stage`, `rollup.apply`, ...: a step's unit of work is named after it."""
    return f"rollup.{work.__name__}"


@dataclass
class OneTransaction:
    """The dry run: every step, day after day in the order given, on one connection inside the
    caller's transaction. Days are locked in ascending order, so two dry runs cannot deadlock."""

    conn: asyncpg.Connection

    async def each(self, days: list[date], work: DayWork) -> None:
        for day in days:
            await work(self.conn, day=day)

    async def once(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        return await work(self.conn)


@dataclass
class RunSteps:
    """The steps of one run over its plan; `execute` orders them."""

    run_id: int
    plan: RollupPlan
    config: RollupConfig
    report: RollupReport
    facts_as_of: datetime
    events_db: Database | None = None
    refreshed: list[date] = field(default_factory=list)

    @property
    def every_day(self) -> list[date]:
        return sorted([*self.plan.days, *self.refreshed])

    async def stage(self, conn: asyncpg.Connection, *, day: date) -> None:
        if self.events_db is None:
            await queries.rollup_count_settings(conn, work_mem=self.config.work_mem)
            await stage_day(conn, run_id=self.run_id, day=day, events_conn=None)
            return

        await queries.rollup_set_work_mem(conn, work_mem=self.config.work_mem)

        async def read_on_replica(replica: asyncpg.Connection) -> None:
            await queries.rollup_count_settings(replica, work_mem=self.config.work_mem)
            await stage_day(conn, run_id=self.run_id, day=day, events_conn=replica)

        await self.events_db.run(REPLICA_READ, read_on_replica)

    async def find_cascade(self, conn: asyncpg.Connection) -> None:
        """Fresh statistics for the stage, then the days that follow a changed one."""
        await queries.rollup_set_work_mem(conn, work_mem=self.config.work_mem)
        await queries.rollup_analyze_stage(conn)
        changed = await changed_days(conn, run_id=self.run_id, days=self.plan.days)
        if changed:
            later = await rolled_days_after(conn, day=changed[0])
            self.refreshed = [d for d in later if d not in self.plan.reasons]

    async def windows(self, conn: asyncpg.Connection, *, day: date) -> None:
        await queries.rollup_set_work_mem(conn, work_mem=self.config.work_mem)
        await stage_windows(
            conn, run_id=self.run_id, run_days=self.plan.days, day=day, config=self.config
        )

    async def number_scopes(self, conn: asyncpg.Connection) -> None:
        await queries.rollup_stage_scopes(conn, run_id=self.run_id)
        await queries.rollup_analyze_windows(conn)

    async def apply(self, conn: asyncpg.Connection, *, day: date) -> None:
        await lock_day(conn, day=day, work_mem=self.config.work_mem)
        common: dict[str, Any] = {
            "run_id": self.run_id,
            "run_days": self.plan.days,
            "day": day,
            "config": self.config,
        }
        if day in self.plan.reasons:
            reasons = [str(r) for r in self.plan.reasons[day]]
            result = await apply_day(conn, **common, reasons=reasons, facts_as_of=self.facts_as_of)
        else:
            result = await derive_day(conn, **common, result=DayResult(day, recomputed_only=True))
        self.report.add(result)


async def execute(ex: Executor, steps: RunSteps) -> None:
    """The run's steps, in order (module docstring), on `ex`."""
    started = time.perf_counter()
    await ex.each(steps.plan.days, steps.stage)
    await ex.once(steps.find_cascade)
    steps.report.refreshed_days = steps.refreshed
    steps.report.reasons = {
        **steps.plan.reasons_json(),
        **{d.isoformat(): [str(Reason.CASCADE)] for d in steps.refreshed},
    }
    # Latest first: a day's windows read every staged day up to it, so the lanes end together.
    await ex.each(sorted(steps.every_day, reverse=True), steps.windows)
    await ex.once(steps.number_scopes)
    steps.report.stage_ms = _ms_since(started)
    await ex.each(steps.every_day, steps.apply)
    steps.report.apply_ms = round(_ms_since(started) - steps.report.stage_ms, 1)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


# The event scans on a read replica: plain SELECTs in read-only transactions (a standby
# accepts the rollup's planner settings too).
REPLICA_READ = Unit("rollup.stage_on_replica", readonly=True)


async def run_rollup(
    db: Database,
    *,
    settings: Settings,
    end_day: date | None = None,
    days: int = 0,
    reason: Reason = Reason.OPERATOR,
    dry_run: bool = False,
    actor: str = "rollup",
    events_db: Database | None = None,
) -> RollupReport:
    """Roll up the `days` days ending on `end_day` (none: only the dirty days), with `reason`,
    plus every dirty day; see the module docstring.

    With `dry_run`, everything runs on one connection in one transaction that is rolled back,
    and the report says what would have been written. With `events_db` (a read replica of
    `db`'s database), the per-day event aggregates are read there, in read-only
    transactions, and nothing else is: every write and every other read stays on `db`.
    A plan with no day (nothing asked for, nothing dirty) runs no statement beyond the plan's
    read and records nothing.
    """
    config = RollupConfig.from_settings(settings)
    today = utc_today()
    last_day = end_day or today
    requested = window(last_day, days) if days else []
    plan = await db.run(
        Unit("rollup.plan", transaction=False),
        plan_rollup,
        requested=requested,
        reason=reason,
        config=config,
        today=today,
    )
    if not requested and plan.days:
        last_day = plan.days[-1]  # a refresh ends on the last dirty day it rolls, not today
    report = RollupReport(
        run_id=None,
        end_day=last_day,
        days=plan.days,
        dry_run=dry_run,
        skipped_days=plan.skipped,
        reasons=plan.reasons_json(),
    )
    if plan.is_empty:
        return report
    args = {"endDay": last_day.isoformat(), "days": days, "reason": str(reason), "dryRun": dry_run}
    started = time.perf_counter()
    run = _dry_run if dry_run else _real_run
    await run(db, events_db, plan=plan, report=report, config=config, actor=actor, args=args)
    report.duration_ms = _ms_since(started)
    if dry_run:
        await db.run(
            "rollup.record_dry_run", _record_dry_run, report=report, actor=actor, args=args
        )
    logger.info("rollup finished", extra={"run": report_details(report)})
    return report


async def _start_run(
    conn: asyncpg.Connection,
    events_db: Database | None,
    *,
    plan: RollupPlan,
    report: RollupReport,
    config: RollupConfig,
    actor: str,
    args: dict[str, Any],
) -> tuple[int, datetime]:
    """The run's row, and up to when the run will see every fact (`facts_horizon`)."""
    row = await queries.rollup_start_run(
        conn,
        actor=actor,
        end_day=report.end_day,
        days=plan.days,
        args=args,
        day_reasons=plan.reasons_json(),
    )
    margin = config.facts_margin_s
    if events_db is None:
        horizon = await facts_horizon(conn, margin_s=margin, events_conn=None)
    else:

        async def replica_horizon(replica: asyncpg.Connection) -> datetime:
            return await facts_horizon(conn, margin_s=margin, events_conn=replica)

        horizon = await events_db.run(
            Unit("rollup.replica_horizon", transaction=False), replica_horizon
        )
    return int(row["id"]), horizon


async def _real_run(
    db: Database,
    events_db: Database | None,
    *,
    plan: RollupPlan,
    report: RollupReport,
    config: RollupConfig,
    actor: str,
    args: dict[str, Any],
) -> None:
    started = time.perf_counter()

    async def begin(conn: asyncpg.Connection) -> tuple[int, datetime]:
        run = await _start_run(
            conn, events_db, plan=plan, report=report, config=config, actor=actor, args=args
        )
        await queries.rollup_clear_stage(conn, run_id=run[0])
        return run

    run_id, horizon = await db.run("rollup.start", begin)
    report.run_id = run_id
    steps = RunSteps(run_id, plan, config, report, horizon, events_db)
    try:
        await execute(Lanes(db, config.parallelism), steps)
    except BaseException as exc:
        report.duration_ms = _ms_since(started)
        await db.run("rollup.finish", _finish, report=report, status="failed", error=repr(exc))
        raise
    report.duration_ms = _ms_since(started)
    await db.run("rollup.finish", _finish, report=report, status="succeeded", error=None)
    report.top = await db.run(
        Unit("rollup.top", transaction=False),
        top_entries,
        day=report.end_day,
        limit=DRY_RUN_TOP,
    )


async def _finish(
    conn: asyncpg.Connection, *, report: RollupReport, status: str, error: str | None
) -> None:
    await queries.rollup_clear_stage(conn, run_id=report.run_id)
    await queries.rollup_finish_run(
        conn,
        run_id=report.run_id,
        status=status,
        duration_ms=report.duration_ms,
        row_counts=report.row_counts(),
        day_reasons=report.reasons,
        error=error,
    )


class _RollBack(Exception):
    """Raised to roll the dry run's transaction back."""


async def _dry_run(
    db: Database,
    events_db: Database | None,
    *,
    plan: RollupPlan,
    report: RollupReport,
    config: RollupConfig,
    actor: str,
    args: dict[str, Any],
) -> None:
    """Everything a run would do, in one transaction that is then rolled back."""

    async def rolled_back(conn: asyncpg.Connection) -> None:
        run_id, horizon = await _start_run(
            conn, events_db, plan=plan, report=report, config=config, actor=actor, args=args
        )
        steps = RunSteps(run_id, plan, config, report, horizon, events_db)
        await execute(OneTransaction(conn), steps)
        report.top = await top_entries(conn, day=report.end_day, limit=DRY_RUN_TOP)
        raise _RollBack()

    with contextlib.suppress(_RollBack):
        await db.run("rollup.dry_run", rolled_back)


async def _record_dry_run(
    conn: asyncpg.Connection, *, report: RollupReport, actor: str, args: dict[str, Any]
) -> None:
    """The audit row of a dry run, written after its rollback (it changes no data)."""
    row = await queries.rollup_start_run(
        conn,
        actor=actor,
        end_day=report.end_day,
        days=report.days,
        args=args,
        day_reasons=report.reasons,
    )
    await queries.rollup_finish_run(
        conn,
        run_id=row["id"],
        status="dry_run",
        duration_ms=report.duration_ms,
        row_counts=report.row_counts(),
        day_reasons=report.reasons,
        error=None,
    )
    report.run_id = int(row["id"])


# --- pools and the recorded run (tasks, CLI and benchmarks) ---

# A long statement is normal here: no command timeout beyond an hour.
COMMAND_TIMEOUT_S = 3600.0


async def open_rollup_db(settings: Settings) -> Database:
    """A pool for one run on DATABASE_URL, the primary: every write and every read but the
    event scans (`open_events_db`). One connection per lane, and one more."""
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set for this worker")
    pool = await create_pool(
        settings.database_url,
        min_size=0,
        max_size=settings.rollup_parallelism + 1,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings={"application_name": "ingest-rollup"},
    )
    return Database(pool, acquire_timeout=settings.db_acquire_timeout_s)


def events_database_url(settings: Settings) -> str | None:
    """ROLLUP_DATABASE_URL when it names another database than DATABASE_URL, else None."""
    url = settings.rollup_database_url
    return url if url and url != settings.database_url else None


async def open_events_db(settings: Settings) -> Database | None:
    """A pool on ROLLUP_DATABASE_URL (a read replica) for the run's per-day event scans, which
    are plain SELECTs in read-only transactions; None when it is unset or is DATABASE_URL."""
    url = events_database_url(settings)
    if url is None:
        return None
    pool = await create_pool(
        url,
        min_size=0,
        max_size=settings.rollup_parallelism,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings={"application_name": "ingest-rollup-events"},
    )
    return Database(pool, acquire_timeout=settings.db_acquire_timeout_s)


async def rollup_and_record(
    settings: Settings,
    *,
    actor: str,
    end_day: date | None = None,
    days: int = 0,
    reason: Reason = Reason.OPERATOR,
    dry_run: bool = False,
) -> RollupReport:
    """Run on pools of its own and write the audit row (none when there was nothing to roll);
    the tasks and the CLI call this.

    With ROLLUP_DATABASE_URL (a read replica) the event scans read there; all else, writes
    included, runs on DATABASE_URL."""
    db = await open_rollup_db(settings)
    events_db: Database | None = None
    try:
        events_db = await open_events_db(settings)
        report = await run_rollup(
            db,
            settings=settings,
            end_day=end_day,
            days=days,
            reason=reason,
            dry_run=dry_run,
            actor=actor,
            events_db=events_db,
        )
        if not report.is_noop:
            await db.run("rollup.audit", _audit, report=report, actor=actor)
        return report
    finally:
        if events_db is not None:
            await events_db.close()
        await db.close()


async def _audit(conn: asyncpg.Connection, *, report: RollupReport, actor: str) -> None:
    await audit.record(
        conn,
        actor=actor,
        action="rollup.dry_run" if report.dry_run else "rollup.run",
        subject=f"rollup_run:{report.run_id}",
        details=report_details(report),
    )
