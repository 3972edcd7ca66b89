"""ROLLUP_DATABASE_URL on a real hot standby (docs/scaling.md, docs/rollups.md).

A private primary cluster and a standby made from it with `pg_basebackup -R -X stream` (same
installation, so the same major version), migrated and loaded on the primary only: everything
the standby has, it replayed. The rollup reads each day's events on the standby and writes on
the primary, and its rows are compared with those of a run without the standby over a copy of
the same facts (`control`, a database on the same primary). Then what happens when the standby
lags (replay paused), was restarted and has replayed nothing since, or kills the rollup's read
in a replay conflict.

The facts are stamped an hour old (`received_at`, `updated_at`), so that a run marks their days
clean; facts added during a test are stamped now, as intake does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

import jobs
from app.db import create_pool
from app.rollup import RollupReport, window
from app.rollup.run import rollup_and_record
from app.rollup.store import REPLICA_MARGIN_S
from app.settings import Settings
from tests.conftest import drain_queue, make_settings
from tests.faults.conftest import Replication, create_migrated_database
from tests.rollup_helpers import (
    COUNT_COLUMNS,
    Donation,
    Event,
    Reference,
    Rule,
    at,
    author_rows,
    board_rows,
    counts_of,
    insert_rules,
    rule_rows,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BASE = date(2026, 2, 2)
DAYS = window(BASE + timedelta(days=3), 4)
RULES = [
    Rule("rul_a", "usr_1", ("python", "go"), "gpt"),
    Rule("rul_b", "usr_1", ("python",), None),
    Rule("rul_c", "usr_2", (), "claude"),
    Rule("rul_d", "usr_3", ("go",), "gpt"),
]
AUTHOR_COLUMNS = (*COUNT_COLUMNS, "donations_count", "donations_amount_cents")
# Facts added while the standby lags: on the second and third days, so that the fourth day's
# trending and boards follow them (the cascade).
LATE = [Event("FORK", "rul_c", "ip7", at(DAYS[1], 15, m)) for m in range(3)] + [
    Event("VIEW", "rul_b", "ip7", at(DAYS[2], 16, 10 * m)) for m in range(4)
]
LATE_DAYS = sorted({e.ts.date() for e in LATE})


def reference() -> Reference:
    """Four days of every event type (views over the cap, views without an IP) and donations."""
    ref = Reference(rules={r.id: r for r in RULES})
    plan = [
        ("VIEW", "rul_a", "ip1", 0, 8),
        ("VIEW", "rul_a", "ip2", 0, 3),
        ("VIEW", "rul_a", None, 1, 7),
        ("COPY", "rul_a", "ip1", 2, 2),
        ("VIEW", "rul_b", "ip3", 1, 6),
        ("SAVE", "rul_b", "ip3", 1, 2),
        ("FORK", "rul_c", "ip2", 2, 1),
        ("VOTE", "rul_c", "ip1", 3, 4),
        ("VIEW", "rul_d", "ip1", 3, 2),
        ("COPY", "rul_d", "ip2", 0, 1),
    ]
    for type_, rule_id, ip, offset, repeats in plan:
        day = BASE + timedelta(days=offset)
        # Views ten minutes apart round the hour: past six, a slot repeats (counted once), and
        # past five slots a day a client's views are capped (docs/rollups.md).
        ref.events += [Event(type_, rule_id, ip, at(day, 10, 10 * n % 60)) for n in range(repeats)]
    ref.donations += [
        Donation("don_1", "usr_1", 500, 0, "succeeded", at(BASE, 9)),
        Donation("don_2", "usr_2", 900, 400, "partially_refunded", at(BASE + timedelta(1), 9)),
        Donation("don_3", "usr_3", 700, 0, "pending", at(BASE + timedelta(2), 9)),
    ]
    return ref


async def insert_events(conn: asyncpg.Connection, events: list[Event], *, age: timedelta) -> None:
    """Events as intake stores them, received `age` ago."""
    await conn.execute(
        "INSERT INTO events (type, rule_id, ip_hash, ts, received_at)"
        " SELECT t, r, i, ts, now() - $5::interval"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS u (t, r, i, ts)",
        [e.type for e in events],
        [e.rule_id for e in events],
        [e.ip_hash for e in events],
        [e.ts for e in events],
        age,
    )


async def load_old_facts(url: str, ref: Reference) -> None:
    """The reference's rows, stamped an hour ago."""
    conn = await asyncpg.connect(url)
    try:
        await insert_rules(conn, list(ref.rules.values()))
        await insert_events(conn, ref.events, age=timedelta(hours=1))
        await conn.executemany(
            "INSERT INTO donations (id, payment_intent_id, author_id, amount_cents,"
            " refunded_cents, status, created_at, updated_at)"
            " VALUES ($1, 'pi_' || $1, $2, $3, $4, $5, $6, now() - interval '1 hour')",
            [
                (d.id, d.author_id, d.amount_cents, d.refunded_cents, d.status, d.created_at)
                for d in ref.donations
            ],
        )
    finally:
        await conn.close()


