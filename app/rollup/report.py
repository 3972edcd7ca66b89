"""What a rollup run reports: per day, and for the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any


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
    # Why each day was rolled: the plan's reasons, and "cascade" for the refreshed days.
    reasons: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_noop(self) -> bool:
        """Nothing was dirty or asked for: no statement of the rollup ran."""
        return not self.days

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
            "reasons": self.reasons,
            "top": self.top,
        }


def report_details(report: RollupReport) -> dict[str, Any]:
    """The report as plain JSON for audit rows and logs."""
    details = report.as_json()
    details.pop("top", None)
    return details
