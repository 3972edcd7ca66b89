"""ROLLUP_DATABASE_URL as a read replica: the event scans read there, everything else runs on
the primary (docs/scaling.md, docs/rollups.md).

There is no streaming replica here, so one is simulated faithfully: a second database on the
same server holding a copy of the users, rules, events and donations, made read-only with
`ALTER DATABASE ... SET default_transaction_read_only = on`, so that any write attempted there
(a temporary table included) fails as it would on a hot standby.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from app.db import Database, create_pool
from app.rollup import RollupReport, run_rollup, window
from app.rollup.run import events_database_url, open_events_db, rollup_and_record
from app.rollup.store import count_day_events, stage_day, stage_rule_rows
from app.settings import Settings
from tests.conftest import _admin, make_settings
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
    insert_donations,
    insert_events,
    load_reference,
    rule_rows,
)

BASE = date(2026, 1, 10)
DAYS = window(BASE + timedelta(days=3), 4)
RULES = [
    Rule("rul_a", "usr_1", ("python", "go"), "gpt"),
    Rule("rul_b", "usr_1", ("python",), None),
    Rule("rul_c", "usr_2", (), "claude"),
    Rule("rul_d", "usr_3", ("go",), "gpt"),
]
AUTHOR_COLUMNS = (*COUNT_COLUMNS, "donations_count", "donations_amount_cents")


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
        ref.events += [Event(type_, rule_id, ip, at(day, 10, minute)) for minute in range(repeats)]
    ref.donations += [
        Donation("don_1", "usr_1", 500, 0, "succeeded", at(BASE, 9)),
        Donation("don_2", "usr_2", 900, 400, "partially_refunded", at(BASE + timedelta(1), 9)),
        Donation("don_3", "usr_3", 700, 0, "pending", at(BASE + timedelta(2), 9)),
    ]
    return ref


async def load(url: str, ref: Reference) -> None:
    conn = await asyncpg.connect(url)
    try:
        await load_reference(conn, ref)
    finally:
        await conn.close()


async def make_read_only(url: str) -> None:
    """From now on every session on the database refuses writes, as a hot standby does."""
    name = urlsplit(url).path.lstrip("/")
    await _admin(url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await _admin(url, "CREATE TEMP TABLE probe (x int)")


@pytest.fixture
async def replica_url(db_url: str, second_db_url: str) -> AsyncIterator[str]:
    """The primary (db_url) and its simulated replica hold the same reference data; the
    replica is made read-only by the test once it has put there what only the replica has."""
    url = second_db_url
    ref = reference()
    await load(db_url, ref)
    await load(url, ref)
    yield url


async def snapshot(url: str) -> dict[str, Any]:
    """Everything a rollup leaves in a database's metric and leaderboard tables."""
    conn = await asyncpg.connect(url)
    try:
        rules = await rule_rows(conn)
        authors = await author_rows(conn)
        return {
            "rules": counts_of(rules, (*COUNT_COLUMNS, "trending_score")),
            "authors": counts_of(authors, (*AUTHOR_COLUMNS, "trending_score")),
            "boards": {day: await board_rows(conn, day) for day in DAYS},
            "rolled": await conn.fetchval("SELECT count(*) FROM rollup_days"),
        }
    finally:
        await conn.close()


async def roll(settings: Settings, *, dry_run: bool = False) -> RollupReport:
    return await rollup_and_record(
        settings, end_day=DAYS[-1], days=len(DAYS), actor="test", dry_run=dry_run
    )


def expected_counts(ref: Reference) -> tuple[dict[Any, Any], dict[Any, Any]]:
    return ref.rule_metrics(), ref.author_metrics()


async def test_rollup_with_replica_leaves_the_same_rows_as_without(
    db_url: str, replica_url: str, make_db_url: Callable[[], str]
) -> None:
    control_url = await asyncio.to_thread(make_db_url)
    await load(control_url, reference())
    await make_read_only(replica_url)

    report = await roll(make_settings(db_url, rollup_database_url=replica_url))
    await roll(make_settings(control_url))

    with_replica, without = await snapshot(db_url), await snapshot(control_url)
    assert with_replica == without
    rules, authors = expected_counts(reference())
    assert counts_of(with_replica["rules"], COUNT_COLUMNS) == rules
    assert counts_of(with_replica["authors"], AUTHOR_COLUMNS) == authors
    assert all(with_replica["boards"][day] for day in DAYS)
    assert with_replica["rolled"] == len(DAYS)

    conn = await asyncpg.connect(db_url)
    try:
        run = await conn.fetchrow(
            "SELECT status, error FROM rollup_runs WHERE id = $1", report.run_id
        )
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'rollup.run' AND subject = $1",
            f"rollup_run:{report.run_id}",
        )
        staged = await conn.fetchval("SELECT count(*) FROM rollup_stage_rule")
    finally:
        await conn.close()
    assert (run["status"], run["error"]) == ("succeeded", None)
    assert audited == 1
    assert staged == 0  # the copied rows are cleared with the run's other scratch rows

    replica = await snapshot(replica_url)
    assert (replica["rules"], replica["authors"], replica["rolled"]) == ({}, {}, 0)


