"""Rollups: the SQL against an independent Python computation, re-runs, late data, refunds,
leaderboard ties and scopes, dry runs."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.db import Database, create_pool
from app.rollup import RollupConfig, TrendingWeights, run_rollup, window
from app.settings import Settings
from tests.conftest import make_settings
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
    insert_rules,
    rule_rows,
)

BASE = date(2026, 1, 10)
RULES = [
    Rule("rul_a", "usr_1", ("python", "go"), "gpt"),
    Rule("rul_b", "usr_1", ("python",), None),
    Rule("rul_c", "usr_2", (), "claude"),
    Rule("rul_d", "usr_3", ("go", "go"), "gpt"),
]
AUTHOR_COLUMNS = (*COUNT_COLUMNS, "donations_count", "donations_amount_cents")

event_groups = st.lists(
    st.tuples(
        st.sampled_from(["VIEW", "VIEW", "VIEW", "COPY", "SAVE", "FORK", "VOTE"]),
        st.sampled_from([r.id for r in RULES]),
        st.sampled_from([None, "ip1", "ip2", "ip3"]),
        st.integers(0, 3),  # day offset
        st.integers(0, 23),  # hour
        st.integers(1, 8),  # repeats: views above the cap of 5
    ),
    max_size=25,
)
donation_rows = st.lists(
    st.tuples(
        st.sampled_from(["usr_1", "usr_2", "usr_3"]),
        st.integers(0, 3),
        st.integers(0, 5000),
        st.integers(0, 5000),
        st.sampled_from(
            ["pending", "succeeded", "failed", "partially_refunded", "refunded", "disputed", "lost"]
        ),
        st.integers(0, 5000),  # disputed amount, for the disputed and lost statuses
    ),
    max_size=6,
)
# The dispute a Stripe-managed row carries with each status (docs/stripe.md, status precedence).
DISPUTE_OF_STATUS = {"disputed": "open", "lost": "lost"}


def build_reference(groups: list[tuple], donations: list[tuple]) -> Reference:
    ref = Reference(rules={r.id: r for r in RULES})
    for type_, rule_id, ip, offset, hour, repeats in groups:
        day = BASE + timedelta(days=offset)
        # Seven minutes apart: some repeats share a 10-minute slot, others do not.
        ref.events += [
            Event(type_, rule_id, ip, at(day, hour) + timedelta(minutes=7 * k))
            for k in range(repeats)
        ]
    for n, (author, offset, amount, refunded, status, disputed) in enumerate(donations):
        dispute = DISPUTE_OF_STATUS.get(status)
        ref.donations.append(
            Donation(
                f"don_{n}",
                author,
                amount,
                min(refunded, amount),
                status,
                at(BASE + timedelta(days=offset), 23, 59),
                dispute_status=dispute,
                dispute_amount_cents=min(disputed, amount) if dispute else 0,
            )
        )
    return ref


async def load(pool: asyncpg.Pool, ref: Reference) -> None:
    await insert_rules(pool, list(ref.rules.values()))
    await insert_events(pool, ref.events)
    await insert_donations(pool, ref.donations)


async def check_against_reference(pool: asyncpg.Pool, ref: Reference, days: list[date]) -> None:
    rules = await rule_rows(pool)
    authors = await author_rows(pool)
    expected_rules = ref.rule_metrics()
    expected_authors = ref.author_metrics()
    assert counts_of(rules, COUNT_COLUMNS) == expected_rules
    assert counts_of(authors, AUTHOR_COLUMNS) == expected_authors
    for key, score in ref.trending(expected_rules).items():
        assert rules[key]["trending_score"] == pytest.approx(score, abs=1e-6), key
    for key, score in ref.trending(expected_authors).items():
        assert authors[key]["trending_score"] == pytest.approx(score, abs=1e-6), key
    for day in days:
        assert await board_rows(pool, day) == ref.leaderboards(day), day


async def scenario(db_url: str, groups: list[tuple], donations: list[tuple]) -> None:
    ref = build_reference(groups, donations)
    settings = make_settings(db_url, rollup_parallelism=2)
    pool = await create_pool(db_url, max_size=4)
    try:
        await pool.execute(
            "TRUNCATE events, donations, rule_metric_daily, author_metric_daily,"
            " leaderboard_snapshot, rollup_days, rules, users CASCADE"
        )
        await load(pool, ref)
        days = window(BASE + timedelta(days=3), 4)
        await run_rollup(Database(pool), end_day=days[-1], days=4, settings=settings)
        await check_against_reference(pool, ref, days)
    finally:
        await pool.close()


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(groups=event_groups, donations=donation_rows)
def test_sql_rollup_matches_reference_computation(
    db_url: str, groups: list[tuple], donations: list[tuple]
) -> None:
    asyncio.run(scenario(db_url, groups, donations))


def fixed_reference() -> Reference:
    groups = [
        ("VIEW", "rul_a", "ip1", 0, 9, 9),  # 9 views in 6 slots: capped to 5
        ("VIEW", "rul_a", "ip2", 0, 10, 2),  # 7 minutes apart, one slot: 1
        ("VIEW", "rul_a", None, 0, 11, 6),  # no IP: not capped
        ("COPY", "rul_b", "ip1", 1, 3, 2),
        ("FORK", "rul_c", None, 2, 4, 1),
        ("VOTE", "rul_d", "ip3", 2, 5, 3),
        ("SAVE", "rul_b", None, 3, 6, 1),
    ]
    donations = [
        ("usr_2", 1, 1000, 0, "succeeded", 0),
        ("usr_1", 3, 700, 200, "partially_refunded", 0),
    ]
    return build_reference(groups, donations)


async def roll(pool: asyncpg.Pool, settings: Settings, **kwargs: object) -> object:
    args: dict = {"end_day": BASE + timedelta(days=3), "days": 4, **kwargs}
    return await run_rollup(Database(pool), settings=settings, **args)


async def test_views_are_capped_per_ip_rule_and_day(pool: asyncpg.Pool, settings: Settings) -> None:
    ref = fixed_reference()
    await load(pool, ref)
    await roll(pool, settings)
    rows = await rule_rows(pool)
    assert rows[("rul_a", BASE)]["views"] == 5 + 1 + 6
    await check_against_reference(pool, ref, window(BASE + timedelta(days=3), 4))


async def test_rerun_is_idempotent(pool: asyncpg.Pool, settings: Settings) -> None:
    await load(pool, fixed_reference())
    await roll(pool, settings)
    before = (await rule_rows(pool), await author_rows(pool), await board_rows(pool, BASE))
    second = await roll(pool, settings)
    after = (await rule_rows(pool), await author_rows(pool), await board_rows(pool, BASE))
    assert before == after
    assert second.trending_updated == 0  # type: ignore[attr-defined]
    runs = await pool.fetch("SELECT status, row_counts, days FROM rollup_runs ORDER BY id")
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert runs[0]["row_counts"]["rule_metric_daily"] == len(before[0])
    assert len(runs[0]["days"]) == 4
    assert await pool.fetchval("SELECT count(*) FROM rollup_stage_rule") == 0


async def test_late_event_is_picked_up_and_later_days_follow(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    ref = fixed_reference()
    await load(pool, ref)
    await roll(pool, settings)
    late = [Event("FORK", "rul_b", "ip9", at(BASE + timedelta(days=1), 22))]
    ref.events += late
    await insert_events(pool, late)
    # Re-roll only the late event's day: the days after it get their trending and boards
    # recomputed from the new numbers.
    report = await run_rollup(
        Database(pool), end_day=BASE + timedelta(days=1), days=1, settings=settings
    )
    assert report.refreshed_days == [BASE + timedelta(days=2), BASE + timedelta(days=3)]
    assert (await rule_rows(pool))[("rul_b", BASE + timedelta(days=1))]["forks"] == 1
    await check_against_reference(pool, ref, window(BASE + timedelta(days=3), 4))


async def test_deleted_activity_removes_the_days_rows(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    ref = fixed_reference()
    await load(pool, ref)
    await roll(pool, settings)
    await pool.execute("DELETE FROM events WHERE rule_id = 'rul_c'")
    ref.events = [e for e in ref.events if e.rule_id != "rul_c"]
    await roll(pool, settings)
    await check_against_reference(pool, ref, window(BASE + timedelta(days=3), 4))


async def test_refunds_and_lost_disputes_reduce_author_totals(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await insert_rules(pool, RULES)
    day = BASE + timedelta(days=1)
    donations = [
        Donation("don_x", "usr_2", 1000, 0, "succeeded", at(day, 8)),
        Donation("don_y", "usr_2", 500, 0, "succeeded", at(day, 9)),
    ]
    await insert_donations(pool, donations)
    await roll(pool, settings)
    row = (await author_rows(pool))[("usr_2", day)]
    assert (row["donations_count"], row["donations_amount_cents"]) == (2, 1500)

    await pool.execute(
        "UPDATE donations SET refunded_cents = 400, status = 'partially_refunded',"
        " updated_at = now() WHERE id = 'don_x'"
    )
    await pool.execute(
        "UPDATE donations SET status = 'lost', dispute_status = 'lost',"
        " dispute_amount_cents = 500, updated_at = now() WHERE id = 'don_y'"
    )
    await roll(pool, settings)
    row = (await author_rows(pool))[("usr_2", day)]
    assert (row["donations_count"], row["donations_amount_cents"]) == (1, 600)

    await pool.execute(
        "UPDATE donations SET refunded_cents = 1000, status = 'refunded' WHERE id = 'don_x'"
    )
    await roll(pool, settings)
    assert ("usr_2", day) not in await author_rows(pool)  # nothing left that day


async def test_author_money_is_what_donations_kept_says(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    """Rows as the Stripe code writes them (facts; the trigger derives the status): a fully
    refunded donation does not count at all, a partial refund and a lost partial dispute count
    only what the author keeps, exactly the donations_kept view's kept_cents."""
    await insert_rules(pool, RULES)
    day = BASE + timedelta(days=2)
    await pool.executemany(
        "INSERT INTO donations (payment_intent_id, author_ref, amount_cents, refunded_cents,"
        " dispute_status, dispute_amount_cents, paid_at, last_event_at, created_at)"
        " VALUES ($1, 'usr_3', $2, $3, $4, $5, $6, $6, $6)",
        [
            ("pi_refunded", 2500, 2500, None, 0, at(day, 8)),
            ("pi_partial", 1000, 300, None, 0, at(day, 9)),
            ("pi_lost_part", 800, 0, "lost", 200, at(day, 10)),
            ("pi_open", 400, 0, "open", 400, at(day, 11)),
        ],
    )
    statuses = dict(await pool.fetch("SELECT payment_intent_id, status FROM donations"))
    assert statuses["pi_refunded"] == "refunded" and statuses["pi_open"] == "disputed"
    await roll(pool, settings)
    row = (await author_rows(pool))[("usr_3", day)]
    assert (row["donations_count"], row["donations_amount_cents"]) == (2, 700 + 600)
    kept = await pool.fetchval("SELECT sum(kept_cents) FROM donations_kept")
    assert row["donations_amount_cents"] == kept


