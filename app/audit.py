"""The audit trail: one row per sensitive operation, readable with psql."""

from __future__ import annotations

import getpass
from typing import Any

import asyncpg

from app.sql import queries


async def record(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    subject: str | None = None,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one audit row inside the caller's transaction. Never pass a secret or raw IP."""
    await queries.insert_audit(
        conn,
        actor=actor,
        action=action,
        subject=subject,
        request_id=request_id,
        details=details or {},
    )


def operator_actor() -> str:
    """Audit actor for operator commands: the shell user, never a credential."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"