async def test_events_are_read_from_the_replica_and_nothing_else_is(
    db_url: str, replica_url: str
) -> None:
    only_on_replica = [
        Event("FORK", "rul_c", "ip9", at(DAYS[1], 15, minute)) for minute in range(3)
    ] + [Event("VIEW", "rul_b", "ip9", at(DAYS[3], 16, minute)) for minute in range(9)]
    only_on_primary = [Event("SAVE", "rul_d", "ip8", at(DAYS[2], 17, m)) for m in range(4)]
    # Donations are read on the primary, where they are written (docs/rollups.md).
    donation_on_primary = Donation("don_9", "usr_3", 1200, 0, "succeeded", at(DAYS[3], 8))
    conn = await asyncpg.connect(replica_url)
    try:
        await insert_events(conn, only_on_replica)
    finally:
        await conn.close()
    conn = await asyncpg.connect(db_url)
    try:
        await insert_events(conn, only_on_primary)
        await insert_donations(conn, [donation_on_primary])
    finally:
        await conn.close()
    await make_read_only(replica_url)

    await roll(make_settings(db_url, rollup_database_url=replica_url))

    ref = reference()
    ref.events += only_on_replica
    ref.donations.append(donation_on_primary)
    rules, authors = expected_counts(ref)
    got = await snapshot(db_url)
    assert counts_of(got["rules"], COUNT_COLUMNS) == rules
    assert counts_of(got["authors"], AUTHOR_COLUMNS) == authors
    for day in DAYS:
        assert got["boards"][day] == ref.leaderboards(day), day


async def test_dry_run_reads_the_replica_and_writes_nothing(db_url: str, replica_url: str) -> None:
    conn = await asyncpg.connect(replica_url)
    try:
        await insert_events(conn, [Event("COPY", "rul_b", "ip9", at(DAYS[3], 15))] * 2)
    finally:
        await conn.close()
    await make_read_only(replica_url)

    report = await roll(make_settings(db_url, rollup_database_url=replica_url), dry_run=True)

    ref = reference()
    ref.events += [Event("COPY", "rul_b", "ip9", at(DAYS[3], 15))] * 2
    assert report.rule_metric_daily == len(ref.rule_metrics())
    assert report.author_metric_daily == len(ref.author_metrics())
    assert report.top and report.top[0]["period"] == "DAILY"
    got = await snapshot(db_url)
    assert (got["rules"], got["authors"], got["rolled"]) == ({}, {}, 0)


async def test_unset_rollup_database_url_uses_the_primary_only(
    db_url: str, replica_url: str
) -> None:
    # The other database has events the primary lacks: they must not be counted.
    conn = await asyncpg.connect(replica_url)
    try:
        await insert_events(conn, [Event("FORK", "rul_a", "ip9", at(DAYS[0], 15))] * 5)
    finally:
        await conn.close()
    await make_read_only(replica_url)
    unset = make_settings(db_url)
    same = make_settings(db_url, rollup_database_url=db_url)
    assert events_database_url(unset) is None and events_database_url(same) is None
    assert await open_events_db(unset) is None and await open_events_db(same) is None
    assert events_database_url(make_settings(db_url, rollup_database_url=replica_url))

    await roll(unset)
    rules, authors = expected_counts(reference())
    got = await snapshot(db_url)
    assert counts_of(got["rules"], COUNT_COLUMNS) == rules
    assert counts_of(got["authors"], AUTHOR_COLUMNS) == authors

    await roll(same)
    assert await snapshot(db_url) == got


async def test_the_simulated_replica_refuses_a_whole_rollup(replica_url: str) -> None:
    """What the simulation stands for: run entirely on the standby, a rollup fails at its
    first write, as every rollup did before the event scans were split off."""
    await make_read_only(replica_url)
    pool = await create_pool(replica_url, max_size=3)
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await run_rollup(
                Database(pool),
                end_day=DAYS[-1],
                days=len(DAYS),
                settings=make_settings(replica_url),
            )
    finally:
        await pool.close()


async def test_both_stage_statements_count_alike_with_the_function_inlined(db_url: str) -> None:
    """The primary's INSERT ... SELECT and the replica's SELECT share one counting function,
    which the planner must inline (a function scan would hide the events from the planner)."""
    await load(db_url, reference())
    conn = await asyncpg.connect(db_url)
    try:
        for day in DAYS:
            await stage_day(conn, run_id=1, day=day)
            selected = await count_day_events(conn, run_id=2, day=day)
            await stage_rule_rows(conn, selected)
        staged = await conn.fetch(
            "SELECT run_id, day, rule_id, views, copies, saves, forks, votes"
            " FROM rollup_stage_rule ORDER BY day, rule_id, run_id"
        )
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT * FROM rollup_rule_counts_of_day($1, $2)", DAYS[0], 5
        )
    finally:
        await conn.close()
    by_run: dict[int, list[tuple[Any, ...]]] = {1: [], 2: []}
    for row in staged:
        by_run[row["run_id"]].append(tuple(row)[1:])
    assert by_run[1] == by_run[2]
    assert len(by_run[1]) == len(reference().rule_metrics())
    assert "Function Scan" not in str(plan) and "events" in str(plan)
