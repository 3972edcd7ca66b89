"""Row factories for tests: callables with overridable defaults.

Users and rules belong to the site's main API, which writes them straight into the shared
tables; these factories do the same with plain INSERTs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from app.crawl_sources import register_source


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


async def create_user(
    conn: asyncpg.Connection | asyncpg.Pool, *, id: str | None = None, handle: str | None = None
) -> str:
    user_id = id or new_id("usr")
    await conn.execute(
        "INSERT INTO users (id, handle) VALUES ($1, $2)", user_id, handle or f"h-{user_id}"
    )
    return user_id


async def create_rule(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    author_id: str | None = None,
    id: str | None = None,
    title: str = "A useful rule",
    summary: str | None = None,
    tags: Sequence[str] = (),
    model: str | None = None,
) -> str:
    rule_id = id or new_id("rul")
    author = author_id or await create_user(conn)
    await conn.execute(
        "INSERT INTO rules (id, author_id, title, summary, tags, model) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        rule_id,
        author,
        title,
        summary,
        list(tags),
        model,
    )
    return rule_id


async def add_source(pool: asyncpg.Pool, name: str = "Acme prompts") -> tuple[str, str]:
    """A registered crawl source and its curator, as `ingest sources add` makes them."""
    curator = await create_user(pool)
    async with pool.acquire() as conn:
        source_id = await register_source(conn, name=name, curator_id=curator)
    return source_id, curator