async def test_leaderboard_ties_and_scopes(pool: asyncpg.Pool, settings: Settings) -> None:
    rules = [
        Rule("rul_z", "usr_9", ("rust",), "gpt"),
        Rule("rul_y", "usr_8", ("rust",), "gpt"),
        Rule("rul_x", "usr_8", ("go",), None),
    ]
    await insert_rules(pool, rules)
    # rul_y and rul_z tie (one COPY = 3); rul_x has one view.
    events = [
        Event("COPY", "rul_z", "ip1", at(BASE)),
        Event("COPY", "rul_y", "ip1", at(BASE)),
        Event("VIEW", "rul_x", "ip1", at(BASE)),
    ]
    await insert_events(pool, events)
    await run_rollup(Database(pool), end_day=BASE, days=1, settings=settings)
    board = await pool.fetch(
        "SELECT scope, scope_key, entity, rank, entity_id, score FROM leaderboard_snapshot"
        " WHERE day = $1 AND period = 'DAILY' ORDER BY entity, scope, scope_key, rank",
        BASE,
    )
    by_board: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
    for r in board:
        by_board.setdefault((r["entity"], r["scope"], r["scope_key"]), []).append(
            (r["entity_id"], r["score"])
        )
    assert by_board[("RULE", "GLOBAL", "")] == [("rul_y", 3), ("rul_z", 3), ("rul_x", 1)]
    assert by_board[("RULE", "TAG", "rust")] == [("rul_y", 3), ("rul_z", 3)]
    assert by_board[("RULE", "TAG", "go")] == [("rul_x", 1)]
    assert by_board[("RULE", "MODEL", "gpt")] == [("rul_y", 3), ("rul_z", 3)]
    assert by_board[("AUTHOR", "GLOBAL", "")] == [("usr_8", 4), ("usr_9", 3)]
    assert by_board[("AUTHOR", "TAG", "rust")] == [("usr_8", 3), ("usr_9", 3)]
    assert by_board[("AUTHOR", "MODEL", "gpt")] == [("usr_8", 3), ("usr_9", 3)]
    periods = await pool.fetch("SELECT DISTINCT period FROM leaderboard_snapshot")
    assert {r["period"] for r in periods} == {"DAILY", "WEEKLY", "MONTHLY", "ALL_TIME"}


