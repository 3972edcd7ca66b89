"""Reconciliation with Stripe's Events API: the real stripe-python client against a local
stand-in of the API (tests/stripe_api.py), a real PostgreSQL, and the real job queue."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from app import stripe_inbox, stripe_reconcile
from app.cli import main
from app.db import Database
from app.errors import StripeApiUnavailable
from app.settings import Settings
from jobs.stripe import RECONCILE_TASK
from tests.conftest import WEBHOOK_SECRET, RunningServer, drain_queue, make_settings
from tests.integration.test_stripe_jobs import in_db
from tests.stripe_api import API_KEY, EventsApi, running_events_api
from tests.stripe_helpers import (
    apply,
    body_of,
    charge,
    deliver,
    donation,
    event,
    metadata,
    new_id,
    payment_intent,
    sign,
    store,
)

HOUR = 3600


@pytest.fixture
def events_api() -> Iterator[EventsApi]:
    with running_events_api() as api:
        yield api


@pytest.fixture
def api_settings(db_url: str, events_api: EventsApi) -> Settings:
    return make_settings(
        db_url,
        stripe_secret_key=API_KEY,
        stripe_api_base=events_api.url,
        stripe_max_network_retries=1,
    )


def made_ago(evt: dict[str, Any], seconds: int = HOUR) -> dict[str, Any]:
    """The event as Stripe created it `seconds` ago (Stripe lists the last 30 days only)."""
    evt["created"] = int(time.time()) - seconds
    return evt


def paid(pi: str, *, amount: int = 500, ago: int = HOUR) -> dict[str, Any]:
    return made_ago(
        event("payment_intent.succeeded", payment_intent(pi, amount=amount, meta=metadata("u1"))),
        ago,
    )


async def reconcile(pool: asyncpg.Pool, settings: Settings, **kw: Any) -> Any:
    async with stripe_reconcile.stripe_client(settings) as client:
        return await stripe_reconcile.reconcile(
            Database(pool), client=client, settings=settings, actor="test", **kw
        )


async def audit_actions(pool: asyncpg.Pool, action: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT actor, subject, details FROM audit_log WHERE action = $1 ORDER BY id", action
    )


async def defer_reconcile(proc_app: Any) -> int:
    """Queue a run now. (A worker also defers the periodic run of the current 10 minutes
    when it starts, so tests look at their own job by id.)"""
    return int(await proc_app.configure_task(RECONCILE_TASK).defer_async())


async def reconcile_job(pool: asyncpg.Pool, job_id: int) -> asyncpg.Record:
    return await pool.fetchrow(
        "SELECT id, status::text AS status, attempts FROM procrastinate_jobs WHERE id = $1",
        job_id,
    )


async def wait_for_lock_wait(pool: asyncpg.Pool) -> None:
    """Until some session of this database waits on a row lock (the racing insert)."""
    for _ in range(200):
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the racing insert never waited for the lock")


# --- the window (pure) ------------------------------------------------------------------


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_the_first_run_lists_stripes_thirty_days_and_later_runs_the_watermark_minus_overlap() -> (
    None
):
    first = stripe_reconcile.plan_window(
        watermark=None, now=NOW, since=None, overlap_s=HOUR, grace_s=300
    )
    assert (first.since, first.until, first.advances) == (
        NOW - timedelta(days=30),
        NOW - timedelta(seconds=300),
        True,
    )
    later = stripe_reconcile.plan_window(
        watermark=NOW - timedelta(minutes=15), now=NOW, since=None, overlap_s=HOUR, grace_s=300
    )
    assert later.since == NOW - timedelta(minutes=75) and later.advances
    stale = stripe_reconcile.plan_window(
        watermark=NOW - timedelta(days=90), now=NOW, since=None, overlap_s=HOUR, grace_s=300
    )
    assert stale.since == NOW - timedelta(days=30)  # Stripe has nothing older


def test_since_after_the_watermark_lists_but_never_moves_the_watermark_over_a_gap() -> None:
    watermark = NOW - timedelta(days=2)
    gap = stripe_reconcile.plan_window(
        watermark=watermark, now=NOW, since=NOW - timedelta(days=1), overlap_s=0, grace_s=0
    )
    assert gap.since == NOW - timedelta(days=1) and not gap.advances
    covering = stripe_reconcile.plan_window(
        watermark=watermark, now=NOW, since=NOW - timedelta(days=3), overlap_s=0, grace_s=0
    )
    assert covering.advances
    no_watermark = stripe_reconcile.plan_window(
        watermark=None, now=NOW, since=NOW - timedelta(days=3), overlap_s=0, grace_s=0
    )
    assert not no_watermark.advances  # the first full run still covers Stripe's 30 days


def test_since_must_be_a_date_not_in_the_future() -> None:
    assert stripe_reconcile.parse_since("2026-11-20", now=NOW) == datetime(2026, 11, 20, tzinfo=UTC)
    assert stripe_reconcile.parse_since("2026-11-20T10:00:00+01:00", now=NOW).hour == 10
    with pytest.raises(Exception, match="not a date"):
        stripe_reconcile.parse_since("last tuesday", now=NOW)
    with pytest.raises(Exception, match="in the future"):
        stripe_reconcile.parse_since("2027-01-01", now=NOW)


# --- listing and storing ------------------------------------------------------------------


async def test_pages_are_followed_through_has_more_with_the_handled_types_and_window(
    pool: asyncpg.Pool, api_settings: Settings, events_api: EventsApi
) -> None:
    events_api.page_size = 3
    listed = [paid(new_id("pi"), ago=HOUR + i) for i in range(7)]
    events_api.add(*listed)
    events_api.add(made_ago(event("customer.created", {"id": new_id("cus")})))
    report = await reconcile(pool, api_settings)

    requests = events_api.list_requests()
    assert len(requests) == 3  # 3 + 3 + 1, then has_more is false
    newest_first = sorted(listed, key=lambda e: e["created"], reverse=True)
    assert [r.params.get("starting_after") for r in requests] == [
        None,
        newest_first[2]["id"],
        newest_first[5]["id"],
    ]
    assert set(requests[0].params["types"]) == set(stripe_reconcile.donations.HANDLED_TYPES)
    window = requests[0].params["created"]
    assert int(window["lte"]) == int(report.window.until.timestamp())
    assert int(window["gte"]) == int(report.window.since.timestamp())
    assert all(r.authorization == f"Bearer {API_KEY}" for r in requests)
    assert report.listed == 7 and sorted(report.recovered) == sorted(e["id"] for e in listed)
    rows = await pool.fetch("SELECT id, source, payload FROM stripe_events")
    assert {r["source"] for r in rows} == {"reconciliation"} and len(rows) == 7
    # Stored as Stripe serves the event: the payload round-trips through stripe-python intact.
    stored = next(r["payload"] for r in rows if r["id"] == listed[0]["id"])
    assert stored == listed[0]


async def test_events_already_in_the_inbox_are_left_alone(
    pool: asyncpg.Pool, api_settings: Settings, events_api: EventsApi
) -> None:
    known = paid(new_id("pi"))
    await store(pool, known)
    events_api.add(known)
    report = await reconcile(pool, api_settings)
    assert (report.listed, report.recovered, report.already_stored) == (1, [], 1)
    row = await pool.fetchrow("SELECT source, received_at FROM stripe_events")
    assert row["source"] == "webhook"
    assert await audit_actions(pool, "stripe.event_recovered") == []
    run = (await audit_actions(pool, "stripe.reconciled"))[0]
    assert (run["details"]["listed"], run["details"]["alreadyStored"]) == (1, 1)


async def test_events_younger_than_the_grace_are_left_to_their_delivery(
    pool: asyncpg.Pool, api_settings: Settings, events_api: EventsApi
) -> None:
    young = paid(new_id("pi"), ago=10)
    events_api.add(young)
    report = await reconcile(pool, api_settings)
    assert report.listed == 0 and await pool.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_missing_events_are_recovered_by_the_job_then_processed_once(
    pool: asyncpg.Pool, proc_app: Any, api_settings: Settings, events_api: EventsApi
) -> None:
    pi, ch = new_id("pi"), new_id("ch")
    delivered = paid(pi, amount=900, ago=2 * HOUR)
    await apply(pool, delivered)  # delivered and applied before the endpoint broke
    refund = made_ago(event("charge.refunded", charge(pi, ch, amount=900, refunded=300)))
    other = paid(new_id("pi"), amount=400)
    events_api.add(delivered, refund, other)

    first = await defer_reconcile(proc_app)
    await drain_queue(proc_app, pool, api_settings)
    await drain_queue(proc_app, pool, api_settings)
    assert (await reconcile_job(pool, first))["status"] == "succeeded"

    rows = await pool.fetch("SELECT id, source, outcome FROM stripe_events ORDER BY id")
    by_id = {r["id"]: (r["source"], r["outcome"]) for r in rows}
    assert by_id == {
        delivered["id"]: ("webhook", "applied"),
        refund["id"]: ("reconciliation", "applied"),
        other["id"]: ("reconciliation", "applied"),
    }
    row = await donation(pool, pi) or {}
    assert (row["status"], row["amount_cents"], row["refunded_cents"]) == (
        "partially_refunded",
        900,
        300,
    )
    recovered = await audit_actions(pool, "stripe.event_recovered")
    assert {r["subject"] for r in recovered} == {
        f"stripe_event:{refund['id']}",
        f"stripe_event:{other['id']}",
    }
    [actor] = {r["actor"] for r in recovered}
    assert actor.startswith("job:reconcile_stripe:")  # job:<task>:<job id>
    watermark = await pool.fetchval("SELECT watermark FROM stripe_reconcile_state")
    expected = datetime.now(UTC) - timedelta(seconds=api_settings.stripe_reconcile_grace_s)
    assert abs((watermark - expected).total_seconds()) < 60

    # Again: nothing new is stored, nothing applied twice, and the watermark only moves on.
    applied_before = len(await audit_actions(pool, "stripe.event_applied"))
    await defer_reconcile(proc_app)
    await drain_queue(proc_app, pool, api_settings)
    assert len(await audit_actions(pool, "stripe.event_applied")) == applied_before
    runs = await audit_actions(pool, "stripe.reconciled")
    assert len(runs) >= 2 and [r["details"]["recoveredCount"] for r in runs][1:] == [0] * (
        len(runs) - 1
    )
    assert runs[0]["details"]["recoveredCount"] == 2
    assert runs[1]["details"]["since"] < runs[0]["details"]["until"]  # the overlap
    assert await pool.fetchval("SELECT watermark FROM stripe_reconcile_state") >= watermark
    assert await pool.fetchval("SELECT count(*) FROM donations") == 2


async def test_events_the_endpoint_refused_are_recovered_processed_once_and_counted(
    start_server: Callable[..., Awaitable[RunningServer]],
    pool: asyncpg.Pool,
    proc_app: Any,
    api_settings: Settings,
    events_api: EventsApi,
) -> None:
    """Stripe "delivers" while the endpoint answers 401 (a wrong secret): nothing is stored.
    The next run recovers them; when Stripe's retry finally gets through, it is a duplicate."""
    running = await start_server(api_settings)
    pi = new_id("pi")
    lifecycle = [
        made_ago(event("payment_intent.succeeded", payment_intent(pi, amount=700)), 3 * HOUR),
        made_ago(event("charge.refunded", charge(pi, new_id("ch"), amount=700, refunded=700))),
    ]
    events_api.add(*lifecycle)
    for evt in lifecycle:
        refused = await deliver(running.client, evt, secret="whsec_rotated_wrongly")
        assert refused.status_code == 401
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0
    before = (await running.client.get("/metrics")).text
    assert "ingest_stripe_events_recovered_total 0.0" in before
    assert "\ningest_stripe_reconcile_watermark_age_seconds " not in before  # never ran

    await defer_reconcile(proc_app)
    await drain_queue(proc_app, pool, api_settings)
    await drain_queue(proc_app, pool, api_settings)
    assert (await donation(pool, pi) or {})["status"] == "refunded"
    scrape = (await running.client.get("/metrics")).text
    assert "ingest_stripe_events_recovered_total 2.0" in scrape
    age = next(
        float(line.split()[-1])
        for line in scrape.splitlines()
        if line.startswith("ingest_stripe_reconcile_watermark_age_seconds ")
    )
    assert (
        api_settings.stripe_reconcile_grace_s - 5
        <= age
        < api_settings.stripe_reconcile_grace_s + 60
    )

    for evt in lifecycle:  # Stripe's own retry, once the secret is fixed
        late = await deliver(running.client, evt, secret=WEBHOOK_SECRET)
        assert late.status_code == 200 and late.json()["duplicate"] is True
    await drain_queue(proc_app, pool, api_settings)
    applied = await audit_actions(pool, "stripe.event_applied")
    assert sorted(r["subject"] for r in applied) == sorted(
        f"stripe_event:{e['id']}" for e in lifecycle
    )
    row = await donation(pool, pi) or {}
    assert (row["amount_cents"], row["refunded_cents"]) == (700, 700)


