"""Connections: the asyncpg pools, their codecs, and the unit-of-work runner."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from procrastinate.exceptions import ConnectorException

from app.errors import DatabaseUnavailable
from app.settings import Settings

logger = logging.getLogger("ingest.db")

# Errors that mean "the database cannot be reached right now", as opposed to a bad query.
# InternalClientError: a pooled connection lost mid-operation (the server stopped) is left in a
# protocol state where its reset on release raises "cannot switch to state ...; another
# operation is in progress" (seen as a 500 in tests/faults/test_database_restart.py).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    # Procrastinate's psycopg errors, its pool's timeout included (app/server.py bounds that
    # pool's wait by DB_ACQUIRE_TIMEOUT_S): a job defer that cannot reach the database.
    ConnectorException,
)


# Errors no statement of the service causes by itself, which then fail every statement alike:
# prepared statements behind a transaction pooler without support for them.
MISCONFIGURATION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidSQLStatementNameError,  # prepared statement "..." does not exist
    asyncpg.exceptions.DuplicatePreparedStatementError,  # prepared statement "..." already exists
)
MISCONFIGURATION_HINT = (
    "the database connection loses prepared statements: behind PgBouncer below 1.21, or any"
    " transaction pooler without prepared-statement support, set DB_STATEMENT_CACHE_SIZE=0"
)
# How long /health stays 503 after such an error (the misconfiguration does not heal itself).
MISCONFIGURATION_WINDOW_S = 60.0


class DatabaseFaults:
    """Misconfiguration errors seen by this process: logged once, and /health stays 503 while
    one was seen within MISCONFIGURATION_WINDOW_S."""

    def __init__(self) -> None:
        self.last_seen: float | None = None
        self.logged = False

    def record(self, exc: BaseException) -> None:
        self.last_seen = time.monotonic()
        if not self.logged:
            self.logged = True
            logger.error(MISCONFIGURATION_HINT, extra={"error": f"{type(exc).__name__}: {exc}"})

    def recent(self) -> bool:
        seen = self.last_seen
        return seen is not None and time.monotonic() - seen < MISCONFIGURATION_WINDOW_S


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Decode json and jsonb as Python objects instead of strings."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, schema="pg_catalog", encoder=_dumps, decoder=orjson.loads, format="text"
        )


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own rollback of an open transaction.

    asyncpg's default reset sends one more query per release (RESET ALL, UNLISTEN, advisory
    unlock, CLOSE ALL), a round trip that cost about 8 % of a worker's time on the intake path.
    The service leaves no session state behind: settings are transaction-local (`set_config(...,
    true)`), advisory locks are transaction-level, nothing listens or holds cursors on the pool
    (tests/test_db.py keeps `sql/` to that)."""


def configured_statement_cache_size() -> int:
    """DB_STATEMENT_CACHE_SIZE: 0 turns off asyncpg's named prepared statements, which a
    transaction pooler without prepared-statement support (PgBouncer below 1.21) breaks: the
    next transaction of the client may run on another server connection, where the statement
    does not exist."""
    return Settings().db_statement_cache_size


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 8,
    command_timeout: float = 30.0,
    server_settings: dict[str, str] | None = None,
    statement_cache_size: int | None = None,
) -> asyncpg.Pool:
    """Open an application pool with the project's codecs (every asyncpg pool of the service
    comes from here, so DB_STATEMENT_CACHE_SIZE applies to all of them)."""
    settings = {"application_name": "ingest", **(server_settings or {})}
    if statement_cache_size is None:
        statement_cache_size = configured_statement_cache_size()
    return await asyncpg.create_pool(
        dsn,
        min_size=min(min_size, max_size),
        max_size=max_size,
        command_timeout=command_timeout,
        init=init_connection,
        reset=keep_session,
        server_settings=settings,
        statement_cache_size=statement_cache_size,
    )


async def connect(dsn: str, **options: Any) -> asyncpg.Connection:
    """One connection outside the pools (migrations, operator commands, the search rebuild),
    with DB_STATEMENT_CACHE_SIZE like the pools."""
    options.setdefault("statement_cache_size", configured_statement_cache_size())
    return await asyncpg.connect(dsn, **options)


@asynccontextmanager
async def transaction(pool: asyncpg.Pool, *, timeout: float) -> AsyncIterator[asyncpg.Connection]:
    """One connection, one transaction; an unreachable database becomes `DatabaseUnavailable`."""
    try:
        async with pool.acquire(timeout=timeout) as conn, conn.transaction():
            yield conn
    except UNAVAILABLE_ERRORS as exc:
        raise DatabaseUnavailable() from exc


async def ping(pool: asyncpg.Pool, *, timeout: float) -> float:
    """Round-trip a trivial query; return its latency in milliseconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with pool.acquire(timeout=timeout) as conn:
        await conn.fetchval("SELECT 1", timeout=timeout)
    return (loop.time() - started) * 1000