async def add_late_facts(*urls: str) -> None:
    for url in urls:
        conn = await asyncpg.connect(url)
        try:
            await insert_events(conn, LATE, age=timedelta(0))
        finally:
            await conn.close()


@dataclass
class Databases:
    """`ingest` on the primary (written) and on the standby (read), and `control`."""

    primary: str
    standby: str
    control: str

    def with_standby(self, **overrides: Any) -> Settings:
        return make_settings(self.primary, rollup_database_url=self.standby, **overrides)

    def without_standby(self) -> Settings:
        return make_settings(self.control)


@pytest.fixture
async def dbs(replication: Replication) -> Databases:
    """Migrated and loaded on the primary (the standby replays it all), and copied to
    `control` with the same stamps."""
    url = await create_migrated_database(replication.primary)
    await load_old_facts(url, reference())
    admin = await asyncpg.connect(replication.primary.url)
    try:
        await admin.execute('CREATE DATABASE "control" TEMPLATE "ingest"')
    finally:
        await admin.close()
    await replication.caught_up()
    return Databases(
        url, replication.standby.database_url("ingest"), replication.primary.database_url("control")
    )


async def roll(settings: Settings, *, days: int = len(DAYS)) -> RollupReport:
    """As the tasks run it (`days=0`: the refresh, only the dirty days)."""
    if days == 0:
        return await rollup_and_record(settings, actor="test")
    return await rollup_and_record(settings, end_day=DAYS[-1], days=days, actor="test")


async def snapshot(url: str) -> dict[str, Any]:
    """Every row a rollup leaves in the metric and leaderboard tables, and its rolled days."""
    conn = await asyncpg.connect(url)
    try:
        return {
            "rules": counts_of(await rule_rows(conn), (*COUNT_COLUMNS, "trending_score")),
            "authors": counts_of(await author_rows(conn), (*AUTHOR_COLUMNS, "trending_score")),
            "boards": {day: await board_rows(conn, day) for day in DAYS},
            "rolled": [
                r["day"] for r in await conn.fetch("SELECT day FROM rollup_days ORDER BY 1")
            ],
        }
    finally:
        await conn.close()


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def execute(url: str, statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statements)
    finally:
        await conn.close()


async def dirty_days(url: str) -> dict[date, list[str]]:
    rows = await fetch(url, "SELECT day, reasons FROM rollup_dirty_days ORDER BY day")
    return {r["day"]: list(r["reasons"]) for r in rows}


async def replay_timestamp(standby_url: str) -> datetime | None:
    rows = await fetch(standby_url, "SELECT pg_last_xact_replay_timestamp() AS at")
    found: datetime | None = rows[0]["at"]
    return found


def expected(ref: Reference) -> dict[str, Any]:
    return {"rules": ref.rule_metrics(), "authors": ref.author_metrics()}


def counts(got: dict[str, Any]) -> dict[str, Any]:
    return {
        "rules": counts_of(got["rules"], COUNT_COLUMNS),
        "authors": counts_of(got["authors"], AUTHOR_COLUMNS),
    }


def with_late(ref: Reference) -> Reference:
    ref.events += LATE
    return ref


async def test_a_rollup_reading_the_standby_writes_the_rows_of_one_without_it(
    replication: Replication, dbs: Databases
) -> None:
    standby = await asyncpg.connect(dbs.standby)
    try:
        assert await standby.fetchval("SELECT pg_is_in_recovery()")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await standby.execute("CREATE TEMP TABLE probe (x int)")
    finally:
        await standby.close()

    report = await roll(dbs.with_standby())
    await roll(dbs.without_standby())

    got, control = await snapshot(dbs.primary), await snapshot(dbs.control)
    assert got == control
    assert counts(got) == expected(reference())
    assert all(got["boards"][day] for day in DAYS) and got["rolled"] == DAYS
    run = await fetch(
        dbs.primary, "SELECT status, error FROM rollup_runs WHERE id = $1", report.run_id
    )
    assert [tuple(r) for r in run] == [("succeeded", None)]
    # The days include every fact up to the standby's last replayed commit less the margin,
    # and no later (app.rollup.store.facts_horizon): the facts, an hour old, are all in.
    replayed = await replay_timestamp(dbs.standby)
    assert replayed is not None
    marks = await fetch(dbs.primary, "SELECT max(facts_as_of) AS at FROM rollup_days")
    assert marks[0]["at"] <= replayed - timedelta(seconds=REPLICA_MARGIN_S)
    assert await dirty_days(dbs.primary) == {}
    assert await snapshot(dbs.standby) == got  # the standby replayed the written rows