# --- races with live deliveries -------------------------------------------------------------


async def test_a_delivery_in_flight_wins_and_reconciliation_counts_nothing(
    pool: asyncpg.Pool, api_settings: Settings, events_api: EventsApi
) -> None:
    evt = paid(new_id("pi"))
    events_api.add(evt)
    verified = stripe_inbox.verify_webhook(
        body_of(evt), sign(body_of(evt)), secrets=(WEBHOOK_SECRET,), tolerance_s=300
    )
    webhook = await pool.acquire()
    delivery = webhook.transaction()
    await delivery.start()
    try:
        await stripe_inbox.store_event(webhook, event=verified, request_id=None)
        run = asyncio.create_task(reconcile(pool, api_settings))
        await wait_for_lock_wait(pool)  # it saw the event missing and waits on the insert
        await delivery.commit()
    finally:
        await pool.release(webhook)
    report = await run
    assert (report.listed, report.recovered) == (1, [])
    assert await pool.fetchval("SELECT source FROM stripe_events") == "webhook"
    assert await audit_actions(pool, "stripe.event_recovered") == []
    assert len(await audit_actions(pool, "stripe.event_received")) == 1


async def test_a_delivery_racing_a_recovery_is_a_duplicate_and_applies_once(
    pool: asyncpg.Pool, proc_app: Any, server: RunningServer, settings: Settings
) -> None:
    pi = new_id("pi")
    evt = paid(pi, amount=800)
    async with pool.acquire() as conn:
        recovery = conn.transaction()
        await recovery.start()
        stored = await stripe_reconcile.store_missing(conn, page=[evt], actor="test")
        assert stored == [evt["id"]]
        live = asyncio.create_task(deliver(server.client, evt))
        await wait_for_lock_wait(pool)  # the webhook's insert waits on the recovered row
        await recovery.commit()
    answer = await live
    assert answer.status_code == 200 and answer.json()["duplicate"] is True
    await drain_queue(proc_app, pool, settings)
    assert len(await audit_actions(pool, "stripe.event_applied")) == 1
    assert len(await audit_actions(pool, "stripe.event_redelivered")) == 1
    assert (await donation(pool, pi) or {})["amount_cents"] == 800


