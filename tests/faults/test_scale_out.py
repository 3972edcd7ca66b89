"""Several instances and several workers on one database (docs/scaling.md).

Two `ingest serve` processes, as two instances behind a load balancer would run, share one
database with `RATE_LIMIT_BACKEND=postgres`: views sent through either count once per client,
rule and 10-minute slot, an idempotency key sent to both is stored once, and one rate limit
holds across both. Two `ingest worker` processes on one database both run Procrastinate's
scheduler, and each periodic task is deferred and run once per scheduled time.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import croniter
import httpx
import orjson
import pytest

import jobs
from app.db import Database, create_pool
from app.rollup import run_rollup
from tests.conftest import _new_database, free_port, make_settings, with_database
from tests.factories import create_rule
from tests.faults.conftest import WorkerProcess, service_env

pytestmark = pytest.mark.slow

INGEST = str(Path(sys.executable).parent / "ingest")
APP_TOKEN = "scale-out-app-token"
HEADERS = {"x-app-token": APP_TOKEN}
EVENTS_PER_MINUTE = 60


@dataclass
class Instances:
    database_url: str
    urls: list[str]


def _wait_healthy(url: str, proc: subprocess.Popen[str], deadline: float) -> None:
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} never became healthy"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def instances(
    pg_admin_url: str, created_databases: list[str], template_db: str
) -> Iterator[Instances]:
    """Two `ingest serve` processes (one Sanic worker each) on one fresh database, with the
    PostgreSQL rate limiter and a limit of 60 event requests a minute (the default)."""
    url = with_database(
        pg_admin_url, _new_database(pg_admin_url, created_databases, template=template_db)
    )
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [INGEST, "serve"],
            env=service_env(
                DATABASE_URL=url,
                INGEST_APP_TOKEN=APP_TOKEN,
                CRON_SECRET="scale-out-cron",
                STRIPE_WEBHOOK_SECRET="whsec_scale_out",
                PORT=str(port),
                WEB_WORKERS="1",
                RATE_LIMIT_BACKEND="postgres",
                RATE_LIMIT_EVENTS_PER_MINUTE=str(EVENTS_PER_MINUTE),
                LOG_LEVEL="WARNING",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for port in ports
    ]
    try:
        deadline = time.monotonic() + 60
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for base, proc in zip(urls, procs, strict=True):
            _wait_healthy(base, proc, deadline)
        yield Instances(url, urls)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.communicate(timeout=60)


@pytest.fixture
async def clients(instances: Instances) -> AsyncIterator[list[httpx.AsyncClient]]:
    opened = [httpx.AsyncClient(base_url=url, timeout=30) for url in instances.urls]
    yield opened
    for client in opened:
        await client.aclose()


@pytest.fixture
async def shared_pool(instances: Instances) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(instances.database_url, max_size=4)
    yield pool
    await pool.close()


async def post_events(
    client: httpx.AsyncClient, events: list[dict[str, Any]], *, client_ip: str
) -> httpx.Response:
    """A batch as the site's API sends it, on behalf of `client_ip`."""
    headers = {**HEADERS, "x-forwarded-for": client_ip}
    return await client.post("/ingest/events", json={"events": events}, headers=headers)


