"""Rollups: events and donations into daily metrics, trending scores and leaderboards.

`config` (settings and calendar), `report` (what a run reports), `store` (per-day repository
functions), `run` (the run: stage, then apply). docs/rollups.md describes the whole.
"""

from app.rollup.config import (
    FIRST_DAY,
    LAST_DAY,
    VIEW_CAP,
    RollupConfig,
    TrendingWeights,
    parse_day,
    utc_today,
    window,
)
from app.rollup.report import RollupReport, report_details
from app.rollup.run import rollup_and_record, run_rollup

__all__ = [
    "FIRST_DAY",
    "LAST_DAY",
    "VIEW_CAP",
    "RollupConfig",
    "RollupReport",
    "TrendingWeights",
    "parse_day",
    "report_details",
    "rollup_and_record",
    "run_rollup",
    "utc_today",
    "window",
]