async def test_board_size_limits_each_board(pool: asyncpg.Pool, db_url: str) -> None:
    rules = [Rule(f"rul_{n:02d}", f"usr_{n:02d}") for n in range(12)]
    await insert_rules(pool, rules)
    await insert_events(pool, [Event("VIEW", r.id, "ip", at(BASE)) for r in rules])
    settings = make_settings(db_url, leaderboard_size=10)
    await run_rollup(Database(pool), end_day=BASE, days=1, settings=settings)
    sizes = await pool.fetch(
        "SELECT period, entity, count(*) AS n, max(rank) AS top FROM leaderboard_snapshot"
        " GROUP BY period, entity"
    )
    assert {(r["n"], r["top"]) for r in sizes} == {(10, 10)}
    assert len(sizes) == 8


async def test_sparse_boards_are_ranked_beyond_the_head(pool: asyncpg.Pool, db_url: str) -> None:
    """Rule boards are ranked from each period's first board_size * 20 rules; a board with too
    few rules there (a rare tag, a rare model) is ranked from all its rules, and every board
    still equals the reference."""
    rules = [
        Rule(
            f"rul_{n:02d}",
            f"usr_{n % 7}",
            ("common", f"rare{n % 3}") if n > 50 else ("common",),
            "odd" if n % 29 == 0 else "gpt",
        )
        for n in range(60)
    ]
    ref = Reference(rules={r.id: r for r in rules}, board_size=2)
    for n, rule in enumerate(rules):  # rul_00 is the busiest, rul_59 the quietest
        ref.events += [Event("VIEW", rule.id, f"ip{k}", at(BASE)) for k in range(60 - n)]
        ref.events += [Event("COPY", rule.id, None, at(BASE - timedelta(days=n % 9)))]
    await insert_rules(pool, rules)
    await insert_events(pool, ref.events)
    settings = make_settings(db_url, leaderboard_size=2)  # a head of 40 rules per period
    await run_rollup(Database(pool), end_day=BASE, days=10, settings=settings)
    board = await board_rows(pool, BASE)
    assert board == ref.leaderboards(BASE)
    assert {(r[3], r[5]) for r in board if r[:2] == ("DAILY", "RULE") and r[4] == 1} >= {
        ("rare0", "rul_51"),
        ("odd", "rul_00"),
    }


