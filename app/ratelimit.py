"""Token-bucket rate limits per client: the app token's identity plus the client IP.

A limit of N requests per minute is a bucket of N tokens refilled at N/60 per second, so a
client may burst N requests and then sustain one every 60/N seconds. Two backends:

- `MemoryRateLimiter` (default): per process, no I/O; with several workers or instances each
  keeps its own buckets, so the effective limit is N times the number of processes.
- `PostgresRateLimiter`: one atomic upsert on an unlogged table per request; the limit holds
  across processes and instances, for the cost of one round trip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from app.db import Database, Unit
from app.sql import queries

# A memory store holding more buckets than this drops the idle (already full) ones.
MEMORY_MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class Decision:
    """The outcome of one request against a limit, and what its headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until the next request is allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        values = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            values["Retry-After"] = str(self.retry_after_s)
        return values


def decide(allowed: bool, tokens: float, limit: int) -> Decision:
    """The decision for a bucket left with `tokens` after this request."""
    per_second = limit / 60
    tokens = max(0.0, min(float(limit), tokens))
    return Decision(
        allowed=allowed,
        limit=limit,
        remaining=math.floor(tokens),
        reset_s=math.ceil((limit - tokens) / per_second),
        retry_after_s=0 if allowed else max(1, math.ceil((1 - tokens) / per_second)),
    )


class RateLimiter(Protocol):
    async def take(self, key: str, limit: int) -> Decision: ...


class MemoryRateLimiter:
    """Buckets in this process's memory."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, key: str, limit: int) -> Decision:
        now = self._clock()
        tokens, updated = self._buckets.get(key, (float(limit), now))
        tokens = min(float(limit), tokens + (now - updated) * limit / 60)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        if len(self._buckets) >= MEMORY_MAX_BUCKETS and key not in self._buckets:
            self._drop_full(now, limit)
        self._buckets[key] = (tokens, now)
        return decide(allowed, tokens, limit)

    def _drop_full(self, now: float, limit: int) -> None:
        """Forget buckets idle for a minute or more: they have refilled completely."""
        idle = [k for k, (_, updated) in self._buckets.items() if now - updated >= 60]
        for k in idle:
            del self._buckets[k]


class PostgresRateLimiter:
    """Buckets in the unlogged `rate_limit_buckets` table, shared by every process."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def take(self, key: str, limit: int) -> Decision:
        row = await self._db.run(TAKE, _take, key=key, limit=limit)
        return decide(row["allowed"], row["tokens"], limit)


# One statement, its own transaction.
TAKE = Unit("ratelimit.take", transaction=False)


async def _take(conn: asyncpg.Connection, *, key: str, limit: int) -> asyncpg.Record:
    return await queries.ratelimit_take(conn, key=key, capacity=limit, per_second=limit / 60)


async def purge_idle_buckets(conn: asyncpg.Connection, *, idle_seconds: int = 120) -> int:
    """Delete PostgreSQL buckets that have refilled completely (no effect on any limit)."""
    return int(await queries.ratelimit_purge_idle(conn, idle_seconds=idle_seconds))
