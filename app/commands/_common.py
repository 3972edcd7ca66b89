"""Helpers shared by operator sub-commands."""

from __future__ import annotations

from app.local_service import resolve_database_url
from app.settings import Settings


def database_url(settings: Settings) -> str:
    """DATABASE_URL, else the URL of the local service running beside this checkout, else a
    ConfigurationError naming both (app/local_service.py)."""
    return resolve_database_url(settings)