# --- Stripe's errors -------------------------------------------------------------------------


async def test_a_5xx_is_retried_by_stripe_python_itself(
    pool: asyncpg.Pool, api_settings: Settings, events_api: EventsApi
) -> None:
    events_api.add(paid(new_id("pi")))
    events_api.fail_next(500)
    report = await reconcile(pool, api_settings)
    assert len(report.recovered) == 1
    assert len(events_api.list_requests()) == 2  # the 500, then its retry


async def test_5xx_beyond_the_library_retries_fails_the_run_for_a_later_retry(
    pool: asyncpg.Pool, api_settings: Settings, events_api: EventsApi
) -> None:
    events_api.add(paid(new_id("pi")))
    events_api.fail_next(503, times=2)
    with pytest.raises(StripeApiUnavailable, match="HTTP 503"):
        await reconcile(pool, api_settings)
    failed = (await audit_actions(pool, "stripe.reconcile_failed"))[0]
    assert failed["details"]["error"]["code"] == "stripe_api_unavailable"
    assert await pool.fetchval("SELECT count(*) FROM stripe_reconcile_state") == 0


async def test_a_rate_limited_job_is_retried_with_back_off_and_then_succeeds(
    pool: asyncpg.Pool, proc_app: Any, api_settings: Settings, events_api: EventsApi
) -> None:
    evt = paid(new_id("pi"))
    events_api.add(evt)
    events_api.fail_next(429)
    job_id = await defer_reconcile(proc_app)
    # Without the periodic run of the same task: queued beside this job, it would take the
    # retry's place (jobs/resources.py `RetryBesideAWaitingJob`), not what this test is about.
    await drain_queue(proc_app, pool, api_settings, periodic=False)
    job = await reconcile_job(pool, job_id)
    assert (job["status"], job["attempts"]) == ("todo", 1)  # stripe-python does not retry 429
    assert len(events_api.list_requests()) == 1
    failed = (await audit_actions(pool, "stripe.reconcile_failed"))[0]
    assert "rate limited" in failed["details"]["error"]["message"]

    await pool.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now() WHERE id = $1", job["id"]
    )
    await drain_queue(proc_app, pool, api_settings, periodic=False)
    assert (await reconcile_job(pool, job_id))["status"] == "succeeded"
    assert await pool.fetchval("SELECT source FROM stripe_events WHERE id = $1", evt["id"]) == (
        "reconciliation"
    )


