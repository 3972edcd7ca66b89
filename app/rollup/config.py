"""Rollup settings and calendar: what a run needs from the settings, the days it may cover."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from app.errors import ConfigurationError
from app.settings import Settings

# The original service's cap: at most this many views per (client IP, rule, UTC day).
VIEW_CAP = 5
# Days a rollup can be asked for, by HTTP, job or CLI: none before the site, and room for the
# date arithmetic of windows and horizons (Python dates end at 9999-12-31).
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(9999, 12, 1)
# FIRST_DAY..LAST_DAY as YYYY-MM-DD text (with a calendar check, format "date", it is exact):
# the published contract states the range this way, JSON Schema has no date bounds.
DAY_PATTERN = (
    r"^(?:(?:[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-[0-9]{2}-[0-9]{2}"
    r"|9999-(?:0[0-9]|1[01])-[0-9]{2}|9999-12-01)$"
)
EVENT_TYPES = ("view", "copy", "save", "fork", "vote")
# How many days ending on a date an operator may ask for, the same for HTTP (`daysToProcess`), the
# `rollup` job (`days`) and `ingest rollup --days`. Changed days beyond them are found and rolled
# by every run anyway (app.rollup.plan).
MIN_DAYS = 1
MAX_DAYS = 30
DEFAULT_DAYS = 7
DRY_RUN_TOP = 5


def parse_day(text: str) -> date:
    """A rollup's last day from YYYY-MM-DD text; ValueError, saying why, for anything else."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"date must be YYYY-MM-DD, got {text!r}") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"date must be between {FIRST_DAY} and {LAST_DAY}, got {text!r}")
    return day


def parse_days(value: object) -> int:
    """How many days a rollup covers; ValueError, saying the range, for anything else."""
    if type(value) is not int or not MIN_DAYS <= value <= MAX_DAYS:
        raise ValueError(
            f"days must be a whole number from {MIN_DAYS} to {MAX_DAYS}, got {value!r}"
        )
    return value


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
    facts_margin_s: float

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
            facts_margin_s=settings.rollup_facts_margin_s,
        )

    def trend_params(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon_days,
            "half_life": self.half_life_days,
            **self.weights.as_params(),
        }


def utc_today() -> date:
    return datetime.now(UTC).date()


def window(end_day: date, days: int) -> list[date]:
    """The `days` days ending on `end_day`, oldest first."""
    return [end_day - timedelta(days=n) for n in range(days - 1, -1, -1)]


def retention_floor(config: RollupConfig, today: date) -> date | None:
    """The oldest day whose events are all still kept; older days must not be re-rolled."""
    return _floor(config.retention_days, today)


def retention_floor_of(settings: Settings, today: date) -> date | None:
    """`retention_floor` straight from the settings (no other setting is read)."""
    return _floor(settings.event_retention_days, today)


def _floor(retention_days: int, today: date) -> date | None:
    if retention_days <= 0:
        return None
    return today - timedelta(days=retention_days - 1)
