"""`ingest rollup`: run the rollup in this process, show what it would write, or how fresh it is.

ingest rollup --date 2026-01-31 --days 7
ingest rollup --days 2 --dry-run
ingest rollup --refresh          # only the dirty days, as the schedule does every 5 minutes
ingest rollup --status           # dirty days and the last runs
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
from typing import Any

import asyncpg

from app import audit, rollup
from app.commands._common import command_db, database_url
from app.db import Unit
from app.rollup.plan import dirty_days
from app.settings import Settings
from app.sql import queries

STATUS_RUNS = 5


def _day(text: str) -> dt.date:
    try:
        return rollup.parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _days(text: str) -> int:
    try:
        return rollup.parse_days(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from {rollup.MIN_DAYS} to {rollup.MAX_DAYS}, got {text!r}"
        ) from None


def _settings() -> Settings:
    settings = Settings()
    return settings.model_copy(update={"database_url": database_url(settings)})


def _run(args: argparse.Namespace) -> int:
    # The report is printed on stdout; the run's own "rollup finished" log line (for workers,
    # whose reports nobody prints) would say it all a second time on stderr.
    logging.getLogger("ingest.rollup").setLevel(logging.WARNING)
    if args.status:
        print(json.dumps(asyncio.run(_status(_settings())), indent=2, default=str))
        return 0
    report = asyncio.run(
        rollup.rollup_and_record(
            _settings(),
            end_day=args.date or rollup.utc_today(),
            days=0 if args.refresh else args.days,
            actor=audit.operator_actor(),
            dry_run=args.dry_run,
        )
    )
    print(json.dumps(report.as_json(), indent=2, default=str))
    return 0


# Reads only.
STATUS_READS = Unit("rollup.status", transaction=False)


async def _recent_runs(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) async for r in queries.rollup_recent_runs(conn, limit_=STATUS_RUNS)]


async def _status(settings: Settings) -> dict[str, Any]:
    """The dirty days (what the next run will roll, and why) and the last runs."""
    async with command_db(settings, max_size=1) as db:
        dirty = await db.run(STATUS_READS, dirty_days)
        runs = await db.run(STATUS_READS, _recent_runs)
    return {
        "dirtyDays": [
            {"day": d.day, "reasons": list(d.reasons), "changedSince": d.changed_since}
            for d in dirty
        ],
        "lastRuns": runs,
    }


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rollup", help="roll events and donations up into metrics, trending and leaderboards"
    )
    parser.add_argument("--date", type=_day, default=None, help="last day (default: today, UTC)")
    parser.add_argument(
        "--days",
        type=_days,
        default=rollup.DEFAULT_DAYS,
        help=f"days ending on --date, {rollup.MIN_DAYS} to {rollup.MAX_DAYS} "
        f"(default {rollup.DEFAULT_DAYS}); every dirty day is rolled too",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="compute, print, and roll everything back"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--refresh", action="store_true", help="only the dirty days (what the schedule runs)"
    )
    what.add_argument(
        "--status", action="store_true", help="print the dirty days and the last runs, roll nothing"
    )
    parser.add_argument(
        "--backfill",
        action="store_true",
        help="kept for older scripts: every run already includes the dirty days",
    )
    parser.set_defaults(func=_run)