async def test_dry_run_writes_nothing(pool: asyncpg.Pool, settings: Settings) -> None:
    await load(pool, fixed_reference())
    report = await roll(pool, settings, dry_run=True)
    assert report.rule_metric_daily > 0 and report.leaderboard_snapshot > 0  # type: ignore[attr-defined]
    assert report.top  # type: ignore[attr-defined]
    for table in (
        "rule_metric_daily",
        "author_metric_daily",
        "leaderboard_snapshot",
        "rollup_days",
        "rollup_stage_rule",
    ):
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    status = await pool.fetchval("SELECT status FROM rollup_runs")
    assert status == "dry_run"


async def test_retention_skips_days_whose_events_may_be_purged(
    pool: asyncpg.Pool, db_url: str
) -> None:
    settings = make_settings(db_url, event_retention_days=40)
    old = date.today() - timedelta(days=45)
    report = await run_rollup(Database(pool), end_day=old, days=1, settings=settings)
    assert report.days == [] and report.skipped_days == [old]


def test_trending_weights_parse() -> None:
    assert TrendingWeights.parse("view=1,copy=3,save=4,fork=6,vote=2") == TrendingWeights()
    assert TrendingWeights.parse("VIEW=0.5") == TrendingWeights(0.5, 0, 0, 0, 0)
    from app.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        TrendingWeights.parse("click=1")
    config = RollupConfig.from_settings(Settings(trending_weights="fork=10"))
    assert config.weights.fork == 10 and config.weights.view == 0


