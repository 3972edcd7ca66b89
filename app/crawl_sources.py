"""Crawl sources: the partners registered by operators (`ingest sources add`) and the curator
whose user authors each source's rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from app.errors import BadRequest, NotFound, SourceNameTaken, UnknownSource
from app.sql import queries

MAX_SOURCE_NAME_CHARS = 200


@dataclass(frozen=True)
class CrawlSource:
    id: str
    name: str
    curator_id: str | None
    created_at: datetime
    items: int
    last_item_at: datetime | None


async def register_source(conn: asyncpg.Connection, *, name: str, curator_id: str) -> str:
    """Register a partner source whose rules `curator_id` authors; return its id."""
    name = " ".join(name.split())
    if not name or len(name) > MAX_SOURCE_NAME_CHARS:
        raise BadRequest(f"a source name must be 1 to {MAX_SOURCE_NAME_CHARS} characters")
    await _require_user(conn, curator_id)
    source_id = await queries.crawl_insert_source(conn, name=name, curator_id=curator_id)
    if source_id is None:
        raise SourceNameTaken(f"a crawl source named {name!r} already exists")
    return str(source_id)


async def assign_curator(conn: asyncpg.Connection, *, source_id: str, curator_id: str) -> None:
    """Make `curator_id` the author of the source's future rules (existing ones keep theirs)."""
    await _require_user(conn, curator_id)
    if await queries.crawl_set_curator(conn, source_id=source_id, curator_id=curator_id) is None:
        raise UnknownSource(f"unknown crawl source {source_id!r}")


async def list_sources(conn: asyncpg.Connection) -> list[CrawlSource]:
    return [CrawlSource(**dict(row)) async for row in queries.crawl_list_sources(conn)]


async def _require_user(conn: asyncpg.Connection, user_id: str) -> None:
    if not await queries.crawl_user_exists(conn, user_id=user_id):
        raise NotFound(f"no user {user_id!r}: the curator must be an existing user id")