async def test_views_and_idempotency_keys_sent_through_both_instances_count_once(
    clients: list[httpx.AsyncClient], shared_pool: asyncpg.Pool, instances: Instances
) -> None:
    rule = await create_rule(shared_pool)
    day = (datetime.now(UTC) - timedelta(days=1)).date()
    slot = datetime(day.year, day.month, day.day, 12, 0, tzinfo=UTC)

    def view(ip: str, minute: int, **extra: Any) -> dict[str, Any]:
        ts = (slot + timedelta(minutes=minute)).isoformat()
        return {"type": "VIEW", "ruleId": rule, "ip": ip, "ts": ts, **extra}

    # One client's views of one slot (12:00-12:09), half through each instance: one counts;
    # its view of the next slot counts too; another client's view counts on its own.
    sends = [(n % 2, [view("203.0.113.7", n)]) for n in range(8)]
    sends += [(1, [view("203.0.113.7", 14)]), (0, [view("198.51.100.9", 3)])]
    # One idempotency key sent to both instances five times each, at once (a SAVE), and a
    # keyed view of a third slot likewise: each is stored once.
    saved = {**view("192.0.2.1", 30, idempotencyKey="scale-out-save-1"), "type": "SAVE"}
    keyed = view("203.0.113.7", 25, idempotencyKey="scale-out-view-1")
    sends += [(n % 2, [saved]) for n in range(10)] + [(n % 2, [keyed]) for n in range(10)]
    answers = await asyncio.gather(
        *[post_events(clients[i], batch, client_ip="192.0.2.1") for i, batch in sends]
    )

    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    reports = [a.json() for a in answers]
    assert sum(r["accepted"] for r in reports) == 8 + 2 + 1 + 1
    assert sum(r["duplicates"] for r in reports) == 9 + 9
    stored = await shared_pool.fetch(
        "SELECT type, idempotency_key, ip_hash FROM events WHERE rule_id = $1", rule
    )
    keys = [r["idempotency_key"] for r in stored]
    assert (keys.count("scale-out-save-1"), keys.count("scale-out-view-1")) == (1, 1)
    # Both instances hash a client's IP with the one key in the database.
    assert len({r["ip_hash"] for r in stored if r["type"] == "VIEW"}) == 2

    await run_rollup(
        Database(shared_pool), settings=make_settings(instances.database_url), end_day=day, days=1
    )
    row = await shared_pool.fetchrow(
        "SELECT views, saves FROM rule_metric_daily WHERE rule_id = $1 AND day = $2", rule, day
    )
    # 203.0.113.7: slots 12:00, 12:10 and 12:20; 198.51.100.9: slot 12:00.
    assert tuple(row) == (4, 1)


async def test_one_rate_limit_holds_across_both_instances(
    clients: list[httpx.AsyncClient], shared_pool: asyncpg.Pool
) -> None:
    """100 requests of one client, half through each instance, at once: the bucket (60, refilled
    at one a second) lets 60 through, plus one per second the burst took."""
    rule = await create_rule(shared_pool)
    batch = [{"type": "COPY", "ruleId": rule}]
    started = time.monotonic()
    answers = await asyncio.gather(
        *[post_events(clients[n % 2], batch, client_ip="198.51.100.23") for n in range(100)]
    )
    elapsed = time.monotonic() - started

    allowed = [a for a in answers if a.status_code == 202]
    limited = [a for a in answers if a.status_code == 429]
    print(f"\n{len(allowed)} of 100 allowed across two instances in {elapsed:.2f} s")
    assert len(allowed) + len(limited) == 100
    refilled = math.floor(elapsed * EVENTS_PER_MINUTE / 60)
    assert EVENTS_PER_MINUTE <= len(allowed) <= EVENTS_PER_MINUTE + refilled
    assert all(a.headers.get("retry-after") for a in limited)
    assert {a.json()["error"]["code"] for a in limited} == {"rate_limited"}
    stored = await shared_pool.fetchval("SELECT count(*) FROM events WHERE rule_id = $1", rule)
    assert stored == len(allowed)


def periodic_tasks() -> dict[str, str]:
    """Every periodic task of the service: task name -> cron."""
    return {p.task.name: p.cron for p in jobs.app.periodic_registry.periodic_tasks.values()}


def due_at(cron: str, at: float) -> int:
    """The last time at or before `at` that `cron` fires (what a starting scheduler defers)."""
    return round(croniter.croniter(cron, at).get_prev(float))


def deferral_attempts(log: Path) -> list[tuple[str, int, str]]:
    """(task, scheduled time, outcome) of every periodic deferral in a worker's JSON log."""
    outcomes = {
        "periodic_task_deferred": "deferred",
        "periodic_task_already_deferred": "already deferred",
        "skip_periodic_task_queueing_lock": "queueing lock taken",
    }
    found = []
    for line in log.read_text().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("action") in outcomes:
            found.append(
                (entry["task_name"], int(entry["defer_timestamp"]), outcomes[entry["action"]])
            )
    return found


