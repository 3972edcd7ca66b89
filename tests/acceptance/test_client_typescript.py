"""The TypeScript client (clients/typescript): its tests run with Node's own test runner
(`node --test`) against a live service started here, and the database is checked here after
each run. Skipped, saying so, where there is no `node` (`.ci/run` says it too). The database
outage is in tests/faults/test_client_outage.py."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from tests.client_helpers import (
    TS_CLIENT,
    event_requests,
    losing_proxy,
    run_node_tests,
    stored_keys,
    ts_client_built,
)
from tests.conftest import RunningServer, make_settings
from tests.factories import add_source, create_rule

__all__ = ["ts_client_built"]  # the fixture, used by name

pytestmark = pytest.mark.usefixtures("ts_client_built")


def test_the_client_own_rules() -> None:
    """Retry-After, backoff, bounded attempts, body splitting and the close deadline, against a
    scripted fetch (no service)."""
    run = subprocess.run(
        ["node", "--test", "test/unit.test.mjs"],
        cwd=TS_CLIENT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


async def test_batches_results_and_endpoints(
    server: RunningServer, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    rule = await create_rule(pool)
    source_id, _ = await add_source(pool)
    run = await run_node_tests(
        "batching.test.mjs",
        url=server.url,
        rule_id=rule,
        tmp_path=tmp_path,
        INGEST_SOURCE_ID=source_id,
    )
    assert run.returncode == 0, run.output
    # 25 by size (3 requests), 3 by time (1), 1 of 3 with rejections (1).
    keys = await stored_keys(db_url)
    assert sum(keys.values()) == 29 and set(keys.values()) == {1}
    assert await event_requests(db_url) == 5


async def test_429_is_retried_after_retry_after(
    start_server: Callable[..., Awaitable[RunningServer]],
    pool: asyncpg.Pool,
    db_url: str,
    tmp_path: Path,
) -> None:
    server = await start_server(make_settings(db_url, rate_limit_events_per_minute=60))
    run = await run_node_tests(
        "ratelimit.test.mjs", url=server.url, rule_id=await create_rule(pool), tmp_path=tmp_path
    )
    assert run.returncode == 0, run.output
    keys = await stored_keys(db_url)
    assert set(keys) == set(run.report["keys"]) and set(keys.values()) == {1}
    assert len(keys) == 64


async def test_a_batch_whose_answer_was_lost_is_stored_once(
    server: RunningServer, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    async with losing_proxy(server.url, lose={0, 2}) as proxy:
        run = await run_node_tests(
            "exactly-once.test.mjs",
            url=proxy.url,
            rule_id=await create_rule(pool),
            tmp_path=tmp_path,
        )
    assert run.returncode == 0, run.output
    assert proxy.lost == 2
    keys = await stored_keys(db_url)
    assert len(keys) == 100 and set(keys.values()) == {1}
    assert set(keys) == set(run.report["keys"])


async def test_a_process_that_closes_its_client_loses_nothing_it_took(
    server: RunningServer, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    run = await run_node_tests(
        "close.test.mjs", url=server.url, rule_id=await create_rule(pool), tmp_path=tmp_path
    )
    assert run.returncode == 0, run.output
    taken = set(run.report["taken"])
    keys = await stored_keys(db_url)
    assert set(keys) == taken and set(keys.values()) == {1}
    assert run.report["stats"]["dropped"] == 2000 - len(taken)
