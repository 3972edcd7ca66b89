"""`ingest stripe`: replay one stored event, list the inbox rows not yet processed, or
reconcile the inbox with Stripe's Events API now.

    ingest stripe pending [--limit 50]
    ingest stripe replay evt_1Q...
    ingest stripe reconcile [--since 2026-11-20]

`replay` applies the stored event in this process, even when it was processed already: the
merge into `donations` is idempotent, so a replay repairs and never double counts.
`reconcile` runs what the `reconcile_stripe` task runs, then applies the events it recovered
in this process (one that fails is left to the jobs and the sweeper, and listed).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from app import audit, stripe_inbox, stripe_reconcile
from app.commands._common import command_db
from app.db import Database
from app.settings import Settings


async def _replay(settings: Settings, event_id: str) -> stripe_inbox.ProcessResult:
    async with command_db(settings) as db:
        return await stripe_inbox.process_stored_event(
            db,
            event_id=event_id,
            actor=audit.operator_actor(),
            lock_timeout_ms=settings.stripe_lock_timeout_ms,
            force=True,
        )


async def _pending(settings: Settings, limit: int) -> list[dict[str, object]]:
    async with command_db(settings, max_size=1) as db:
        return await db.run("stripe.pending_events", stripe_inbox.pending_events, limit=limit)


async def _reconcile(settings: Settings, since: str | None) -> dict[str, object]:
    since_at = stripe_reconcile.parse_since(since) if since else None
    async with command_db(settings) as db:
        async with stripe_reconcile.stripe_client(settings) as client:
            report = await stripe_reconcile.reconcile(
                db, client=client, settings=settings, actor=audit.operator_actor(), since=since_at
            )
        applied = [await _apply_recovered(db, settings, e) for e in report.recovered]
    return {**report.as_json(), "processed": dict(zip(report.recovered, applied, strict=True))}


async def _apply_recovered(db: Database, settings: Settings, event_id: str) -> str:
    """The outcome of applying one recovered event here, or why it is left to the jobs."""
    try:
        result = await stripe_inbox.process_stored_event(
            db,
            event_id=event_id,
            actor=audit.operator_actor(),
            lock_timeout_ms=settings.stripe_lock_timeout_ms,
        )
    except Exception as exc:  # recorded on the inbox row; the sweeper retries it
        return f"failed ({type(exc).__name__}), left to the jobs"
    return result.outcome


def _print_pending(rows: list[dict[str, object]]) -> None:
    if not rows:
        print("no unprocessed Stripe events")
        return
    for row in rows:
        problem = row["error"] or "not yet tried"
        print(
            f"{row['id']}  {row['type']}  received={row['received_at']}  "
            f"waiting={row['waiting']}  attempts={row['attempts']}  "
            f"outcome={row['outcome'] or '-'}  {problem}"
        )


def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.action == "replay":
        result = asyncio.run(_replay(settings, args.event_id))
        print(json.dumps(result.as_json(), indent=2))
    elif args.action == "reconcile":
        print(json.dumps(asyncio.run(_reconcile(settings, args.since)), indent=2))
    else:
        _print_pending(asyncio.run(_pending(settings, args.limit)))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stripe", help="Stripe inbox: replay an event, list pending, reconcile with Stripe"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay = actions.add_parser("replay", help="re-process one stored event (idempotent)")
    replay.add_argument("event_id", help="the Stripe event id, evt_...")
    pending = actions.add_parser("pending", help="list unprocessed or failed inbox rows")
    pending.add_argument("--limit", type=int, default=50)
    reconcile = actions.add_parser(
        "reconcile", help="store and apply the events Stripe has and the inbox lacks"
    )
    reconcile.add_argument(
        "--since",
        metavar="DATE",
        help="list from this date or ISO time (UTC) instead of the watermark minus the overlap",
    )
    parser.set_defaults(func=_run)