async def test_a_lagging_standby_leaves_the_days_it_lacks_dirty_until_it_has_replayed_them(
    replication: Replication, dbs: Databases
) -> None:
    await roll(dbs.with_standby())
    before = await snapshot(dbs.primary)
    standby_admin = replication.standby.url
    await fetch(standby_admin, "SELECT pg_wal_replay_pause()")

    async def paused() -> bool:
        rows = await fetch(standby_admin, "SELECT pg_get_wal_replay_pause_state()")
        return bool(rows[0][0] == "paused")

    await until(paused, what="replay paused")
    await add_late_facts(dbs.primary, dbs.control)

    lagging = await roll(dbs.with_standby(), days=0)  # the refresh: only the dirty days

    assert lagging.days == LATE_DAYS
    assert lagging.reasons == {d.isoformat(): ["events"] for d in LATE_DAYS}
    # The standby had not replayed the late events: the days were rolled without them...
    assert counts(await snapshot(dbs.primary)) == counts(before)
    # ...and are still dirty: their facts are newer than the standby's last replayed commit.
    assert await dirty_days(dbs.primary) == {d: ["events"] for d in LATE_DAYS}

    await fetch(standby_admin, "SELECT pg_wal_replay_resume()")
    await replication.caught_up()
    caught_up = await roll(dbs.with_standby(), days=0)
    await roll(dbs.without_standby())

    assert caught_up.days == LATE_DAYS and caught_up.refreshed_days == [DAYS[3]]
    got = await snapshot(dbs.primary)
    assert got == await snapshot(dbs.control)
    assert counts(got) == expected(with_late(reference()))
    # Facts within REPLICA_MARGIN_S of the standby's last replayed commit leave their day dirty
    # (each refresh rolls it again, to the same numbers, until they are older).
    assert await dirty_days(dbs.primary) == {d: ["events"] for d in LATE_DAYS}


async def test_a_restarted_standby_that_has_replayed_no_commit_yet_leaves_the_days_it_lacks_dirty(
    replication: Replication, dbs: Databases
) -> None:
    """After a restart, a standby reports no replayed commit until it replays one
    (`pg_last_xact_replay_timestamp()` is NULL): here it restarted from a restartpoint with
    nothing after it and cannot reach its primary, which has new facts meanwhile."""
    await roll(dbs.with_standby())
    before = await snapshot(dbs.primary)
    await execute(replication.primary.url, "CHECKPOINT")
    await replication.caught_up()
    await execute(replication.standby.url, "CHECKPOINT")  # a restartpoint at that checkpoint
    await asyncio.to_thread(replication.standby.stop, "fast")
    await add_late_facts(dbs.primary, dbs.control)
    replication.standby.settings = {"primary_conninfo": "''"}  # cut off from its primary
    await asyncio.to_thread(replication.standby.start)
    assert await replay_timestamp(dbs.standby) is None

    await roll(dbs.with_standby(), days=0)

    assert counts(await snapshot(dbs.primary)) == counts(before)
    assert await dirty_days(dbs.primary) == {d: ["events"] for d in LATE_DAYS}

    await asyncio.to_thread(replication.standby.stop, "fast")
    replication.standby.settings = {}
    await asyncio.to_thread(replication.standby.start)
    await replication.caught_up()
    await roll(dbs.with_standby(), days=0)
    await roll(dbs.without_standby())
    assert await snapshot(dbs.primary) == await snapshot(dbs.control)
    assert counts(await snapshot(dbs.primary)) == expected(with_late(reference()))


