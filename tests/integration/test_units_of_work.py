"""The unit-of-work runner (app/db.py `Database.run`) on a real pool: one transaction per unit,
the retry of a transaction PostgreSQL aborted, driver errors translated once, and the unit's
name in its metric and its log lines."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY

from app.db import Database, Unit, create_pool
from app.errors import DatabaseUnavailable
from app.logs import JsonFormatter


async def _count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'unit.test'"))


async def _write(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, details) VALUES ('test', 'unit.test', '{}')"
    )


def _observed(unit: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "ingest_db_unit_duration_seconds_count", {"unit": unit, "outcome": outcome}
    )
    return value or 0.0


async def test_a_deadlock_between_two_units_is_retried_and_both_commit(pool: asyncpg.Pool) -> None:
    """Two units lock two rows in opposite orders: PostgreSQL aborts one with a deadlock, the
    runner runs it again, and both units' writes are there once."""
    await pool.execute(
        "INSERT INTO users (id, handle) VALUES ('usr_dl_a', 'a'), ('usr_dl_b', 'b') "
        "ON CONFLICT DO NOTHING"
    )
    db = Database(pool)
    both_hold_one = asyncio.Barrier(2)
    attempts: list[str] = []

    def crossing(first: str, second: str):  # type: ignore[no-untyped-def]
        async def work(conn: asyncpg.Connection) -> None:
            attempts.append(first)
            await conn.execute("UPDATE users SET id = id WHERE id = $1", first)
            if len(attempts) <= 2:
                await both_hold_one.wait()
            await conn.execute("UPDATE users SET id = id WHERE id = $1", second)
            await _write(conn)

        return work

    before = _observed("test.crossing", "ok")
    await asyncio.gather(
        db.run("test.crossing", crossing("usr_dl_a", "usr_dl_b")),
        db.run("test.crossing", crossing("usr_dl_b", "usr_dl_a")),
    )
    assert len(attempts) == 3  # one of the two ran again
    assert await _count(pool) == 2
    assert _observed("test.crossing", "ok") == before + 2


async def test_a_failing_unit_rolls_back_whole(pool: asyncpg.Pool) -> None:
    async def write_then_fail(conn: asyncpg.Connection) -> None:
        await _write(conn)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await Database(pool).run("test.fails", write_then_fail)
    assert await _count(pool) == 0
    assert _observed("test.fails", "error") >= 1


async def test_a_unit_without_a_transaction_runs_outside_begin(pool: asyncpg.Pool) -> None:
    async def in_transaction(conn: asyncpg.Connection) -> bool:
        return conn.is_in_transaction()

    db = Database(pool)
    assert await db.run("test.tx", in_transaction) is True
    assert await db.run(Unit("test.no_tx", transaction=False), in_transaction) is False


async def test_an_unreachable_database_is_database_unavailable(db_url: str) -> None:
    pool = await create_pool(db_url, min_size=0, max_size=1)
    await pool.close()
    closed = Database(pool)

    async def anything(conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT 1"))

    with pytest.raises(DatabaseUnavailable):
        await closed.run("test.closed", anything)


async def test_every_log_line_inside_a_unit_names_it(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    async def log_something(conn: asyncpg.Connection) -> None:
        logging.getLogger("ingest.test").warning("inside")

    with caplog.at_level(logging.WARNING, logger="ingest.test"):
        await Database(pool).run("test.logged", log_something)
        logging.getLogger("ingest.test").warning("outside")
    inside, outside = (orjson.loads(JsonFormatter().format(r)) for r in caplog.records)
    assert inside["unit"] == "test.logged"
    assert "unit" not in outside
