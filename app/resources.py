"""What every entry point shares: settings, the database, the queue, the IP hasher and the rate
limiter, built once per process and handed to the HTTP app (`app.ctx.res`), the worker (its
additional context) and the operator commands alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from procrastinate import App

from app.client_ip import IpHasher
from app.db import Database, create_pool
from app.events import load_ip_hasher
from app.queue import Queue
from app.ratelimit import MemoryRateLimiter, PostgresRateLimiter, RateLimiter
from app.settings import Settings


@dataclass
class Resources:
    settings: Settings
    db: Database
    queue: Queue
    rate_limiter: RateLimiter
    _ip_hasher: IpHasher | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings, *, pool: asyncpg.Pool, jobs: App) -> Resources:
        """The resources on an open pool and a Procrastinate app (opened by the caller)."""
        db = Database(pool, acquire_timeout=settings.db_acquire_timeout_s)
        limiter: RateLimiter = (
            PostgresRateLimiter(db)
            if settings.rate_limit_backend == "postgres"
            else MemoryRateLimiter()
        )
        return cls(settings=settings, db=db, queue=Queue(jobs, db), rate_limiter=limiter)

    async def ip_hasher(self) -> IpHasher:
        """The hasher keyed by IP_HASH_SECRET, else by the secret the service keeps in its
        database, loaded on first use so that start-up does not need the database."""
        if self._ip_hasher is None:
            override = self.settings.ip_hash_secret
            self._ip_hasher = await load_ip_hasher(
                self.db, override=override.get_secret_value() if override else None
            )
        return self._ip_hasher


async def open_worker_resources(
    settings: Settings, *, jobs: App, max_size: int | None = None
) -> Resources:
    """A worker's resources: a pool sized for its concurrency, on DATABASE_URL."""
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set for this worker")
    pool = await create_pool(
        settings.database_url, max_size=max_size or settings.worker_concurrency + 1
    )
    return Resources.build(settings, pool=pool, jobs=jobs)