@pytest.mark.parametrize("refusal", ["unknown key", "key without permission"])
async def test_a_refused_key_fails_the_job_at_once_with_one_clear_line(
    pool: asyncpg.Pool,
    proc_app: Any,
    api_settings: Settings,
    events_api: EventsApi,
    caplog: pytest.LogCaptureFixture,
    refusal: str,
) -> None:
    key = API_KEY if refusal == "key without permission" else "sk_test_rotated_and_wrong_1234"
    if refusal == "key without permission":
        events_api.fail_next(403)
    settings = make_settings(
        api_settings.database_url or "", stripe_secret_key=key, stripe_api_base=events_api.url
    )
    job_id = await defer_reconcile(proc_app)
    with caplog.at_level(logging.ERROR, logger="ingest.jobs.stripe"):
        await drain_queue(proc_app, pool, settings)
    job = await reconcile_job(pool, job_id)
    assert (job["status"], job["attempts"]) == ("failed", 1)  # no retries
    lines = [r.getMessage() for r in caplog.records if r.name == "ingest.jobs.stripe"]
    assert lines and all("Stripe refused STRIPE_SECRET_KEY" in line for line in lines)
    assert "\n" not in lines[0] and key not in caplog.text and key[-4:] not in lines[0]
    failed = (await audit_actions(pool, "stripe.reconcile_failed"))[0]
    assert failed["details"]["error"]["code"] == "stripe_api_key_rejected"
    assert key not in str(failed["details"])


