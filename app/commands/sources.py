"""`ingest sources`: register the partner sources allowed to import rules, and list them.

ingest sources add "Acme prompts" --curator usr_123      # prints the new source id
ingest sources list
ingest sources set-curator src_abc usr_456
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from app import audit
from app.commands._common import database_at, database_url
from app.crawl_sources import CrawlSource, assign_curator, list_sources, register_source
from app.settings import Settings

T = TypeVar("T")


async def _in_transaction(
    url: str, name: str, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    async with database_at(url) as db:
        return await db.run(name, work)


async def add_source(url: str, *, name: str, curator_id: str) -> str:
    """Register the source and audit it; return its id."""

    async def work(conn: asyncpg.Connection) -> str:
        source_id = await register_source(conn, name=name, curator_id=curator_id)
        await audit.record(
            conn,
            actor=audit.operator_actor(),
            action="crawl.source_added",
            subject=source_id,
            details={"name": name, "curatorId": curator_id},
        )
        return source_id

    return await _in_transaction(url, "sources.add", work)


async def set_curator(url: str, *, source_id: str, curator_id: str) -> None:
    async def work(conn: asyncpg.Connection) -> None:
        await assign_curator(conn, source_id=source_id, curator_id=curator_id)
        await audit.record(
            conn,
            actor=audit.operator_actor(),
            action="crawl.source_curator_set",
            subject=source_id,
            details={"curatorId": curator_id},
        )

    await _in_transaction(url, "sources.set_curator", work)


async def show_sources(url: str) -> list[CrawlSource]:
    return await _in_transaction(url, "sources.list", list_sources)


def format_sources(sources: list[CrawlSource]) -> str:
    if not sources:
        return "(no crawl sources; add one with `ingest sources add <name> --curator <userId>`)"
    lines = [f"{'id':<36} {'curator':<28} {'items':>7}  last item                  name"]
    for s in sources:
        last = s.last_item_at.isoformat(timespec="seconds") if s.last_item_at else "-"
        curator = s.curator_id or "(none: imports refused)"
        lines.append(f"{s.id:<36} {curator:<28} {s.items:>7}  {last:<26} {s.name}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    url = database_url(Settings())
    if args.action == "add":
        print(asyncio.run(add_source(url, name=args.name, curator_id=args.curator)))
    elif args.action == "set-curator":
        asyncio.run(set_curator(url, source_id=args.source_id, curator_id=args.curator_id))
        print(f"{args.source_id}: curator is now {args.curator_id}")
    else:
        print(format_sources(asyncio.run(show_sources(url))))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sources", help="crawl sources: add, list, set-curator")
    parser.set_defaults(func=_run, action="list")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    add = actions.add_parser("add", help="register a source; prints its id")
    add.add_argument("name", help="a unique, human-readable name")
    add.add_argument(
        "--curator", required=True, help="id of the user who authors the source's rules"
    )
    actions.add_parser("list", help="every source with its curator and item count")
    curate = actions.add_parser("set-curator", help="change who authors the source's new rules")
    curate.add_argument("source_id")
    curate.add_argument("curator_id")
