"""`ingest demo`: the demo catalogue (users, rules with tags and models, a crawl source), and
with `--activity` a week of events, three donations and one rollup (app/demo.py).

ingest demo                 # the catalogue only
ingest demo --activity      # and the activity the docs' examples read (what `make demo` loads)
ingest demo --force         # even into a database holding users or rules of its own
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from app import demo
from app.commands._common import command_db
from app.local_service import operator_settings, resolve_database_url
from app.settings import Settings


async def _load(settings: Settings, *, activity: bool, force: bool) -> demo.DemoReport:
    async with command_db(settings) as db:
        return await demo.load_demo(db, settings, activity=activity, force=force)


def _run(args: argparse.Namespace) -> int:
    # The demo prints what it loaded; its rollup's "rollup finished" log line would repeat it.
    logging.getLogger("ingest.rollup").setLevel(logging.WARNING)
    settings, _ = operator_settings(Settings())
    settings = settings.model_copy(update={"database_url": resolve_database_url(settings)})
    report = asyncio.run(_load(settings, activity=args.activity, force=args.force))
    print("\n".join(report.lines()))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="load a small demo catalogue (and, with --activity, a week of activity)"
    )
    parser.add_argument(
        "--activity",
        action="store_true",
        help="also a week of events, three donations and one rollup over them",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="load even into a database holding users or rules that are not the demo's",
    )
    parser.set_defaults(func=_run)
