"""Rollup triggers: the periodic tasks, POST /cron/rollup, `procrastinate defer`, the CLI, a
killed run, and events loaded through the public endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

import jobs
from app.db import Database
from app.rollup import utc_today, window
from jobs.rollup import NIGHTLY_CRON, REFRESH_CRON
from tests.conftest import APP_HEADERS, CRON_HEADERS, RunningServer
from tests.rollup_helpers import (
    COUNT_COLUMNS,
    Event,
    Reference,
    Rule,
    at,
    author_rows,
    board_rows,
    counts_of,
    insert_events,
    insert_rules,
    rule_rows,
)

RULES = [Rule("rul_p", "usr_p", ("python",), "gpt"), Rule("rul_q", "usr_q", ("go",), None)]


def test_periodic_tasks_are_registered_with_the_documented_schedule() -> None:
    app = jobs.create_app("")
    periodic = {key: task.cron for key, task in app.periodic_registry.periodic_tasks.items()}
    assert periodic[("rollup", "nightly_rollup")] == NIGHTLY_CRON == "10 0 * * *"
    assert periodic[("rollup_refresh", "rollup_refresh")] == REFRESH_CRON == "*/5 * * * *"
    assert periodic[("notify_authors", "notify_every_5_minutes")] == "*/5 * * * *"
    assert periodic[("retry_stalled_jobs", "every_minute")] == "* * * * *"
    assert ("purge_old_events", "nightly_event_retention") in periodic
    task = app.tasks["rollup"]
    assert task.lock == "rollup" and task.queueing_lock == "rollup"
    assert task.retry_strategy is not None and task.retry_strategy.max_attempts == 5
    for name in ("rollup_refresh", "rollup_backfill"):  # the older name still works
        assert app.tasks[name].lock == "rollup"  # never beside a rollup
        assert app.tasks[name].queueing_lock == "rollup_refresh"


async def test_http_trigger_deduplicates_and_the_job_rolls_up(
    http: httpx.AsyncClient, pool: asyncpg.Pool, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    await insert_rules(pool, RULES)
    day = utc_today() - timedelta(days=1)
    await insert_events(pool, [Event("COPY", "rul_p", "ip", at(day, 1))])
    body = {"date": day.isoformat(), "daysToProcess": 2}
    first = await http.post("/cron/rollup", json=body, headers=CRON_HEADERS)
    second = await http.post("/cron/rollup", json={}, headers=CRON_HEADERS)
    assert first.status_code == second.status_code == 202, first.text
    assert first.json()["alreadyQueued"] is False and second.json()["alreadyQueued"] is True
    assert first.json()["jobId"] == second.json()["jobId"]
    waiting = await pool.fetch("SELECT args FROM procrastinate_jobs WHERE task_name = 'rollup'")
    assert [r["args"] for r in waiting] == [{"date": day.isoformat(), "days": 2}]

    await run_jobs()
    rows = await rule_rows(pool)
    assert rows[("rul_p", day)]["copies"] == 1
    run = await pool.fetchrow("SELECT status, days, actor FROM rollup_runs")
    assert run["status"] == "succeeded" and run["days"] == [day - timedelta(days=1), day]
    actions = await pool.fetch("SELECT action FROM audit_log ORDER BY id")
    assert [a["action"] for a in actions].count("rollup.requested") == 2
    assert "rollup.run" in [a["action"] for a in actions]
    statuses = await pool.fetch("SELECT task_name, status::text FROM procrastinate_jobs")
    assert {(r["task_name"], r["status"]) for r in statuses} >= {
        ("rollup", "succeeded"),
        ("notify_authors", "succeeded"),
    }


async def test_http_trigger_validation_and_credentials(http: httpx.AsyncClient) -> None:
    assert (await http.post("/cron/rollup", json={})).status_code == 401
    for body in ({"daysToProcess": 0}, {"daysToProcess": 31}, {"date": "yesterday"}, {"x": 1}):
        response = await http.post("/cron/rollup", json=body, headers=CRON_HEADERS)
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == "validation_failed"


async def test_http_dry_run_answers_200_and_writes_nothing(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await insert_rules(pool, RULES)
    day = date(2026, 1, 5)
    await insert_events(pool, [Event("FORK", "rul_q", "ip", at(day, 3))])
    body = {"date": day.isoformat(), "dryRun": True, "daysToProcess": 1}
    response = await http.post("/cron/rollup", json=body, headers=CRON_HEADERS)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["dryRun"] is True and report["days"] == [day.isoformat()]
    assert report["rowCounts"]["rule_metric_daily"] == 1
    assert report["rowCounts"]["leaderboard_snapshot"] > 0
    assert report["top"][0]["entityId"] in {"rul_q", "usr_q"}
    for table in ("rule_metric_daily", "author_metric_daily", "leaderboard_snapshot"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0
    assert await pool.fetchval("SELECT count(*) FROM procrastinate_jobs") == 0


async def test_nightly_run_rolls_two_days_and_every_dirty_one(
    pool: asyncpg.Pool, proc_app: Any, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    await insert_rules(pool, RULES)
    today = utc_today()
    old = today - timedelta(days=20)
    await insert_events(pool, [Event("SAVE", "rul_q", "ip", at(old, 5))])
    midnight = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(minutes=10)
    await proc_app.configure_task("rollup").defer_async(timestamp=int(midnight.timestamp()))
    await run_jobs()
    run = await pool.fetchrow("SELECT days, day_reasons FROM rollup_runs")
    assert run["days"] == [old, today - timedelta(days=2), today - timedelta(days=1)]
    assert run["day_reasons"] == {
        old.isoformat(): ["never_rolled"],
        (today - timedelta(days=2)).isoformat(): ["schedule"],
        (today - timedelta(days=1)).isoformat(): ["schedule"],
    }
    assert (await rule_rows(pool))[("rul_q", old)]["saves"] == 1


async def test_refresh_rolls_only_dirty_days_and_nothing_when_none(
    pool: asyncpg.Pool, proc_app: Any, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    """The schedule's refresh: with nothing dirty no rollup statement runs (no run row, no
    audit row); an event received after the last run is rolled by the next refresh, with the
    later days' trending and boards."""
    await proc_app.configure_task("rollup_refresh").defer_async(timestamp=0)
    await run_jobs()
    assert await pool.fetchval("SELECT count(*) FROM rollup_runs") == 0
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'rollup.run'") == 0

    await insert_rules(pool, RULES)
    today = utc_today()
    days = [today - timedelta(days=n) for n in (3, 2, 1)]
    await insert_events(pool, [Event("COPY", "rul_p", "ip", at(d, 4)) for d in days])
    await proc_app.configure_task("rollup_refresh").defer_async(timestamp=1)
    await run_jobs()
    first = await pool.fetchrow("SELECT id, days, day_reasons FROM rollup_runs")
    assert first["days"] == days
    assert first["day_reasons"] == {d.isoformat(): ["never_rolled"] for d in days}
    assert await pool.fetchval("SELECT count(*) FROM rollup_dirty_days") == 0

    await proc_app.configure_task("rollup_refresh").defer_async(timestamp=2)
    await run_jobs()
    assert await pool.fetchval("SELECT count(*) FROM rollup_runs") == 1  # nothing dirty: no run

    await insert_events(pool, [Event("FORK", "rul_q", "ip", at(days[0], 9))])
    await proc_app.configure_task("rollup_refresh").defer_async(timestamp=3)
    await run_jobs()
    second = await pool.fetchrow(
        "SELECT days, day_reasons FROM rollup_runs WHERE id > $1", first["id"]
    )
    assert second["days"] == [days[0]]
    assert second["day_reasons"] == {
        days[0].isoformat(): ["events"],
        days[1].isoformat(): ["cascade"],
        days[2].isoformat(): ["cascade"],
    }
    assert (await rule_rows(pool))[("rul_q", days[0])]["forks"] == 1
    weekly = await pool.fetchval(
        "SELECT score FROM leaderboard_snapshot WHERE day = $1 AND period = 'WEEKLY'"
        " AND entity = 'RULE' AND scope = 'GLOBAL' AND entity_id = 'rul_q'",
        days[2],
    )
    assert weekly == 6.0  # the late fork reached the boards of the days after it


