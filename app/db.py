"""Connections: the asyncpg pools, their codecs, and the unit-of-work runner."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson
from procrastinate.exceptions import ConnectorException

from app import logs, metrics
from app.errors import DatabaseMisconfigured, DatabaseUnavailable
from app.settings import Settings

logger = logging.getLogger("ingest.db")
T = TypeVar("T")

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
    (tests/integration/test_db.py keeps `sql/` to that)."""


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


@dataclass(frozen=True)
class Unit:
    """A named unit of database work and how it runs.

    `transaction=False` runs the work on a connection outside BEGIN (one statement is then its
    own transaction); `retry_on` adds errors after which the whole unit runs again, besides
    deadlocks and serialization failures (nothing of an aborted unit was written)."""

    name: str
    transaction: bool = True
    readonly: bool = False
    isolation: str | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    attempts: int = 3


# A deadlock or a serialization failure aborts the transaction as a whole: run it again.
RETRIABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)
RETRY_BACKOFF_S = 0.01


class Database:
    """One pool and the one way to use it: `await db.run(unit, work, **kwargs)`.

    Every unit acquires a connection within the acquire timeout, opens its transaction, calls
    `work(conn, **kwargs)` (a repository or domain function, which never opens transactions
    of its own), runs again after a deadlock or serialization failure, translates driver
    errors once (`DatabaseUnavailable`, `DatabaseMisconfigured`), and records its duration in
    `ingest_db_unit_duration_seconds{unit}` and its name in every log line written inside it
    (the `unit` field)."""

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout: float = 5.0) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self.faults = DatabaseFaults()

    async def run(self, unit: Unit | str, work: Callable[..., Awaitable[T]], /, **kwargs: Any) -> T:
        unit = Unit(unit) if isinstance(unit, str) else unit
        token = logs.current_unit.set(unit.name)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self._attempts(unit, work, kwargs)
            outcome = "ok"
            return result
        except MISCONFIGURATION_ERRORS as exc:
            self.faults.record(exc)
            raise DatabaseMisconfigured(MISCONFIGURATION_HINT) from exc
        except UNAVAILABLE_ERRORS as exc:
            raise DatabaseUnavailable() from exc
        finally:
            metrics.DB_UNIT_SECONDS.labels(unit.name, outcome).observe(
                time.perf_counter() - started
            )
            logs.current_unit.reset(token)

    async def _attempts(
        self, unit: Unit, work: Callable[..., Awaitable[T]], kwargs: dict[str, Any]
    ) -> T:
        retriable = RETRIABLE_ERRORS + unit.retry_on
        for attempt in range(1, unit.attempts):
            try:
                return await self._once(unit, work, kwargs)
            except retriable as exc:
                logger.info(
                    "unit of work aborted; running it again",
                    extra={"attempt": attempt, "error": type(exc).__name__},
                )
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
        return await self._once(unit, work, kwargs)

    async def _once(
        self, unit: Unit, work: Callable[..., Awaitable[T]], kwargs: dict[str, Any]
    ) -> T:
        async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
            if not unit.transaction:
                return await work(conn, **kwargs)
            async with conn.transaction(isolation=unit.isolation, readonly=unit.readonly):
                return await work(conn, **kwargs)

    async def ping(self) -> float:
        """Round-trip a trivial query within the acquire timeout; its latency in milliseconds.
        Driver errors are left as they are: /health tells an unreachable database from a
        misconfigured one."""
        started = time.perf_counter()
        async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
            await conn.fetchval("SELECT 1", timeout=self.acquire_timeout)
        return (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        await self.pool.close()
