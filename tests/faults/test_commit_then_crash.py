"""A crash between the webhook's inbox commit and its defer, through the real endpoint.

tests/integration/test_stripe_jobs.py::test_the_sweeper_picks_up_a_row_stranded_without_a_job
covers the sweeper's choice of rows; this one goes end to end: the server commits the event,
its defer fails (as if the process died right there), Stripe has its 200, and the periodic
sweeper task, run by a worker, queues and applies the event once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.conftest import RunningServer, drain_queue, make_settings
from tests.stripe_helpers import checkout_session, deliver, event, metadata, new_id


async def test_event_committed_but_never_deferred_is_finished_by_the_sweeper(
    start_server: Callable[..., Awaitable[RunningServer]],
    db_url: str,
    pool: asyncpg.Pool,
    proc_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def crash(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("process gone between commit and defer")

    server = await start_server(make_settings(db_url))
    # The server's queue alone: the sweeper below queues through its own resources.
    monkeypatch.setattr(server.app.ctx.res.queue, "stripe_event", crash)
    pi = new_id("pi")
    evt = event(
        "checkout.session.completed", checkout_session(pi, amount=650, meta=metadata("usr_a"))
    )
    answer = await deliver(server.client, evt)
    assert answer.status_code == 200  # committed: Stripe must not be told to retry
    assert await pool.fetchval("SELECT count(*) FROM stripe_events WHERE processed_at IS NULL") == 1
    assert await pool.fetchval("SELECT count(*) FROM procrastinate_jobs") == 0

    settings = make_settings(db_url, stripe_sweep_grace_s=0)
    await proc_app.configure_task("sweep_stripe_inbox").defer_async(timestamp=0)
    for _ in range(2):  # the sweep, then the job it queued
        await drain_queue(proc_app, pool, settings, queues=["stripe"])
    inbox = await pool.fetchrow("SELECT outcome, processed_at FROM stripe_events")
    assert inbox["outcome"] == "applied" and inbox["processed_at"] is not None
    donation = await pool.fetchrow("SELECT amount_cents, status::text FROM donations")
    assert tuple(donation) == (650, "succeeded")
    applied = "SELECT count(*) FROM audit_log WHERE action = 'stripe.event_applied'"
    assert await pool.fetchval(applied) == 1