@pytest.mark.parametrize(
    "args",
    [
        {"date": "not-a-date"},
        {"date": "9999-12-31"},
        {"date": "1999-12-31"},
        {"days": 0},
        {"days": -3},
        {"days": 31},
        {"days": 5000},
        {"days": "7"},
    ],
)
async def test_a_rollup_with_invalid_arguments_fails_at_once(
    pool: asyncpg.Pool,
    proc_app: Any,
    run_jobs: Callable[[], Awaitable[None]],
    args: dict[str, Any],
) -> None:
    """A malformed or out-of-range date or day count from a shell cannot succeed on a retry:
    one attempt, then failed (the same ranges as POST /cron/rollup and `ingest rollup`)."""
    job_id = await proc_app.configure_task("rollup").defer_async(**args)
    await run_jobs()
    # (a periodic job may run beside it when the test crosses a scheduled minute)
    job = await pool.fetchrow(
        "SELECT status::text, attempts FROM procrastinate_jobs WHERE id = $1", job_id
    )
    assert (job["status"], job["attempts"]) == ("failed", 1)


def _subprocess_env(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"}
    env.update({"DATABASE_URL": db_url, "LOG_LEVEL": "WARNING"})
    return env


async def test_shell_defer_then_worker_matches_independent_computation(
    db_url: str, pool: asyncpg.Pool, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    await insert_rules(pool, RULES)
    ref = Reference(rules={r.id: r for r in RULES})
    end = date(2026, 1, 31)
    for n, day in enumerate(window(end, 7)):
        ref.events += [Event("VIEW", "rul_p", "ip1", at(day, h)) for h in range(n + 2)]
        ref.events += [Event("VOTE", "rul_q", None, at(day, 2))] * (n % 3)
    await insert_events(pool, ref.events)
    args = '{"date": "2026-01-31", "days": 7}'
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "procrastinate", "--app=jobs.app", "defer", "rollup", args],
        env=_subprocess_env(db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    await run_jobs()
    assert counts_of(await rule_rows(pool), COUNT_COLUMNS) == ref.rule_metrics()
    assert await board_rows(pool, end) == ref.leaderboards(end)


async def test_cli_rollup_and_dry_run(db_url: str, pool: asyncpg.Pool) -> None:
    await insert_rules(pool, RULES)
    await insert_events(pool, [Event("COPY", "rul_p", "ip", at(date(2026, 2, 1), 4))])
    command = [sys.executable, "-m", "app.cli", "rollup", "--date", "2026-02-01", "--days", "1"]
    dry = await asyncio.to_thread(
        subprocess.run,
        [*command, "--dry-run"],
        env=_subprocess_env(db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert '"dryRun": true' in dry.stdout
    assert await pool.fetchval("SELECT count(*) FROM rule_metric_daily") == 0
    real = await asyncio.to_thread(
        subprocess.run,
        command,
        env=_subprocess_env(db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert real.returncode == 0, real.stderr
    assert await pool.fetchval("SELECT copies FROM rule_metric_daily") == 1


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "rollup", *args],
        env=_subprocess_env(db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("days", ["0", "-3", "31", "5000", "seven"])
async def test_cli_refuses_day_counts_the_job_and_http_refuse(db_url: str, days: str) -> None:
    done = await asyncio.to_thread(_cli, db_url, "--days", days)
    assert done.returncode == 2
    assert "must be a whole number from 1 to 30" in done.stderr


async def test_cli_status_lists_dirty_days_and_refresh_rolls_them(
    db_url: str, pool: asyncpg.Pool
) -> None:
    await insert_rules(pool, RULES)
    day = utc_today() - timedelta(days=3)
    await insert_events(pool, [Event("SAVE", "rul_q", "ip", at(day, 4))])
    status = await asyncio.to_thread(_cli, db_url, "--status")
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout)
    assert [(d["day"], d["reasons"]) for d in listed["dirtyDays"]] == [
        (day.isoformat(), ["never_rolled"])
    ]
    refresh = await asyncio.to_thread(_cli, db_url, "--refresh")
    assert refresh.returncode == 0, refresh.stderr
    assert json.loads(refresh.stdout)["days"] == [day.isoformat()]
    after = json.loads((await asyncio.to_thread(_cli, db_url, "--status")).stdout)
    assert after["dirtyDays"] == [] and after["lastRuns"][0]["status"] == "succeeded"


async def _snapshot(pool: asyncpg.Pool) -> dict[date, Any]:
    """Everything the rollup wrote, per day."""
    by_day: dict[date, Any] = {}
    rules, authors = await rule_rows(pool), await author_rows(pool)
    days = {d for _, d in rules} | {d for _, d in authors}
    for day in days:
        by_day[day] = (
            {k: v for k, v in rules.items() if k[1] == day},
            {k: v for k, v in authors.items() if k[1] == day},
            await board_rows(pool, day),
        )
    return by_day


async def test_killed_run_leaves_each_day_old_or_new(db_url: str, pool: asyncpg.Pool) -> None:
    rules = [
        Rule(f"rul_k{n}", f"usr_k{n % 17}", (f"t{n % 9}", f"u{n % 4}"), f"m{n % 3}")
        for n in range(80)
    ]
    await insert_rules(pool, rules)
    end = date(2026, 3, 14)
    days = window(end, 12)
    rng = random.Random(7)

    def batch(scale: int) -> list[Event]:
        return [
            Event(
                rng.choice(["VIEW", "VIEW", "COPY", "FORK", "VOTE"]),
                rng.choice(rules).id,
                f"ip{rng.randrange(40)}",
                at(day, rng.randrange(24), rng.randrange(60)),
            )
            for day in days
            for _ in range(scale)
        ]

    await insert_events(pool, batch(400))
    command = [sys.executable, "-m", "app.cli", "rollup", "--date", end.isoformat(), "--days", "12"]
    env = _subprocess_env(db_url) | {"ROLLUP_PARALLELISM": "1"}
    await asyncio.to_thread(subprocess.run, command, env=env, check=True, timeout=60)
    old = await _snapshot(pool)
    await insert_events(pool, batch(300))

    first_run = await pool.fetchval("SELECT max(id) FROM rollup_runs")
    process = await asyncio.create_subprocess_exec(*command, env=env)
    # Kill the run in its apply phase, right after some day has committed.
    committed = 0
    for _ in range(5000):
        committed = await pool.fetchval(
            "SELECT count(*) FROM rollup_days WHERE run_id > $1", first_run
        )
        if committed >= rng.randint(1, 4):
            break
        await asyncio.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    await process.wait()
    middle = await _snapshot(pool)

    await asyncio.to_thread(subprocess.run, command, env=env, check=True, timeout=60)
    new = await _snapshot(pool)
    assert old != new
    for day in days:
        assert middle[day] in (old[day], new[day]), day
    assert 1 <= sum(middle[d] == new[d] for d in days) < len(days)


async def test_events_through_the_public_endpoint_roll_up(
    server: RunningServer, pool: asyncpg.Pool
) -> None:
    await insert_rules(pool, RULES)
    today = utc_today()
    events = []
    for offset in range(3):
        day = today - timedelta(days=offset + 1)
        ts = at(day, 6).isoformat().replace("+00:00", "Z")
        # Eight views from one client in one minute: the intake window keeps one.
        events += [{"type": "VIEW", "ruleId": "rul_p", "ip": "203.0.113.9", "ts": ts}] * 8
        events += [{"type": "COPY", "ruleId": "rul_q", "ts": ts, "idempotencyKey": f"k{offset}"}]
        events += [{"type": "COPY", "ruleId": "rul_q", "ts": ts, "idempotencyKey": f"k{offset}"}]
    response = await server.client.post(
        "/ingest/events", json={"events": events}, headers=APP_HEADERS
    )
    assert response.status_code == 202, response.text
    from app.rollup import run_rollup

    await run_rollup(Database(pool), end_day=today, days=4, settings=server.app.ctx.settings)
    rows = counts_of(await rule_rows(pool), COUNT_COLUMNS)
    for offset in range(3):
        day = today - timedelta(days=offset + 1)
        assert rows[("rul_p", day)]["views"] == 1
        assert rows[("rul_q", day)]["copies"] == 1
