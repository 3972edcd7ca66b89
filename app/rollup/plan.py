"""Which days a rollup run rolls, and why: the one planning every entry point goes through.

The nightly task, the refresh every few minutes, `POST /cron/rollup` (its dry run included),
`procrastinate defer rollup` and `ingest rollup` differ only in the days they ask for. Every run
also rolls each *dirty* day (the view `rollup_dirty_days`: never rolled, or holding events or
donation changes newer than the facts its numbers were computed from), so whatever entry point
runs next, the numbers converge to the stored facts. The days whose trending and boards read a
changed day (every later rolled day: the ALL_TIME boards read them all) are found during the run,
once the new counts are staged, and refreshed in the same run (`Reason.CASCADE`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

import asyncpg

from app.rollup.config import RollupConfig, retention_floor
from app.sql import queries


class Reason(StrEnum):
    """Why a day is rolled; stored in `rollup_days.reasons` and `rollup_runs.day_reasons`."""

    SCHEDULE = "schedule"  # the nightly run's days
    OPERATOR = "operator"  # asked for by HTTP, a shell defer or the CLI
    NEVER_ROLLED = "never_rolled"  # a day from the first fact to today without numbers yet
    EVENTS = "events"  # events received after the day was rolled
    DONATIONS = "donations"  # donations created that day changed after it was rolled
    CASCADE = "cascade"  # trending and boards only: reads a day whose counts changed


@dataclass(frozen=True)
class DirtyDay:
    day: date
    reasons: tuple[Reason, ...]
    changed_since: datetime | None


@dataclass
class RollupPlan:
    """Days to roll (counts, trending, boards) with their reasons, and days left alone because
    their events may already be purged (EVENT_RETENTION_DAYS)."""

    reasons: dict[date, list[Reason]] = field(default_factory=dict)
    skipped: list[date] = field(default_factory=list)

    @property
    def days(self) -> list[date]:
        return sorted(self.reasons)

    @property
    def is_empty(self) -> bool:
        return not self.reasons

    def reasons_json(self) -> dict[str, list[str]]:
        return {d.isoformat(): [str(r) for r in self.reasons[d]] for d in self.days}


async def dirty_days(conn: asyncpg.Connection) -> list[DirtyDay]:
    """The days whose numbers do not include every stored fact yet, oldest first."""
    return [
        DirtyDay(r["day"], tuple(Reason(x) for x in r["reasons"]), r["changed_since"])
        async for r in queries.rollup_dirty_days(conn)
    ]


def merge_plan(
    *,
    requested: Iterable[date],
    reason: Reason,
    dirty: Iterable[DirtyDay],
    config: RollupConfig,
    today: date,
) -> RollupPlan:
    """The requested days (with `reason`) and the dirty ones (with theirs), less the days older
    than the retention floor."""
    wanted: dict[date, list[Reason]] = {}
    for day in requested:
        wanted.setdefault(day, []).append(reason)
    for found in dirty:
        wanted.setdefault(found.day, []).extend(found.reasons)
    floor = retention_floor(config, today)
    plan = RollupPlan()
    for day in sorted(wanted):
        if floor is not None and day < floor:
            plan.skipped.append(day)
        else:
            plan.reasons[day] = list(dict.fromkeys(wanted[day]))
    return plan


async def plan_rollup(
    conn: asyncpg.Connection,
    *,
    requested: Iterable[date],
    reason: Reason,
    config: RollupConfig,
    today: date,
) -> RollupPlan:
    """Read the dirty days and merge them with the requested ones."""
    dirty = await dirty_days(conn)
    return merge_plan(requested=requested, reason=reason, dirty=dirty, config=config, today=today)