async def test_without_a_key_the_task_does_nothing(
    pool: asyncpg.Pool, proc_app: Any, settings: Settings, events_api: EventsApi
) -> None:
    events_api.add(paid(new_id("pi")))
    job_id = await defer_reconcile(proc_app)
    await drain_queue(
        proc_app, pool, settings.model_copy(update={"stripe_api_base": events_api.url})
    )
    assert (await reconcile_job(pool, job_id))["status"] == "succeeded"
    assert events_api.requests == []
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0
    assert await audit_actions(pool, "stripe.reconciled") == []
    assert "off: STRIPE_SECRET_KEY is not set" in stripe_reconcile.describe(settings)


# --- from a shell ----------------------------------------------------------------------------


@pytest.fixture
def shell(db_url: str, events_api: EventsApi, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("STRIPE_SECRET_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", events_api.url)
    return db_url


def test_the_command_reconciles_then_applies_what_it_recovered(
    shell: str, events_api: EventsApi, capsys: pytest.CaptureFixture[str]
) -> None:
    pi = new_id("pi")
    evt = paid(pi, amount=650, ago=2 * 24 * HOUR)
    events_api.add(evt)
    since = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    assert main(["stripe", "reconcile", "--since", since]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recovered"] == [evt["id"]] and out["processed"] == {evt["id"]: "applied"}
    assert out["since"].startswith(since) and out["watermark"] is None  # a gap before --since
    row = in_db(shell, lambda pool: donation(pool, pi))
    assert (row["status"], row["amount_cents"]) == ("succeeded", 650)

    assert main(["stripe", "reconcile"]) == 0  # Stripe's 30 days; the watermark is set now
    again = json.loads(capsys.readouterr().out)
    assert (again["listed"], again["recovered"]) == (1, [])
    assert again["watermark"] == again["until"]
    actors = in_db(shell, lambda pool: audit_actions(pool, "stripe.reconciled"))
    assert len(actors) == 2 and all(a["actor"].startswith("cli:") for a in actors)


def test_the_command_refuses_a_bad_since_and_a_missing_key(
    shell: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["stripe", "reconcile", "--since", "last tuesday"]) == 2
    assert "is not a date" in capsys.readouterr().err
    monkeypatch.delenv("STRIPE_SECRET_KEY")
    assert main(["stripe", "reconcile"]) == 2
    assert "STRIPE_SECRET_KEY is not set" in capsys.readouterr().err


def test_config_and_start_up_say_whether_reconciliation_is_on(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import app.cli

    async def no_worker(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(app.cli, "_run_worker", no_worker)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    assert main(["config"]) == 0
    assert "Stripe reconciliation: off: STRIPE_SECRET_KEY is not set" in capsys.readouterr().out
    assert main(["worker"]) == 0
    started = capsys.readouterr().err
    assert started.count("Stripe reconciliation off: STRIPE_SECRET_KEY is not set") == 1

    monkeypatch.setenv("STRIPE_SECRET_KEY", API_KEY)
    assert main(["config"]) == 0
    shown = capsys.readouterr().out
    assert "Stripe reconciliation: on: every 10 minutes" in shown and API_KEY not in shown
    assert main(["worker"]) == 0
    assert capsys.readouterr().err.count("Stripe reconciliation on: every 10 minutes") == 1


def test_the_api_base_is_an_http_url_and_its_credentials_are_never_shown() -> None:
    db_url = "postgresql://postgres@127.0.0.1:5432/unused"  # settings only: never connected
    with pytest.raises(ValueError, match=r"stripe_api_base\n.*must be an https"):
        make_settings(db_url, stripe_api_base="api.stripe.com")
    assert make_settings(db_url, stripe_api_base="  ").stripe_api_base is None
    proxied = make_settings(
        db_url, stripe_secret_key=API_KEY, stripe_api_base="https://ops:hunter2@proxy:8443/"
    )
    assert proxied.stripe_api_base == "https://ops:hunter2@proxy:8443"
    shown = stripe_reconcile.describe(proxied)
    assert "https://proxy:8443" in shown and "hunter2" not in shown
    from app.commands.config import describe

    assert "hunter2" not in str(describe(proxied))
