"""The numbers converge to the stored facts: whatever arrives late, whatever runs in between,
once the schedule's refresh has run every metric row, trending score and board equals a
from-scratch rollup of the same facts in a fresh database, and the counts equal the independent
Python computation of tests/rollup_helpers.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.client_ip import IpHasher
from app.db import Database, create_pool
from app.events import ingest_batch, prepare_batch
from app.rollup import Reason, run_rollup, utc_today
from app.settings import Settings
from tests.conftest import make_settings
from tests.rollup_helpers import (
    COUNT_COLUMNS,
    Donation,
    Event,
    Reference,
    Rule,
    author_rows,
    counts_of,
    insert_rules,
    rule_rows,
)

RULES = [
    Rule("rul_a", "usr_1", ("python", "go"), "gpt"),
    Rule("rul_b", "usr_1", ("python",), None),
    Rule("rul_c", "usr_2", (), "claude"),
]
AUTHORS = ["usr_1", "usr_2"]
IPS = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
DAYS_BACK = 6  # events and donations of the 6 days before today (never in the future)
AUTHOR_COLUMNS = (*COUNT_COLUMNS, "donations_count", "donations_amount_cents")
HASHER = IpHasher("convergence-test-secret")

event_rows = st.tuples(
    st.sampled_from(["VIEW", "VIEW", "VIEW", "COPY", "SAVE", "FORK", "VOTE"]),
    st.integers(0, len(RULES) - 1),
    st.integers(0, len(IPS) - 1),
    st.integers(1, DAYS_BACK),  # days before today
    st.integers(0, 23 * 60 + 59),  # minute of the day
    st.one_of(st.none(), st.integers(0, 5)),  # idempotency key: few, so some repeat
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("events"), st.lists(event_rows, min_size=1, max_size=12)),
        st.tuples(
            st.just("donation"),
            st.integers(0, len(AUTHORS) - 1),
            st.integers(1, DAYS_BACK),
            st.integers(100, 5000),
        ),
        st.tuples(st.just("refund"), st.integers(0, 9), st.integers(1, 5000)),
        st.tuples(st.just("dispute"), st.integers(0, 9), st.sampled_from(["open", "lost", "won"])),
        st.tuples(st.just("refresh")),
        st.tuples(st.just("nightly")),
        st.tuples(st.just("operator"), st.integers(1, DAYS_BACK), st.integers(1, 3)),
    ),
    min_size=2,
    max_size=9,
)


def minute_of(days_back: int, minute: int) -> datetime:
    day = utc_today() - timedelta(days=days_back)
    return datetime.combine(day, time(minute // 60, minute % 60), tzinfo=UTC)


async def send_events(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """Through the real intake code: Python checks, then the batch statement."""
    events = [
        {
            "type": kind,
            "ruleId": RULES[rule].id,
            "ip": IPS[ip],
            "ts": minute_of(back, minute).isoformat(),
            **({"idempotencyKey": f"key-{key}"} if key is not None else {}),
        }
        for kind, rule, ip, back, minute, key in rows
    ]
    batch = prepare_batch(
        events, now=datetime.now(UTC), request_ip_hash=HASHER.hash_given(IPS[0]), hasher=HASHER
    )
    report = await ingest_batch(conn, batch=batch, actor="test", request_id=None)
    assert not report.rejected


async def change_donation(conn: asyncpg.Connection, step: tuple) -> None:
    """Refunds and disputes as the Stripe side writes them (status precedence, docs/stripe.md)."""
    ids = [r["id"] for r in await conn.fetch("SELECT id FROM donations ORDER BY id")]
    if not ids:
        return
    donation = ids[step[1] % len(ids)]
    if step[0] == "refund":
        await conn.execute(
            "UPDATE donations SET refunded_cents = least(amount_cents, refunded_cents + $2),"
            " status = CASE WHEN refunded_cents + $2 >= amount_cents THEN 'refunded'"
            " ELSE 'partially_refunded' END WHERE id = $1",
            donation,
            step[2],
        )
        return
    status = {"open": "disputed", "lost": "lost", "won": "succeeded"}[step[2]]
    await conn.execute(
        "UPDATE donations SET dispute_status = $2, dispute_amount_cents = amount_cents / 2,"
        " status = $3 WHERE id = $1",
        donation,
        step[2],
        status,
    )


async def apply_step(pool: asyncpg.Pool, settings: Settings, step: tuple, n: int) -> None:
    kind = step[0]
    today = utc_today()
    if kind == "events":
        async with pool.acquire() as conn:
            await send_events(conn, step[1])
    elif kind == "donation":
        await pool.execute(
            "INSERT INTO donations (id, payment_intent_id, author_id, amount_cents, status,"
            " created_at) VALUES ($1, 'pi_' || $1, $2, $3, 'succeeded', $4)",
            f"don_{n:02d}",
            AUTHORS[step[1]],
            step[3],
            minute_of(step[2], 600 + n),
        )
    elif kind in ("refund", "dispute"):
        async with pool.acquire() as conn:
            await change_donation(conn, step)
    elif kind == "refresh":
        await run_rollup(Database(pool), settings=settings)
    elif kind == "nightly":
        await run_rollup(
            Database(pool),
            settings=settings,
            end_day=today - timedelta(days=1),
            days=2,
            reason=Reason.SCHEDULE,
        )
    else:
        end = today - timedelta(days=step[1])
        await run_rollup(Database(pool), settings=settings, end_day=end, days=step[2])


async def copy_facts(source: asyncpg.Pool, target: asyncpg.Pool) -> None:
    """The stored facts, nothing derived, into a fresh database."""
    tables = {
        "users": "id, handle",
        "rules": "id, author_id, title, tags, model",
        "events": "type, rule_id, user_id, ip_hash, ts, idempotency_key, received_at",
        "donations": "id, payment_intent_id, author_id, rule_id, amount_cents, refunded_cents,"
        " status, created_at, dispute_status, dispute_amount_cents",
    }
    for table, columns in tables.items():
        rows = await source.fetch(f"SELECT {columns} FROM {table}")
        names = [c.strip() for c in columns.split(",")]
        async with target.acquire() as conn:
            await conn.copy_records_to_table(table, records=rows, columns=names)


async def boards(pool: asyncpg.Pool, days: list[date]) -> set[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT day, period, entity, scope, scope_key, rank, entity_id, score"
        " FROM leaderboard_snapshot WHERE day = ANY($1::date[])",
        days,
    )
    return {tuple(r) for r in rows}


async def reference_of(pool: asyncpg.Pool) -> Reference:
    """The independent computation, over the facts as stored (after idempotency)."""
    ref = Reference(rules={r.id: r for r in RULES})
    for r in await pool.fetch("SELECT type, rule_id, ip_hash, ts FROM events"):
        ref.events.append(Event(r["type"], r["rule_id"], r["ip_hash"], r["ts"]))
    for r in await pool.fetch("SELECT * FROM donations"):
        ref.donations.append(
            Donation(
                r["id"],
                r["author_id"],
                r["amount_cents"],
                r["refunded_cents"],
                r["status"],
                r["created_at"].astimezone(UTC),
                r["dispute_status"],
                r["dispute_amount_cents"],
            )
        )
    return ref


async def scenario(db_url: str, fresh_url: str, plan: list[tuple]) -> None:
    settings = make_settings(db_url)
    pool = await create_pool(db_url, max_size=4)
    fresh = await create_pool(fresh_url, max_size=4)
    try:
        for table_pool in (pool, fresh):
            await table_pool.execute(
                "TRUNCATE events, donations, rule_metric_daily, author_metric_daily,"
                " leaderboard_snapshot, rollup_days, rollup_runs, rules, users CASCADE"
            )
        await insert_rules(pool, RULES)
        for n, step in enumerate(plan):
            await apply_step(pool, settings, step, n)
        await run_rollup(Database(pool), settings=settings)  # the schedule's refresh, once more
        assert await pool.fetchval("SELECT count(*) FROM rollup_dirty_days") == 0

        await copy_facts(pool, fresh)
        rolled = [r["day"] for r in await pool.fetch("SELECT day FROM rollup_days ORDER BY day")]
        if rolled:
            span = (rolled[-1] - rolled[0]).days + 1
            await run_rollup(
                Database(fresh), settings=make_settings(fresh_url), end_day=rolled[-1], days=span
            )
        assert await rule_rows(pool) == await rule_rows(fresh)  # counts and trending
        assert await author_rows(pool) == await author_rows(fresh)
        assert await boards(pool, rolled) == await boards(fresh, rolled)

        ref = await reference_of(pool)
        assert counts_of(await rule_rows(pool), COUNT_COLUMNS) == ref.rule_metrics()
        assert counts_of(await author_rows(pool), AUTHOR_COLUMNS) == ref.author_metrics()
    finally:
        await pool.close()
        await fresh.close()


@hsettings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=steps)
def test_numbers_converge_to_a_from_scratch_rollup(
    db_url: str, second_db_url: str, plan: list[tuple]
) -> None:
    asyncio.run(scenario(db_url, second_db_url, plan))
