"""`ingest rollup`: run the rollup in this process, or show what it would write.

ingest rollup --date 2026-01-31 --days 7
ingest rollup --days 2 --dry-run
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json

from app import rollup
from app.commands._common import database_url
from app.settings import Settings


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _day(text: str) -> dt.date:
    try:
        return rollup.parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    from app.rollup import rollup_and_record

    settings = Settings()
    settings = settings.model_copy(update={"database_url": database_url(settings)})
    report = asyncio.run(
        rollup_and_record(
            settings,
            end_day=args.date or rollup.utc_today(),
            days=args.days,
            backfill=args.backfill,
            actor=_actor(),
            dry_run=args.dry_run,
        )
    )
    print(json.dumps(report.as_json(), indent=2, default=str))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rollup", help="roll events and donations up into metrics, trending and leaderboards"
    )
    parser.add_argument("--date", type=_day, default=None, help="last day (default: today, UTC)")
    parser.add_argument("--days", type=int, default=7, help="days ending on --date (default 7)")
    parser.add_argument(
        "--dry-run", action="store_true", help="compute, print, and roll everything back"
    )
    parser.add_argument(
        "--backfill", action="store_true", help="also roll missing days of the last 30"
    )
    parser.set_defaults(func=_run)
