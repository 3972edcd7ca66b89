"""Author notifications: new donations, forks of their rules, entering a top 10.

The original service left notification fanout as a placeholder. Here each kind is one
set-based `INSERT ... SELECT ... ON CONFLICT DO NOTHING` over a recent horizon; the unique
(author, cause) key makes every run idempotent, so the `notify_authors` task can run after
each rollup and every few minutes without ever notifying a cause twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg

from app.sql import queries

# How far back each run looks. Longer than the gap between two runs, so a run that was
# missed (worker down) is caught up by the next; the unique key prevents repeats.
DONATION_HORIZON = timedelta(days=7)
FORK_HORIZON = timedelta(days=3)
LEADERBOARD_HORIZON_DAYS = 3


@dataclass(frozen=True)
class NotificationCounts:
    donations: int
    forks: int
    top10: int

    @property
    def total(self) -> int:
        return self.donations + self.forks + self.top10


async def notify_authors(conn: asyncpg.Connection, *, now: datetime) -> NotificationCounts:
    """Write the notifications not yet written for causes within the horizons before `now`."""
    donations = await queries.notifications_donations(conn, since=now - DONATION_HORIZON)
    forks = await queries.notifications_forks(conn, since=now - FORK_HORIZON)
    since_day: date = now.date() - timedelta(days=LEADERBOARD_HORIZON_DAYS)
    top10 = await queries.notifications_top10(conn, since_day=since_day)
    return NotificationCounts(donations=int(donations), forks=int(forks), top10=int(top10))
