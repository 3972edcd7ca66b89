"""The psql views operators use answer the questions they are named for."""

from __future__ import annotations

import asyncpg

from app import audit


async def test_audit_views_group_and_filter(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await audit.record(conn, actor="app:aaa", action="events.accepted", details={"accepted": 3})
        await audit.record(conn, actor="app:aaa", action="events.accepted", details={"accepted": 1})
        # The names the service really writes (app/stripe_inbox/, app/blueprints/stripe.py).
        await audit.record(
            conn,
            actor="stripe:unverified",
            action="stripe.webhook_rejected",
            details={"reason": "signature_mismatch"},
        )
        await audit.record(conn, actor="job:1", action="stripe.event_failed", details={})
        await audit.record(conn, actor="job:2", action="stripe.event_applied", details={})
        await audit.record(conn, actor="worker", action="stripe.effect", details={"error": "boom"})
        await conn.execute(
            "INSERT INTO audit_log (at, actor, action)"
            " VALUES (now() - interval '2 days', 'old', 'x')"
        )
    recent = await pool.fetch("SELECT actor FROM audit_recent")
    assert "old" not in {r["actor"] for r in recent} and len(recent) == 6
    by_day = await pool.fetchrow(
        "SELECT operations FROM audit_by_actor_day WHERE actor = 'app:aaa' "
        "AND action = 'events.accepted' AND day = (now() AT TIME ZONE 'UTC')::date"
    )
    assert by_day["operations"] == 2
    failures = {r["action"] for r in await pool.fetch("SELECT action FROM audit_failures")}
    assert failures == {"stripe.webhook_rejected", "stripe.event_failed", "stripe.effect"}


async def test_stripe_inbox_pending_lists_unprocessed_events(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO stripe_events (id, type, payload, processed_at) VALUES "
        "('evt_done', 'x', '{}', now()), ('evt_waiting', 'x', '{}', NULL)"
    )
    rows = await pool.fetch("SELECT id FROM stripe_inbox_pending")
    assert [r["id"] for r in rows] == ["evt_waiting"]


async def test_jobs_failed_lists_failed_procrastinate_jobs(pool: asyncpg.Pool) -> None:
    job_id = await pool.fetchval(
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status) "
        "VALUES ('q', 'some_task', '{}', 'doing') RETURNING id"
    )
    await pool.execute("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = $1", job_id)
    rows = await pool.fetch("SELECT id, task_name FROM jobs_failed")
    assert [(r["id"], r["task_name"]) for r in rows] == [(job_id, "some_task")]
