"""An independent Python computation of the rollup, and helpers to load and read its tables.

The reference works on plain rows and shares no code with the SQL: the tests compare the two.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

WEIGHTS = {"VIEW": 1.0, "COPY": 3.0, "SAVE": 4.0, "FORK": 6.0, "VOTE": 2.0}
COUNT_COLUMNS = ("views", "copies", "saves", "forks", "votes")
TYPE_COLUMN = dict(zip(("VIEW", "COPY", "SAVE", "FORK", "VOTE"), COUNT_COLUMNS, strict=True))
UNPAID_STATUSES = {"pending", "failed"}
WITHDRAWN_DISPUTES = {"open", "lost"}
PERIOD_DAYS = {"DAILY": 1, "WEEKLY": 7, "MONTHLY": 30}


@dataclass(frozen=True)
class Rule:
    id: str
    author_id: str
    tags: tuple[str, ...] = ()
    model: str | None = None


@dataclass(frozen=True)
class Event:
    type: str
    rule_id: str
    ip_hash: str | None
    ts: datetime
    user_id: str | None = None


@dataclass(frozen=True)
class Donation:
    id: str
    author_id: str
    amount_cents: int
    refunded_cents: int
    status: str
    created_at: datetime
    dispute_status: str | None = None
    dispute_amount_cents: int = 0

    @property
    def kept_cents(self) -> int:
        """Money the author keeps (docs/stripe.md): nothing unless paid; refunds and an open
        or lost dispute withdrawn."""
        if self.status in UNPAID_STATUSES:
            return 0
        disputed = self.dispute_amount_cents if self.dispute_status in WITHDRAWN_DISPUTES else 0
        return max(self.amount_cents - self.refunded_cents - disputed, 0)


@dataclass
class Reference:
    rules: dict[str, Rule]
    events: list[Event] = field(default_factory=list)
    donations: list[Donation] = field(default_factory=list)
    half_life: float = 3.0
    horizon: int = 30
    board_size: int = 100
    cap: int = 5

    def counted_views(self) -> dict[tuple[str, date, str], int]:
        """Views of a known client per (rule, UTC day, client): one per 10-minute slot of UTC
        time (slots start at 00:00, 00:10, ...), at most `cap` a day."""
        slots: dict[tuple[str, date, str], set[int]] = defaultdict(set)
        for e in self.events:
            if e.type == "VIEW" and e.ip_hash is not None:
                utc = e.ts.astimezone(UTC)
                slots[(e.rule_id, utc.date(), e.ip_hash)].add((utc.hour * 60 + utc.minute) // 10)
        return {key: min(len(found), self.cap) for key, found in slots.items()}

    def rule_metrics(self) -> dict[tuple[str, date], dict[str, int]]:
        out: dict[tuple[str, date], dict[str, int]] = {}
        for e in self.events:
            if e.type == "VIEW" and e.ip_hash is not None:
                continue  # counted per client below
            row = out.setdefault(
                (e.rule_id, e.ts.astimezone(UTC).date()), dict.fromkeys(COUNT_COLUMNS, 0)
            )
            row[TYPE_COLUMN[e.type]] += 1
        for (rule_id, day, _client), n in self.counted_views().items():
            out.setdefault((rule_id, day), dict.fromkeys(COUNT_COLUMNS, 0))["views"] += n
        return out

    def author_metrics(self) -> dict[tuple[str, date], dict[str, int]]:
        out: dict[tuple[str, date], dict[str, int]] = {}
        blank = dict.fromkeys((*COUNT_COLUMNS, "donations_count", "donations_amount_cents"), 0)
        for (rule_id, day), counts in self.rule_metrics().items():
            row = out.setdefault((self.rules[rule_id].author_id, day), dict(blank))
            for col in COUNT_COLUMNS:
                row[col] += counts[col]
        for d in self.donations:
            kept = d.kept_cents
            if kept > 0:
                row = out.setdefault((d.author_id, d.created_at.date()), dict(blank))
                row["donations_count"] += 1
                row["donations_amount_cents"] += kept
        return out

    @staticmethod
    def weighted(counts: dict[str, int]) -> float:
        return sum(WEIGHTS[t] * counts[c] for t, c in TYPE_COLUMN.items())

    def trending(
        self, metrics: dict[tuple[str, date], dict[str, int]]
    ) -> dict[tuple[str, date], float]:
        out = {}
        for key_id, day in metrics:
            out[(key_id, day)] = sum(
                self.weighted(counts) * 2 ** (-((day - d).days) / self.half_life)
                for (other, d), counts in metrics.items()
                if other == key_id and day - timedelta(days=self.horizon) < d <= day
            )
        return out

    def leaderboards(self, day: date) -> set[tuple[str, str, str, str, int, str, float]]:
        metrics = self.rule_metrics()
        boards: dict[tuple[str, str, str, str], dict[str, float]] = defaultdict(
            lambda: defaultdict(float)
        )
        for period in ("DAILY", "WEEKLY", "MONTHLY", "ALL_TIME"):
            span = PERIOD_DAYS.get(period)
            for (rule_id, d), counts in metrics.items():
                if d > day or (span is not None and d <= day - timedelta(days=span)):
                    continue
                rule = self.rules[rule_id]
                scopes = [("GLOBAL", "")] + [("TAG", t) for t in sorted(set(rule.tags))]
                if rule.model:
                    scopes.append(("MODEL", rule.model))
                for scope, key in scopes:
                    boards[(period, "RULE", scope, key)][rule_id] += self.weighted(counts)
                    boards[(period, "AUTHOR", scope, key)][rule.author_id] += self.weighted(counts)
        rows = set()
        for (period, entity, scope, key), scores in boards.items():
            ranked = sorted(
                ((s, e) for e, s in scores.items() if s > 0), key=lambda p: (-p[0], p[1])
            )
            for rank, (score, entity_id) in enumerate(ranked[: self.board_size], start=1):
                rows.add((period, entity, scope, key, rank, entity_id, round(score, 6)))
        return rows


def at(day: date, hour: int = 12, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)


async def insert_rules(conn: asyncpg.Connection | asyncpg.Pool, rules: list[Rule]) -> None:
    authors = sorted({r.author_id for r in rules})
    await conn.execute(
        "INSERT INTO users (id, handle) SELECT u, 'h-' || u FROM unnest($1::text[]) u "
        "ON CONFLICT DO NOTHING",
        authors,
    )
    await conn.executemany(
        "INSERT INTO rules (id, author_id, title, tags, model) VALUES ($1, $2, 't', $3, $4)",
        [(r.id, r.author_id, list(r.tags), r.model) for r in rules],
    )


async def insert_events(conn: asyncpg.Connection | asyncpg.Pool, events: list[Event]) -> None:
    await conn.execute(
        "INSERT INTO events (type, rule_id, ip_hash, ts, user_id) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])",
        [e.type for e in events],
        [e.rule_id for e in events],
        [e.ip_hash for e in events],
        [e.ts for e in events],
        [e.user_id for e in events],
    )


async def insert_donations(
    conn: asyncpg.Connection | asyncpg.Pool, donations: list[Donation]
) -> None:
    await conn.executemany(
        "INSERT INTO donations (id, payment_intent_id, author_id, amount_cents, refunded_cents,"
        " status, created_at, dispute_status, dispute_amount_cents)"
        " VALUES ($1, 'pi_' || $1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (
                d.id,
                d.author_id,
                d.amount_cents,
                d.refunded_cents,
                d.status,
                d.created_at,
                d.dispute_status,
                d.dispute_amount_cents,
            )
            for d in donations
        ],
    )


async def rule_rows(conn: Any) -> dict[tuple[str, date], dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM rule_metric_daily")
    return {(r["rule_id"], r["day"]): dict(r) for r in rows}


async def author_rows(conn: Any) -> dict[tuple[str, date], dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM author_metric_daily")
    return {(r["author_id"], r["day"]): dict(r) for r in rows}


async def board_rows(conn: Any, day: date) -> set[tuple[str, str, str, str, int, str, float]]:
    rows = await conn.fetch(
        "SELECT period, entity, scope, scope_key, rank, entity_id, score "
        "FROM leaderboard_snapshot WHERE day = $1",
        day,
    )
    return {
        (
            r["period"],
            r["entity"],
            r["scope"],
            r["scope_key"],
            r["rank"],
            r["entity_id"],
            round(r["score"], 6),
        )
        for r in rows
    }


def counts_of(rows: dict[Any, dict[str, Any]], columns: tuple[str, ...]) -> dict[Any, dict]:
    return {key: {c: row[c] for c in columns} for key, row in rows.items()}


async def load_reference(conn: asyncpg.Connection | asyncpg.Pool, ref: Reference) -> None:
    """A reference's users, rules, events and donations, as rows."""
    await insert_rules(conn, list(ref.rules.values()))
    await insert_events(conn, ref.events)
    await insert_donations(conn, ref.donations)