async def until(check: Callable[[], Awaitable[bool]], *, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def sessions(url: str, *, application: str, state: str | None = None) -> int:
    """Sessions of `application` on the server of `url` (in `state`, if given)."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND ($2::text IS NULL OR state = $2)"
    )
    rows = await fetch(url, query, application, state)
    return int(rows[0][0])


async def configure(url: str, **settings: str | None) -> None:
    """ALTER SYSTEM SET (or RESET, for None; a standby accepts it) and reload."""
    conn = await asyncpg.connect(url)
    try:
        for name, value in settings.items():
            change = f"RESET {name}" if value is None else f"SET {name} = '{value}'"
            await conn.execute(f"ALTER SYSTEM {change}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def waiting_for_a_lock(url: str, *, application: str) -> int:
    rows = await fetch(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND wait_event_type = 'Lock'",
        application,
    )
    return int(rows[0][0])


async def written_rows(pool: asyncpg.Pool) -> int:
    """Rows of every table a run writes (its own run row aside), scratch tables included."""
    return int(
        await pool.fetchval(
            "SELECT (SELECT count(*) FROM rule_metric_daily)"
            " + (SELECT count(*) FROM author_metric_daily)"
            " + (SELECT count(*) FROM leaderboard_snapshot) + (SELECT count(*) FROM rollup_days)"
            " + (SELECT count(*) FROM rollup_stage_rule)"
            " + (SELECT count(*) FROM rollup_stage_author)"
        )
    )


@pytest.fixture
async def proc_app_on(dbs: Databases) -> AsyncIterator[Any]:
    """A Procrastinate App on the primary's `ingest` database, without its schedules: the
    test's job is the only one its worker runs (a periodic refresh would roll the same days)."""
    app = jobs.create_app(dbs.primary)
    app.periodic_registry.periodic_tasks.clear()
    async with app.open_async():
        yield app


async def test_a_replay_conflict_fails_the_run_cleanly_and_the_retry_succeeds(
    replication: Replication, dbs: Databases, proc_app_on: Any
) -> None:
    """With `max_standby_streaming_delay = 0` (the opposite of docs/scaling.md's advice), the
    standby ends at once every session holding a lock that a replayed change needs. The rollup
    job's reads there are held, each in its read-only transaction, while the primary writes its
    stage (a lock on `users` the test holds stops them there); then the primary takes an ACCESS
    EXCLUSIVE lock on `events`, which the standby replays: the recovery conflict."""
    standby = replication.standby
    await configure(standby.url, max_standby_streaming_delay="0")
    settings = dbs.with_standby(rollup_parallelism=2)
    pool = await create_pool(dbs.primary, max_size=4)
    try:
        job_id = await proc_app_on.configure_task("rollup").defer_async(
            date=DAYS[-1].isoformat(), days=len(DAYS)
        )
        await run_into_a_replay_conflict(dbs, drain_queue(proc_app_on, pool, settings))
        job = await pool.fetchrow(
            "SELECT status, attempts, scheduled_at FROM procrastinate_jobs WHERE id = $1", job_id
        )
        failed = await pool.fetch("SELECT status, error FROM rollup_runs ORDER BY id")
        written = await written_rows(pool)

        await configure(standby.url, max_standby_streaming_delay=None)
        await asyncio.sleep(max(0.0, (job["scheduled_at"] - datetime.now(UTC)).total_seconds()))
        await drain_queue(proc_app_on, pool, settings)
        retried = await pool.fetchrow(
            "SELECT status, attempts FROM procrastinate_jobs WHERE id = $1", job_id
        )
        runs = await pool.fetch("SELECT status FROM rollup_runs ORDER BY id")
    finally:
        await pool.close()
    await roll(dbs.without_standby())

    # Each lane's standby session was ended by the standby (idle in its read transaction, it
    # could not just have its statement cancelled), as its log says.
    assert standby.log().count("terminating connection due to conflict with recovery") == 2
    assert (job["status"], job["attempts"]) == ("todo", 1)  # failed once, retry scheduled
    assert [r["status"] for r in failed] == ["failed"] and failed[0]["error"]
    assert written == 0  # nothing half-written: no day applied, the stage cleared
    assert tuple(retried) == ("succeeded", 2)
    assert [r["status"] for r in runs] == ["failed", "succeeded"]
    assert await snapshot(dbs.primary) == await snapshot(dbs.control)


async def run_into_a_replay_conflict(dbs: Databases, worker: Awaitable[None]) -> None:
    """Run `worker` (a rollup job) until both lanes hold their standby reads open, make the
    standby end them in a lock conflict, then let the job go on (and fail)."""
    holder = await asyncpg.connect(dbs.primary)
    running: asyncio.Future[None] | None = None
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        running = asyncio.ensure_future(worker)

        async def both_held() -> bool:
            waiting = await waiting_for_a_lock(dbs.primary, application="ingest-rollup")
            reading = await sessions(
                dbs.standby, application="ingest-rollup-events", state="idle in transaction"
            )
            return waiting == 2 and reading == 2

        await until(both_held, what="the two lanes' reads held on the standby")
        await execute(dbs.primary, "BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE; COMMIT")

        async def reads_ended() -> bool:
            return await sessions(dbs.standby, application="ingest-rollup-events") == 0

        await until(reads_ended, what="the standby to end the rollup's sessions")
        await held.rollback()
        await asyncio.wait_for(running, 60)
    finally:
        if running is not None and not running.done():
            running.cancel()
        await holder.close()
