"""Helpers shared by operator sub-commands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from app.db import Database, create_pool
from app.local_service import resolve_database_url
from app.settings import Settings


def database_url(settings: Settings) -> str:
    """DATABASE_URL, else the URL of the local service running beside this checkout, else a
    ConfigurationError naming both (app/local_service.py)."""
    return resolve_database_url(settings)


def command_db(settings: Settings, *, max_size: int = 2) -> AbstractAsyncContextManager[Database]:
    """A small pool for one operator command, on `database_url`, closed when it ends."""
    return database_at(
        database_url(settings), max_size=max_size, acquire_timeout=settings.db_acquire_timeout_s
    )


@asynccontextmanager
async def database_at(
    url: str, *, max_size: int = 1, acquire_timeout: float = 5.0
) -> AsyncIterator[Database]:
    pool = await create_pool(url, min_size=1, max_size=max_size)
    db = Database(pool, acquire_timeout=acquire_timeout)
    try:
        yield db
    finally:
        await db.close()