async def test_custom_half_life_and_weights(pool: asyncpg.Pool, db_url: str) -> None:
    ref = fixed_reference()
    ref.half_life = 1.5
    await load(pool, ref)
    settings = make_settings(db_url, trending_half_life_days=1.5)
    await roll(pool, settings)
    await check_against_reference(pool, ref, window(BASE + timedelta(days=3), 4))


async def test_a_fact_written_by_a_transaction_open_during_a_run_keeps_its_day_dirty(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    """A run sees every fact stamped before the oldest transaction still open when it starts;
    a slower writer's event is not in its numbers, so the day stays dirty for the next run."""
    ref = fixed_reference()
    await load(pool, ref)
    day = BASE + timedelta(days=1)
    async with pool.acquire() as writer:
        tx = writer.transaction()
        await tx.start()
        await writer.execute(
            "INSERT INTO events (type, rule_id, ts) VALUES ('FORK', 'rul_c', $1)", at(day, 8)
        )
        await roll(pool, settings)
        await tx.commit()
    dirty = await pool.fetch("SELECT day, reasons FROM rollup_dirty_days")
    assert [(r["day"], r["reasons"]) for r in dirty] == [(day, ["events"])]
    report = await run_rollup(Database(pool), settings=settings)
    assert report.days == [day]
    assert (await rule_rows(pool))[("rul_c", day)]["forks"] == 1
    assert await pool.fetchval("SELECT count(*) FROM rollup_dirty_days") == 0


async def test_updated_and_deleted_facts_make_their_days_dirty(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    ref = fixed_reference()
    await load(pool, ref)
    await roll(pool, settings)
    assert await pool.fetchval("SELECT count(*) FROM rollup_dirty_days") == 0
    moved = BASE + timedelta(days=2)
    await pool.execute(
        "UPDATE events SET ts = ts + interval '1 day' WHERE type = 'COPY'"
    )  # the copies of BASE+1 move to BASE+2
    await pool.execute("DELETE FROM donations WHERE author_id = 'usr_2'")
    dirty = await pool.fetch("SELECT day, reasons FROM rollup_dirty_days ORDER BY day")
    assert [(r["day"], r["reasons"]) for r in dirty] == [
        (BASE + timedelta(days=1), ["donations", "events"]),
        (moved, ["events"]),
    ]
    await run_rollup(Database(pool), settings=settings)
    rows = await rule_rows(pool)
    assert ("rul_b", BASE + timedelta(days=1)) not in rows
    assert rows[("rul_b", moved)]["copies"] == 2
    assert await pool.fetchval("SELECT count(*) FROM rollup_fact_changes") == 0
