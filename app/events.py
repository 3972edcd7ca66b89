"""Event intake: the main API's batches of views, copies, saves, forks and votes.

Each event is checked on its own (a bad event is rejected, the others go on): cheap shape
checks here in Python, then one SQL statement per batch checks rules and users, applies
idempotency keys, inserts, and writes the request's audit row. Every valid VIEW is stored; the
rollup decides which ones count (docs/rollups.md).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from app import metrics
from app.client_ip import IpHasher
from app.db import Database, Unit
from app.errors import ValidationFailed
from app.sql import queries
from app.wire import WireModel

MAX_EVENTS = 500
MAX_BODY_BYTES = 1024 * 1024
MAX_IDEMPOTENCY_KEY_CHARS = 128
MAX_FUTURE = timedelta(minutes=5)
MAX_AGE = timedelta(days=30)
EventType = Literal["VIEW", "COPY", "SAVE", "FORK", "VOTE"]
EVENT_TYPES = frozenset(get_args(EventType))
# Site ids are cuid-style: letters, digits, `_` and `-`, at most 128 characters.
ID_PATTERN = r"[A-Za-z0-9_\-]{1,128}"
_ID = re.compile(ID_PATTERN)
# An event's `ts`: RFC 3339 with an offset, as the OpenAPI document states it. `datetime.
# fromisoformat` also reads week dates, a space for `T`, no seconds, `+0530` and more:
# `_rfc3339_shaped` refuses those (tests/unit/test_event_schema.py holds the two equal).
TS_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)


class EventBatch(BaseModel):
    """The request envelope. Events are validated one by one, not here, so that a bad event
    rejects only itself."""

    model_config = ConfigDict(extra="ignore")

    events: list[Any] = Field(min_length=1)


@dataclass
class PreparedBatch:
    """Parallel arrays of the events that passed the Python checks, ready for `unnest`."""

    received: int = 0
    received_at: datetime | None = None  # the `ts` of events sent without one
    idx: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    rule_ids: list[str] = field(default_factory=list)
    user_ids: list[str | None] = field(default_factory=list)
    ip_hashes: list[str] = field(default_factory=list)
    tss: list[datetime | None] = field(default_factory=list)  # None: sent without `ts`
    idempotency_keys: list[str | None] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0


class RejectedEvent(WireModel):
    index: int = Field(description="position in `events`")
    reason: str = Field(description="unknown_type, invalid_rule_id, unknown_rule, ts_too_old, ...")


class EventIngestReport(WireModel):
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]


def check_batch_size(data: Any) -> None:
    """More than MAX_EVENTS events is a 400 naming the limit (before any per-event work): the
    document's `maxItems`, refused as any other schema violation (as crawl's 200 items are)."""
    if isinstance(data, dict):
        events = data.get("events")
        if isinstance(events, list) and len(events) > MAX_EVENTS:
            raise ValidationFailed(
                f"at most {MAX_EVENTS} events per request are accepted ({len(events)} sent)",
                details=[{"loc": ["events"], "msg": f"at most {MAX_EVENTS}", "type": "too_long"}],
            )


def _parse_ts(value: Any, now: datetime) -> datetime | str | None:
    """The event's instant (None when it was sent without one), or the rejection reason."""
    if value is None:
        return None
    if type(value) is not str:
        return "invalid_ts"
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return "invalid_ts"
    if not _rfc3339_shaped(value):
        return "invalid_ts"
    if ts.tzinfo is None:
        return "invalid_ts"  # a local time is not an instant
    if ts > now + MAX_FUTURE:
        return "ts_in_future"
    if ts < now - MAX_AGE:
        return "ts_too_old"
    return ts


def _rfc3339_shaped(text: str) -> bool:
    """Of the texts `fromisoformat` reads, whether `text` has TS_PATTERN's shape: extended
    date, `T`, hours, minutes and seconds, a fraction of at least one digit, `Z` or `+HH:MM`.
    (Index checks: a regular expression here cost three times `fromisoformat` itself.)"""
    return (
        len(text) >= 20
        and text[4] == "-"
        and text[7] == "-"
        and text[10] == "T"
        and text[13] == ":"
        and text[16] == ":"
        and (text[19] != "." or "0" <= text[20:21] <= "9")
        and (text[-1] == "Z" or (text[-6] in "+-" and text[-3] == ":"))
    )


def _is_id(value: Any) -> bool:
    return type(value) is str and _ID.fullmatch(value) is not None


def _reject_reason(event: Any) -> str | None:
    """The first shape problem of one event, or None."""
    if type(event) is not dict:
        return "invalid_event"
    kind = event.get("type")
    if type(kind) is not str or kind not in EVENT_TYPES:
        return "unknown_type"
    if not _is_id(event.get("ruleId")):
        return "invalid_rule_id"
    user_id = event.get("userId")
    if user_id is not None and not _is_id(user_id):
        return "invalid_user_id"
    key = event.get("idempotencyKey")
    if key is not None and (
        type(key) is not str or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or "\x00" in key
    ):
        return "invalid_idempotency_key"
    return None


