"""`events` partitioned by UTC day (migrations/0014, docs/scaling.md): the conversion of a table
with data, partitions at the accepted boundaries, the default partition and the task that makes
days ahead, retention by dropping days, idempotency keys unique across days, and their purge."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.client_ip import IpHasher
from app.events import MAX_AGE, MAX_FUTURE, EventIngestReport, ingest_batch, prepare_batch
from app.migrate import MIGRATIONS_DIR, migrate
from app.sql import queries
from tests.conftest import APP_HEADERS, drain_queue, make_settings
from tests.factories import create_rule, create_user

CONVERSION = "0014_events_partitioned"
COLUMNS = "id, type, rule_id, user_id, ip_hash, ts, idempotency_key, received_at"


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


async def partition_of(pool: asyncpg.Pool, where: str = "true") -> list[str]:
    rows = await pool.fetch(f"SELECT tableoid::regclass::text AS p FROM events WHERE {where}")
    return sorted(r["p"] for r in rows)


async def day_partitions(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass AND c.relname <> 'events_default' ORDER BY 1"
    )
    return [r["relname"] for r in rows]


def name_of(day: date) -> str:
    return f"events_{day:%Y%m%d}"


async def test_conversion_keeps_every_row_once(empty_db_url: str, tmp_path: Path) -> None:
    """Migrations up to the one before, rows of many days written to the unpartitioned table,
    then the conversion: the same rows (ids and values), each in its day's partition, the keys
    of the last 31 days in their table, the id sequence going on, the triggers noting changes."""
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.stem < CONVERSION:
            shutil.copy(path, before / path.name)
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn, directory=before)
        assert (
            await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'events'")
            == "r"
        )
        await conn.execute(
            "INSERT INTO users (id, handle) VALUES ('usr_a', 'a'), ('usr_b', 'b');"
            "INSERT INTO rules (id, author_id, title) SELECT 'rul_' || i, 'usr_a', 't' "
            "FROM generate_series(1, 5) i"
        )
        today = datetime.now(UTC).date()
        # 3000 events over 300 days ending tomorrow (every 2.4 hours, so some fall on midnight
        # exactly), with users, keys and missing IP hashes; then a few far in the past.
        await conn.execute(
            """
            INSERT INTO events (type, rule_id, user_id, ip_hash, ts, idempotency_key, received_at)
            SELECT (ARRAY['VIEW', 'COPY', 'SAVE', 'FORK', 'VOTE'])[1 + g % 5],
                   'rul_' || (1 + g % 5),
                   CASE WHEN g % 3 = 0 THEN 'usr_b' END,
                   CASE WHEN g % 7 <> 0 THEN md5(g::text) END,
                   $1::timestamptz - g * interval '144 minutes',
                   CASE WHEN g % 4 = 0 THEN 'key-' || g END,
                   $1::timestamptz - g * interval '144 minutes' + interval '3 seconds'
            FROM generate_series(0, 2999) g
            """,
            midnight(today + timedelta(days=2)),
        )
        await conn.execute(
            "INSERT INTO events (type, rule_id, ts) "
            "VALUES ('VOTE', 'rul_1', $1), ('VOTE', 'rul_2', $2)",
            datetime(2019, 5, 5, 5, 5, 5, tzinfo=UTC),
            datetime(2019, 5, 5, 23, 59, 59, 999999, tzinfo=UTC),
        )
        rows = await conn.fetch(f"SELECT {COLUMNS} FROM events ORDER BY id")
        assert len(rows) == 3002

        report = await migrate(conn)
        assert report.applied[0] == CONVERSION  # and any migration after it

        assert (
            await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'events'")
            == "p"
        )
        assert await conn.fetch(f"SELECT {COLUMNS} FROM events ORDER BY id") == rows
        misplaced = await conn.fetchval(
            "SELECT count(*) FROM events WHERE tableoid::regclass::text "
            "<> 'events_' || to_char((ts AT TIME ZONE 'UTC')::date, 'YYYYMMDD')"
        )
        assert misplaced == 0
        horizon = datetime.now(UTC) - timedelta(days=31)
        keys = {
            (r["key"], r["ts"])
            for r in await conn.fetch("SELECT key, ts FROM event_idempotency_keys")
        }
        expected = {
            (r["idempotency_key"], r["ts"])
            for r in rows
            if r["idempotency_key"] is not None and r["ts"] >= horizon
        }
        assert keys == expected and keys

        new_id = await conn.fetchval(
            "INSERT INTO events (type, rule_id, ts) VALUES ('COPY', 'rul_1', now()) RETURNING id"
        )
        assert new_id == max(r["id"] for r in rows) + 1
        await conn.execute("DELETE FROM events WHERE ts < '2020-01-01'")
        noted = await conn.fetchval(
            "SELECT array_agg(DISTINCT day) FROM rollup_fact_changes WHERE source = 'events'"
        )
        assert noted == [date(2019, 5, 5)]
        # The dirty-day view reads the partitioned table: every day with events up to tomorrow
        # (its calendar's end) is never rolled.
        dirty = await conn.fetchval("SELECT count(*) FROM rollup_dirty_days")
        days = await conn.fetchval(
            "SELECT count(DISTINCT (ts AT TIME ZONE 'UTC')::date) FROM events WHERE ts < $1",
            midnight(today + timedelta(days=2)),
        )
        assert dirty == days
        assert (await migrate(conn)).nothing_to_do
    finally:
        await conn.close()


async def test_events_at_the_accepted_edges_land_in_day_partitions(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """A migrated database already has the days intake can write to: the oldest accepted age
    and the allowed clock skew into the future both go to a day of their own."""
    rule = await create_rule(pool)
    now = datetime.now(UTC)
    oldest = now - MAX_AGE + timedelta(minutes=1)
    newest = now + MAX_FUTURE - timedelta(seconds=30)
    sent = [
        {"type": "VOTE", "ruleId": rule, "ts": iso(oldest)},
        {"type": "VOTE", "ruleId": rule, "ts": iso(newest)},
        {"type": "VOTE", "ruleId": rule},
    ]
    response = await http.post("/ingest/events", json={"events": sent}, headers=APP_HEADERS)
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert await partition_of(pool) == sorted(
        [name_of(oldest.date()), name_of(newest.date()), name_of(now.date())]
    )


async def test_a_midnight_belongs_to_the_day_it_starts(pool: asyncpg.Pool) -> None:
    rule = await create_rule(pool)
    today = datetime.now(UTC).date()
    await pool.execute(
        "INSERT INTO events (type, rule_id, ts) VALUES ('COPY', $1, $2), ('COPY', $1, $3)",
        rule,
        midnight(today),
        midnight(today) - timedelta(microseconds=1),
    )
    assert await partition_of(pool) == [name_of(today - timedelta(days=1)), name_of(today)]


async def test_without_day_partitions_nothing_is_refused_and_the_task_moves_the_rows(
    http: httpx.AsyncClient,
    pool: asyncpg.Pool,
    proc_app: Any,
    run_jobs: Callable[[], Awaitable[None]],
) -> None:
    """Every day partition gone (a worker that never ran the task): intake still stores the
    events, in the default partition; the hourly task then creates the days and moves them."""
    assert await pool.fetchval("SELECT events_drop_partitions_before('infinity')") == 0
    assert await day_partitions(pool) == []
    rule = await create_rule(pool)
    now = datetime.now(UTC)
    sent = [
        {"type": "FORK", "ruleId": rule, "ts": iso(now - MAX_AGE + timedelta(minutes=1))},
        {"type": "FORK", "ruleId": rule, "ts": iso(now + MAX_FUTURE - timedelta(seconds=30))},
        {"type": "SAVE", "ruleId": rule, "idempotencyKey": "k-default"},
    ]
    response = await http.post("/ingest/events", json={"events": sent}, headers=APP_HEADERS)
    assert response.json()["accepted"] == 3
    assert await partition_of(pool) == ["events_default"] * 3
    stored = await pool.fetch(f"SELECT {COLUMNS} FROM events ORDER BY id")

    await proc_app.configure_task("ensure_event_partitions").defer_async()
    await run_jobs()
    today = now.date()
    assert await day_partitions(pool) == [name_of(today + timedelta(days=n)) for n in range(-31, 8)]
    assert await pool.fetch(f"SELECT {COLUMNS} FROM events ORDER BY id") == stored
    assert "events_default" not in await partition_of(pool)
    # Idempotent: a second run creates nothing.
    assert await pool.fetchval("SELECT events_ensure_partitions($1, $2)", today, today) == 0


async def test_retention_drops_whole_days_and_old_rows_of_the_default(
    db_url: str, pool: asyncpg.Pool, proc_app: Any
) -> None:
    rule = await create_rule(pool)
    today = datetime.now(UTC).date()
    await pool.execute("SELECT events_ensure_partitions($1, $2)", today - timedelta(days=50), today)
    ages = (1, 35, 39, 45, 90)  # 90 days: no partition, the default one holds it
    await pool.executemany(
        "INSERT INTO events (type, rule_id, ts) VALUES ('VIEW', $1, $2)",
        [(rule, midnight(today) - timedelta(days=d) + timedelta(hours=12)) for d in ages],
    )
    assert (await partition_of(pool)).count("events_default") == 1
    settings = make_settings(db_url, event_retention_days=40)
    await proc_app.configure_task("purge_old_events").defer_async()
    await drain_queue(proc_app, pool, settings)

    kept = await pool.fetch("SELECT ts FROM events ORDER BY ts")
    assert [(today - r["ts"].date()).days for r in kept] == [39, 35, 1]
    # Whole days older than the horizon are gone as tables; the day it cuts stays.
    assert min(await day_partitions(pool)) == name_of(today - timedelta(days=40))
    gone = name_of(today - timedelta(days=45))
    assert await pool.fetchval("SELECT to_regclass($1)", gone) is None
    assert await pool.fetchval("SELECT count(*) FROM events_default") == 0


async def test_days_that_ended_are_vacuumed_so_that_their_count_reads_the_index_alone(
    pool: asyncpg.Pool,
    proc_app: Any,
    run_jobs: Callable[[], Awaitable[None]],
) -> None:
    """Views written yesterday and today: the hourly task vacuums yesterday's partition (every
    page all-visible: the day's count is an index-only scan without a heap fetch), not today's,
    and has nothing left to do on a second run."""
    rule = await create_rule(pool)
    today = datetime.now(UTC).date()
    yesterday = name_of(today - timedelta(days=1))
    async with pool.acquire() as conn:
        for day, n in ((today - timedelta(days=1), 3000), (today, 50)):
            await conn.execute(
                "INSERT INTO events (type, rule_id, ip_hash, ts) "
                "SELECT 'VIEW', $1, md5((g % 97)::text), $2::timestamptz + g * interval '1 second' "
                "FROM generate_series(1, $3::int) g",
                rule,
                midnight(day),
                n,
            )
        await conn.execute("SELECT pg_stat_force_next_flush()")
    await pool.execute("SELECT 1")  # the inserting session is idle: its statistics are in
    await asyncio.sleep(0.1)
    assert yesterday in await _vacuum_candidates(pool, today)

    await proc_app.configure_task("vacuum_closed_event_days").defer_async()
    await run_jobs()

    assert await _vacuum_candidates(pool, today) == []
    pages, visible = await pool.fetchrow(
        "SELECT relpages, relallvisible FROM pg_class WHERE relname = $1", yesterday
    )
    assert pages > 0 and visible == pages
    today_vacuumed = await pool.fetchval(
        "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = $1", name_of(today)
    )
    assert today_vacuumed is None
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;"
            "SET LOCAL enable_sort = off"  # a small table: show the plan of a large one
        )
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM rollup_rule_counts_of_day($1, 5)",
                today - timedelta(days=1),
            )
        )
    assert "Index Only Scan" in plan and "Heap Fetches: 0" in plan, plan
    assert (
        await pool.fetchval(
            "SELECT views FROM rollup_rule_counts_of_day($1, 5)", today - timedelta(days=1)
        )
        == 97 * 5
    )  # 97 clients, each in more than five 10-minute slots: capped


async def _vacuum_candidates(pool: asyncpg.Pool, today: date) -> list[str]:
    async with pool.acquire() as conn:
        rows = queries.events_closed_days_to_vacuum(
            conn, first_day=today - timedelta(days=31), before_day=today
        )
        return [r["partition"] async for r in rows]


async def _ingest(conn: asyncpg.Connection, events: list[dict[str, Any]]) -> EventIngestReport:
    batch = prepare_batch(
        events, now=datetime.now(UTC), request_ip_hash="h", hasher=IpHasher("test-secret")
    )
    return await ingest_batch(conn, batch=batch, actor="test", request_id=None)


async def _wait_until_blocked(pool: asyncpg.Pool, pid: int) -> None:
    for _ in range(200):
        waiting = await pool.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the second batch never waited for the first one's key")


async def test_a_key_is_unique_across_days_even_between_concurrent_batches(
    pool: asyncpg.Pool,
) -> None:
    """Two copies of one key with times 10 days apart (two partitions), the second sent while
    the first is not committed yet: it waits, then is a duplicate; after a rollback instead,
    it is stored."""
    rule = await create_rule(pool)
    now = datetime.now(UTC)
    for outcome in ("commit", "rollback"):
        key = f"key-{outcome}"
        first = {"type": "SAVE", "ruleId": rule, "idempotencyKey": key, "ts": iso(now)}
        second = {**first, "ts": iso(now - timedelta(days=10))}
        async with pool.acquire() as a, pool.acquire() as b:
            tx = a.transaction()
            await tx.start()
            assert (await _ingest(a, [first])).accepted == 1
            racing = asyncio.create_task(_ingest(b, [second]))
            await _wait_until_blocked(pool, b.get_server_pid())
            await (tx.commit() if outcome == "commit" else tx.rollback())
            report = await racing
        stored = await pool.fetch("SELECT ts FROM events WHERE idempotency_key = $1", key)
        keys = await pool.fetchval(
            "SELECT count(*) FROM event_idempotency_keys WHERE key = $1", key
        )
        assert len(stored) == 1 and keys == 1
        if outcome == "commit":
            assert (report.accepted, report.duplicates) == (0, 1)
            assert stored[0]["ts"] == now
        else:
            assert (report.accepted, report.duplicates) == (1, 0)


async def test_a_keyed_copy_with_an_unknown_rule_is_still_a_duplicate(pool: asyncpg.Pool) -> None:
    rule = await create_rule(pool)
    user = await create_user(pool)
    async with pool.acquire() as conn:
        event = {"type": "VOTE", "ruleId": rule, "userId": user, "idempotencyKey": "k-1"}
        assert (await _ingest(conn, [event])).accepted == 1
        copy = {**event, "ruleId": "rul_gone", "userId": "usr_gone"}
        report = await _ingest(conn, [copy])
    assert (report.accepted, report.duplicates, report.rejected) == (0, 1, [])


async def test_purge_forgets_keys_only_once_no_copy_can_be_accepted(
    http: httpx.AsyncClient,
    pool: asyncpg.Pool,
    proc_app: Any,
    run_jobs: Callable[[], Awaitable[None]],
) -> None:
    rule = await create_rule(pool)
    now = datetime.now(UTC)
    await pool.execute(
        "INSERT INTO event_idempotency_keys (key, ts) VALUES ('old', $1), ('edge', $2), "
        "('recent', $3)",
        now - MAX_AGE - timedelta(days=2),
        now - MAX_AGE - timedelta(hours=12),  # within the day of margin: kept
        now - timedelta(days=10),
    )
    await proc_app.configure_task("purge_event_state").defer_async()
    await run_jobs()
    keys = [r["key"] for r in await pool.fetch("SELECT key FROM event_idempotency_keys ORDER BY 1")]
    assert keys == ["edge", "recent"]
    details = await pool.fetchval(
        "SELECT details FROM audit_log WHERE action = 'events.purge' ORDER BY id DESC LIMIT 1"
    )
    assert details["idempotency_keys"] == 1
    copy = {"type": "SAVE", "ruleId": rule, "idempotencyKey": "recent"}
    response = await http.post("/ingest/events", json={"events": [copy]}, headers=APP_HEADERS)
    assert response.json()["duplicates"] == 1