@dataclass
class Schedules:
    """What both workers' schedulers did, and the periodic jobs and deferrals in the database,
    read together (a scheduled time passing meanwhile adds to the jobs, never breaks a test)."""

    attempts: list[list[tuple[str, int, str]]]
    jobs: list[asyncpg.Record]
    defers: list[asyncpg.Record]

    @property
    def tried_by_both(self) -> set[tuple[str, int]]:
        first, second = ({(t, ts) for t, ts, _ in tried} for tried in self.attempts)
        return first & second

    def latest(self, worker: int) -> dict[str, int]:
        """Per task, the latest scheduled time this worker's scheduler tried to defer."""
        tried = self.attempts[worker]
        return {task: max(ts for t, ts, _ in tried if t == task) for task, _, _ in tried}

    def settled(self, tasks: set[str]) -> bool:
        """Both tried the same latest time of each of `tasks`, and every periodic job ran."""
        first, second = self.latest(0), self.latest(1)
        done = all(job["status"] not in ("todo", "doing") for job in self.jobs)
        return done and all(t in first and first[t] == second.get(t) for t in tasks)


async def read_schedules(conn: asyncpg.Connection, logs: list[Path]) -> Schedules:
    attempts = [deferral_attempts(log) for log in logs]
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        periodic_jobs = await conn.fetch(
            "SELECT j.task_name, (j.args->>'timestamp')::bigint AS at, j.status, j.attempts,"
            " (SELECT count(*) FROM procrastinate_events e"
            "  WHERE e.job_id = j.id AND e.type = 'started') AS starts"
            " FROM procrastinate_jobs j WHERE j.args ? 'timestamp'"
        )
        defers = await conn.fetch(
            "SELECT task_name, defer_timestamp AS at FROM procrastinate_periodic_defers"
        )
    return Schedules(attempts, list(periodic_jobs), list(defers))


@pytest.mark.timeout(120)
async def test_two_workers_defer_and_run_each_periodic_task_once_per_schedule(
    db_url: str,
    start_worker: Callable[..., Awaitable[WorkerProcess]],
    cluster_tmp: Path,
) -> None:
    """Both workers' schedulers defer, at start, the last due run of every periodic task fired
    in the last 10 minutes (Procrastinate's catch-up window), and each later run: for each
    scheduled time one wins and the other is told it is already deferred, and the one job runs
    once."""
    started = time.time()
    # Every task fired within the window, with a margin for the workers' start-up.
    expected = {t for t, cron in periodic_tasks().items() if started - due_at(cron, started) < 540}
    logs = [cluster_tmp / "worker-1.log", cluster_tmp / "worker-2.log"]
    await asyncio.gather(
        *[start_worker(db_url, queues=None, log=log, LOG_LEVEL="DEBUG") for log in logs]
    )
    conn = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + 60
        while not (seen := await read_schedules(conn, logs)).settled(expected):
            assert time.monotonic() < deadline, f"the schedulers never settled: {seen}"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()

    both = seen.tried_by_both
    assert expected <= {task for task, _ in both}
    for task, at in both:
        outcomes = sorted(
            o for tried in seen.attempts for t, ts, o in tried if (t, ts) == (task, at)
        )
        assert outcomes == ["already deferred", "deferred"], (task, at, outcomes)
    scheduled = [(job["task_name"], job["at"]) for job in seen.jobs]
    assert len(set(scheduled)) == len(scheduled)  # one job per task and scheduled time
    assert both <= set(scheduled)
    assert sorted((d["task_name"], d["at"]) for d in seen.defers) == sorted(scheduled)
    # Each ran once: one start, one attempt, succeeded.
    assert {(job["status"], job["attempts"], job["starts"]) for job in seen.jobs} == {
        ("succeeded", 1, 1)
    }
