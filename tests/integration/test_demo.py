"""`ingest demo`: the catalogue and a week of activity through the service's own paths;
loading twice changes nothing; a database with real users or rules is refused unless forced.
And what a real rollup run reports (its boards' head, the day it ends on), on that data."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from app import demo
from app.cli import main
from app.db import Database
from app.rollup import rollup_and_record
from app.settings import Settings

TABLES = (
    "users",
    "rules",
    "crawl_sources",
    "crawl_items",
    "events",
    "stripe_events",
    "donations",
    "rollup_runs",
    "rule_metric_daily",
    "leaderboard_snapshot",
    "audit_log",
)


async def _counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


async def test_the_demo_loads_a_catalogue_and_a_week_of_activity(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    report = await demo.load_demo(Database(pool), settings, activity=True)
    counts = await _counts(pool)
    assert (counts["users"], counts["rules"]) == (5, 5 + len(demo.CRAWL_ITEMS))
    tagged = await pool.fetchval("SELECT count(*) FROM rules WHERE tags <> '{}' AND model <> ''")
    assert tagged == counts["rules"]
    assert report.events == counts["events"] > 100
    days = await pool.fetchval("SELECT count(DISTINCT (ts AT TIME ZONE 'UTC')::date) FROM events")
    assert days in (demo.DAYS, demo.DAYS + 1)  # a week counted back from now
    statuses = await pool.fetch("SELECT status FROM donations ORDER BY payment_intent_id")
    assert [r["status"] for r in statuses] == ["succeeded", "succeeded", "refunded"]
    applied = await pool.fetchval(
        "SELECT count(*) FROM stripe_events WHERE outcome = 'applied' AND source = 'webhook'"
    )
    assert applied == 4
    run = await pool.fetchrow("SELECT status, cardinality(days) AS days FROM rollup_runs")
    assert (run["status"], run["days"]) == ("succeeded", demo.DAYS)
    assert counts["leaderboard_snapshot"] > 0
    # The rollup saw every fact: nothing is left for the next refresh.
    assert await pool.fetchval("SELECT count(*) FROM rollup_dirty_days") == 0
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'demo.loaded'") == 1


async def test_loading_twice_changes_nothing(pool: asyncpg.Pool, settings: Settings) -> None:
    await demo.load_demo(Database(pool), settings, activity=True)
    before = await _counts(pool)
    again = await demo.load_demo(Database(pool), settings, activity=True)
    assert await _counts(pool) == before
    assert again.lines()[-1] == "demo activity: already loaded, left as it is"


async def test_the_catalogue_alone_then_the_activity(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await demo.load_demo(Database(pool), settings, activity=False)
    assert (await _counts(pool))["events"] == 0
    report = await demo.load_demo(Database(pool), settings, activity=True)
    assert report.users == 0 and report.events


async def test_a_database_with_real_users_is_refused_unless_forced(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await pool.execute("INSERT INTO users (id, handle) VALUES ('usr_real', 'someone')")
    with pytest.raises(demo.DemoRefused):
        await demo.load_demo(Database(pool), settings, activity=True)
    assert (await _counts(pool))["rules"] == 0
    await demo.load_demo(Database(pool), settings, activity=False, force=True)
    assert (await _counts(pool))["rules"] == 5 + len(demo.CRAWL_ITEMS)


async def test_a_real_run_reports_the_head_of_its_last_days_boards(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await demo.load_demo(Database(pool), settings, activity=False)
    await demo.load_events(Database(pool), settings, now=demo.datetime.now(demo.UTC), actor="test")
    report = await rollup_and_record(settings, actor="test", days=2)
    expected = await pool.fetch(
        "SELECT rank, entity_id FROM leaderboard_snapshot WHERE day = $1 AND period = 'DAILY' "
        "AND scope = 'GLOBAL' AND entity = 'RULE' ORDER BY rank LIMIT 5",
        report.end_day,
    )
    assert expected
    top = [(e["rank"], e["entityId"]) for e in report.top if e["entity"] == "RULE"]
    assert top[: len(expected)] == [(r["rank"], r["entity_id"]) for r in expected]


async def test_a_refresh_ends_on_the_last_day_it_rolls(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await demo.load_demo(Database(pool), settings, activity=True)
    await pool.execute(
        "INSERT INTO events (type, rule_id, ts) VALUES ('COPY', 'rul_1', now() - interval '3 days')"
    )
    report = await rollup_and_record(settings, actor="test")
    assert report.days and report.end_day == report.days[-1]
    assert report.end_day < demo.datetime.now(demo.UTC).date()


def test_ingest_rollup_prints_its_report_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report on stdout, and not again as the run's log line on stderr (the CLI's logs
    are JSON lines on stderr)."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    rollup_logger = logging.getLogger("ingest.rollup")
    level = rollup_logger.level
    try:
        assert main(["demo", "--activity"]) == 0
        logging.getLogger("ingest.rollup").warning("probe")  # the capture sees the JSON logs
        printed = capsys.readouterr()
        assert '"msg":"probe"' in printed.err
        assert "rollup finished" not in printed.err  # the demo prints its own summary
        assert main(["rollup", "--days", "2"]) == 0
    finally:
        rollup_logger.setLevel(level)
    printed = capsys.readouterr()
    assert printed.out.count('"runId"') == 1 and '"top"' in printed.out
    assert "rollup finished" not in printed.err