def prepare_batch(
    events: list[Any], *, now: datetime, request_ip_hash: str, hasher: IpHasher
) -> PreparedBatch:
    """Check each event's shape; the first copy of an idempotency key in the batch wins.

    This runs for every event of every request, so it stays a plain loop over the decoded
    JSON (a pydantic model per event costs several times more) and appends straight to the
    parallel arrays the batch statement unnests.
    """
    batch = PreparedBatch(received=len(events), received_at=now)
    seen_keys: set[str] = set()
    for index, event in enumerate(events):
        reason = _reject_reason(event)
        if reason is not None:
            batch.rejected.append((index, reason))
            continue
        ts = _parse_ts(event.get("ts"), now)
        if isinstance(ts, str):
            batch.rejected.append((index, ts))
            continue
        ip = event.get("ip")
        ip_hash = (
            request_ip_hash if ip is None else hasher.hash_given(ip) if type(ip) is str else None
        )
        if ip_hash is None:
            batch.rejected.append((index, "invalid_ip"))
            continue
        key = event.get("idempotencyKey")
        if key is not None:
            if key in seen_keys:
                batch.duplicates += 1
                continue
            seen_keys.add(key)
        batch.idx.append(index)
        batch.types.append(event["type"])
        batch.rule_ids.append(event["ruleId"])
        batch.user_ids.append(event.get("userId"))
        batch.ip_hashes.append(ip_hash)
        batch.tss.append(ts)
        batch.idempotency_keys.append(key)
    return batch


async def ingest_batch(
    conn: asyncpg.Connection, *, batch: PreparedBatch, actor: str, request_id: str | None
) -> EventIngestReport:
    """Store a prepared batch with one statement (plus the audit row it writes itself).

    Outside a transaction the statement first runs without the per-event rule and user probes:
    the foreign keys of `events` check every stored event anyway, so the probes are only
    needed to name the unknown ones, and most batches have none. When the keys refuse the
    batch, nothing was written, and it runs again with the probes. Inside a caller's
    transaction a refused statement would abort that transaction, so the probes run at once.
    """
    if not conn.is_in_transaction():
        try:
            return await _run_batch(conn, batch, actor, request_id, check_refs=False)
        except asyncpg.ForeignKeyViolationError:
            pass  # some event names an unknown rule or user: find out which
    return await _run_batch(conn, batch, actor, request_id, check_refs=True)


async def _run_batch(
    conn: asyncpg.Connection,
    batch: PreparedBatch,
    actor: str,
    request_id: str | None,
    *,
    check_refs: bool,
) -> EventIngestReport:
    row = await queries.events_ingest_batch(
        conn,
        idx=batch.idx,
        types=batch.types,
        rule_ids=batch.rule_ids,
        user_ids=batch.user_ids,
        ip_hashes=batch.ip_hashes,
        tss=batch.tss,
        idempotency_keys=batch.idempotency_keys,
        received_at=batch.received_at,
        check_refs=check_refs,
        actor=actor,
        request_id=request_id,
        received=batch.received,
        early_rejected=len(batch.rejected),
        early_duplicates=batch.duplicates,
    )
    rejected = list(batch.rejected)
    rejected += [(i, "unknown_rule") for i in row["unknown_rule"]]
    rejected += [(i, "unknown_user") for i in row["unknown_user"]]
    rejected.sort()
    return EventIngestReport(
        accepted=row["accepted"],
        duplicates=row["duplicates"],
        rejected=[RejectedEvent(index=i, reason=r) for i, r in rejected],
    )


# The batch is one statement, and a statement outside BEGIN is its own transaction: it
# commits or rolls back whole, audit row included. An explicit BEGIN ... COMMIT around it
# would add two round trips during which the batch's row locks are held while the connection
# waits for a busy event loop (under load, most of a request's time). Run again if it lost a
# deadlock, or if a rule or user was deleted between its probe and its insert.
INGEST = Unit(
    "events.ingest_batch", transaction=False, retry_on=(asyncpg.ForeignKeyViolationError,)
)


async def store_batch(
    db: Database, *, batch: PreparedBatch, actor: str, request_id: str | None
) -> EventIngestReport:
    """The unit of work of one request (`INGEST`), counted in the event metrics."""
    report = await db.run(INGEST, ingest_batch, batch=batch, actor=actor, request_id=request_id)
    _count(report)
    return report


def _count(report: EventIngestReport) -> None:
    metrics.EVENTS.labels("accepted").inc(report.accepted)
    metrics.EVENTS.labels("duplicate").inc(report.duplicates)
    metrics.EVENTS.labels("rejected").inc(len(report.rejected))
    for reason, count in Counter(r.reason for r in report.rejected).items():
        metrics.EVENTS_REJECTED.labels(reason).inc(count)


async def _stored_ip_hash_secret(conn: asyncpg.Connection) -> str:
    return str(await queries.events_ip_hash_secret(conn))


async def load_ip_hasher(db: Database, *, override: str | None) -> IpHasher:
    """The hasher keyed by IP_HASH_SECRET (`override`), else by the secret the service keeps
    in its database."""
    if override:
        return IpHasher(override)
    return IpHasher(await db.run("events.ip_hash_secret", _stored_ip_hash_secret))
