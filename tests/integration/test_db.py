"""Pooled connections are reused without a session reset, so the SQL must leave no session state."""

from __future__ import annotations

import re

import asyncpg

from app.sql import SQL_DIR

# Session-level state a pooled connection would carry to its next user.
SESSION_STATE = [
    (re.compile(r"set_config\([^)]*,\s*false\s*\)", re.I), "session-level set_config"),
    (re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I), "session advisory lock"),
    (re.compile(r"^\s*(LISTEN|DECLARE)\b", re.I | re.M), "LISTEN or cursor"),
    (re.compile(r"^\s*SET\s+(SESSION\s+)?[a-z_.]+\s+(TO|=)\s", re.I | re.M), "session SET"),
]
# The migrator holds its session lock on a connection of its own, never a pooled one.
OWN_CONNECTION_FILES = {"schema_migrations.sql"}


def test_named_sql_leaves_no_session_state() -> None:
    found = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        if path.name in OWN_CONNECTION_FILES:
            continue
        text = path.read_text()
        # UPDATE ... SET lines are assignments, not session settings: drop them first.
        text = re.sub(r"\bUPDATE\b.*?\bSET\b", "UPDATE", text, flags=re.I | re.S)
        text = re.sub(r"\bDO UPDATE\s+SET\b", "DO UPDATE", text, flags=re.I)
        found += [f"{path.name}: {what}" for pattern, what in SESSION_STATE if pattern.search(text)]
    assert found == []


async def test_released_connection_has_its_transaction_rolled_back(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("CREATE TABLE left_open (id int)")
        # released without commit or rollback
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT to_regclass('left_open')") is None
