"""The HTTP service behind a real PgBouncer 1.18 in transaction pooling (docs/scaling.md).

PgBouncer below 1.21 does not carry prepared statements across the server connections it
hands out per transaction; with `DB_STATEMENT_CACHE_SIZE=0` the service uses none (asyncpg's
cache off, psycopg's automatic preparation off). Procrastinate workers connect directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import APP_HEADERS, CRON_HEADERS, RunningServer, free_port, make_settings
from tests.factories import add_source, create_rule
from tests.faults.conftest import OwnedCluster, create_migrated_database
from tests.stripe_helpers import deliver, event, new_id, payment_intent

POOL_SIZE = 2  # server connections per database: far fewer than the service's clients


@pytest.fixture
def pgbouncer(owned_cluster: OwnedCluster, cluster_tmp: Path) -> Iterator[int]:
    """PgBouncer in transaction mode in front of the owned cluster; yields its port."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian package `pgbouncer`; .ci/run installs it)")
    folder = cluster_tmp / "pgbouncer"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # PgBouncer refuses to run as root: as root, it runs as nobody
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={owned_cluster.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {POOL_SIZE}\nmax_client_conn = 500\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
    )
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (folder / "pgbouncer.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "pgbouncer never listened"
            time.sleep(0.1)
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        print(f"\n{version.splitlines()[0]}, transaction pooling, {POOL_SIZE} server connections")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def _traffic(client: httpx.AsyncClient, direct: asyncpg.Pool) -> list[httpx.Response]:
    """Concurrent intake, crawl, Stripe and rollup-trigger requests, then some in a row."""
    rule = await create_rule(direct)
    source_id, _ = await add_source(direct)

    async def events(n: int) -> httpx.Response:
        batch = [{"type": "SAVE", "ruleId": rule, "idempotencyKey": f"k{n}-{i}"} for i in range(20)]
        return await client.post("/ingest/events", json={"events": batch}, headers=APP_HEADERS)

    async def crawl(n: int) -> httpx.Response:
        items = [
            {"externalId": f"x{n}-{i}", "url": f"https://example.com/{n}/{i}", "title": f"T {i}"}
            for i in range(5)
        ]
        body = {"sourceId": source_id, "items": items}
        return await client.post("/ingest/crawl", json=body, headers=APP_HEADERS)

    async def webhook(n: int) -> httpx.Response:
        return await deliver(
            client, event("payment_intent.processing", payment_intent(new_id("pi")))
        )

    async def rollup(n: int) -> httpx.Response:
        return await client.post("/cron/rollup", json={"daysToProcess": 1}, headers=CRON_HEADERS)

    calls: list[Callable[[int], Awaitable[httpx.Response]]] = [events, crawl, webhook, rollup]
    answers = await asyncio.gather(*[call(n) for n in range(12) for call in calls])
    # One after another: the same job-queue connection defers again and again (psycopg
    # prepares a statement from its sixth run on a connection).
    answers += [await webhook(n) for n in range(12)]
    return answers


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_every_route_works_through_pgbouncer_in_transaction_mode(
    owned_cluster: OwnedCluster,
    pgbouncer: int,
    start_server: Callable[..., Awaitable[RunningServer]],
) -> None:
    direct_url = await create_migrated_database(owned_cluster)
    pooled_url = f"postgresql://postgres@127.0.0.1:{pgbouncer}/ingest"
    running = await start_server(make_settings(pooled_url, db_statement_cache_size=0))
    direct = await asyncpg.create_pool(direct_url, min_size=1, max_size=2)
    try:
        statuses = [answer.status_code for answer in await _traffic(running.client, direct)]
        statuses.append((await running.client.get("/health")).status_code)
        counts = await direct.fetchrow(
            "SELECT (SELECT count(*) FROM events) AS events,"
            " (SELECT count(*) FROM crawl_items) AS items,"
            " (SELECT count(*) FROM stripe_events) AS webhooks,"
            " (SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'process_stripe_event')"
            "   AS stripe_jobs,"
            " (SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'rollup') AS rollups"
        )
    finally:
        await direct.close()
    assert sorted(set(statuses)) == [200, 202], statuses
    assert dict(counts) == {
        "events": 12 * 20,
        "items": 12 * 5,
        "webhooks": 24,
        "stripe_jobs": 24,
        "rollups": 1,  # its queueing lock: one waiting job for 12 triggers
    }


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_pooler_that_loses_prepared_statements_is_named_and_turns_health_red(
    owned_cluster: OwnedCluster,
    pgbouncer: int,
    start_server: Callable[..., Awaitable[RunningServer]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same traffic with asyncpg's cache at its default (the misconfiguration): what fails
    is a 503 naming the problem, never a generic 500; the log says it once; /health is 503.
    (This is also the control of the test above: without the setting, requests fail.)"""
    direct_url = await create_migrated_database(owned_cluster)
    pooled_url = f"postgresql://postgres@127.0.0.1:{pgbouncer}/ingest"
    running = await start_server(make_settings(pooled_url))
    direct = await asyncpg.create_pool(direct_url, min_size=1, max_size=2)
    try:
        answers = await _traffic(running.client, direct)
        health = await running.client.get("/health")
    finally:
        await direct.close()
    failed = [a for a in answers if a.status_code >= 500]
    print(f"\nstatement cache on, through PgBouncer: {len(failed)} of {len(answers)} failed")
    assert failed
    assert {a.status_code for a in failed} == {503}
    assert {a.json()["error"]["code"] for a in failed} == {"database_misconfigured"}
    assert all("DB_STATEMENT_CACHE_SIZE=0" in a.json()["error"]["message"] for a in failed)
    assert all(a.headers.get("retry-after") for a in failed)
    assert health.status_code == 503, health.text
    assert "DB_STATEMENT_CACHE_SIZE=0" in health.json()["database"]["error"]
    named = [r for r in caplog.records if "DB_STATEMENT_CACHE_SIZE=0" in r.getMessage()]
    assert len(named) == 1 and named[0].levelname == "ERROR"
    assert not [r for r in caplog.records if r.getMessage() == "request failed"]
