"""Crawl figures: items per second imported through the service, in batches of 200."""

from __future__ import annotations

import asyncio
import uuid

from app.crawl import MAX_ITEMS
from app.crawl_sources import register_source
from bench.harness import TOKEN, Service, connected, query_value, run_wrk


async def _register(db_url: str) -> str:
    async with connected(db_url) as conn:
        return await register_source(
            conn, name=f"bench partner {uuid.uuid4().hex[:8]}", curator_id="usr_1"
        )


def count_items(db_url: str) -> int:
    return int(query_value(db_url, "SELECT count(*) FROM crawl_items"))


def import_batches(
    svc: Service, db_url: str, *, connections: int, seconds: int, batch: int = MAX_ITEMS
) -> dict[str, float]:
    """New items only (each creates a crawl item and its rule): items/s answered and stored."""
    source = asyncio.run(_register(db_url))
    before = count_items(db_url)
    figures = run_wrk(
        svc.url,
        script="crawl.lua",
        connections=connections,
        seconds=seconds,
        env={
            "BENCH_TOKEN": TOKEN,
            "BENCH_SOURCE": source,
            "BENCH_BATCH": str(batch),
            "BENCH_RUN": uuid.uuid4().hex[:8],
        },
    )
    stored = count_items(db_url) - before
    duration = figures["duration_s"]
    figures["items_per_s"] = (figures["requests"] - figures["errors_status"]) * batch / duration
    figures["items_stored_per_s"] = stored / duration
    return figures
