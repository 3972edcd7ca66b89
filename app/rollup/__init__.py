"""Rollups: events and donations into daily metrics, trending scores and leaderboards.

`config` (settings and calendar), `plan` (which days a run rolls, and why), `store` (per-day
repository functions), `run` (the steps the real run and the dry run share), `report` (what a run
reports). docs/rollups.md describes the whole.
"""

from app.rollup.config import (
    DAY_PATTERN,
    DEFAULT_DAYS,
    FIRST_DAY,
    LAST_DAY,
    MAX_DAYS,
    MIN_DAYS,
    VIEW_CAP,
    RollupConfig,
    TrendingWeights,
    parse_day,
    parse_days,
    utc_today,
    window,
)
from app.rollup.plan import Reason, RollupPlan, plan_rollup
from app.rollup.report import RollupReport, report_details
from app.rollup.run import rollup_and_record, run_rollup

__all__ = [
    "DAY_PATTERN",
    "DEFAULT_DAYS",
    "FIRST_DAY",
    "LAST_DAY",
    "MAX_DAYS",
    "MIN_DAYS",
    "VIEW_CAP",
    "Reason",
    "RollupConfig",
    "RollupPlan",
    "RollupReport",
    "TrendingWeights",
    "parse_day",
    "parse_days",
    "plan_rollup",
    "report_details",
    "rollup_and_record",
    "run_rollup",
    "utc_today",
    "window",
]
