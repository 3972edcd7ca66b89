"""Both clients through a real database outage: the service's PostgreSQL is stopped while they
send, the service answers 503 with Retry-After, the clients retry until it is back, and every
event they took is stored exactly once (counted by key)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from ingest_client import EventResult, IngestClient

from tests.client_helpers import run_node_tests, stored_keys, ts_client_built
from tests.conftest import APP_TOKEN, RunningServer, make_settings
from tests.factories import create_rule
from tests.faults.conftest import OwnedCluster, create_migrated_database

__all__ = ["ts_client_built"]  # the fixture, used by name

OUTAGE_S = 3.0


async def outage_service(
    cluster: OwnedCluster, start_server: Callable[..., Awaitable[RunningServer]]
) -> tuple[RunningServer, str, str]:
    url = await create_migrated_database(cluster)
    conn = await asyncpg.connect(url)
    try:
        rule = await create_rule(conn)
    finally:
        await conn.close()
    settings = make_settings(
        url, db_acquire_timeout_s=1.0, db_command_timeout_s=5.0, retry_after_s=1
    )
    return await start_server(settings), url, rule


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_python_client_rides_out_a_database_outage(
    owned_cluster: OwnedCluster, start_server: Callable[..., Awaitable[RunningServer]]
) -> None:
    server, url, rule = await outage_service(owned_cluster, start_server)
    results: list[EventResult] = []
    client = IngestClient(
        server.url,
        app_token=APP_TOKEN,
        flush_at=20,
        flush_interval_s=0.05,
        max_attempts=60,
        max_backoff_s=0.5,
        on_result=results.append,
    )

    async def send(batches: int) -> None:
        for _ in range(batches):
            for _ in range(20):
                client.track({"type": "FORK", "ruleId": rule})
            await asyncio.sleep(0.05)

    await send(10)
    # Crash it while batches are in flight: some commits land just before their 503.
    await asyncio.to_thread(owned_cluster.stop, "immediate")
    await send(10)
    await asyncio.sleep(OUTAGE_S)
    await asyncio.to_thread(owned_cluster.start)
    stats = await client.aclose(deadline_s=60)

    assert stats.retries.get("503", 0) >= 1, stats
    assert stats.failed == 0 and stats.dropped == 0
    assert {r.status for r in results} <= {"accepted", "duplicate"}
    keys = await stored_keys(url)
    assert set(keys) == {r.event["idempotencyKey"] for r in results}
    assert len(keys) == 400 and set(keys.values()) == {1}
    print(f"\npython client through an outage: {stats}")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("ts_client_built")
async def test_typescript_client_rides_out_a_database_outage(
    owned_cluster: OwnedCluster,
    start_server: Callable[..., Awaitable[RunningServer]],
    tmp_path: Path,
) -> None:
    server, url, rule = await outage_service(owned_cluster, start_server)
    await asyncio.to_thread(owned_cluster.stop, "fast")
    run = asyncio.create_task(
        run_node_tests("outage.test.mjs", url=server.url, rule_id=rule, tmp_path=tmp_path)
    )
    await asyncio.sleep(OUTAGE_S)
    await asyncio.to_thread(owned_cluster.start)
    node = await run
    assert node.returncode == 0, node.output
    assert node.report["stats"]["retries"].get("503", 0) >= 1
    keys = await stored_keys(url)
    assert set(keys) == set(node.report["keys"])
    assert len(keys) == 50 and set(keys.values()) == {1}
