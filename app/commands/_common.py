"""Helpers shared by operator sub-commands."""

from __future__ import annotations

from app.errors import ConfigurationError
from app.local import recorded_database_url
from app.settings import Settings


def database_url(settings: Settings) -> str:
    """DATABASE_URL, else the URL of the local service running beside this checkout."""
    url = settings.database_url or recorded_database_url(settings.data_dir)
    if not url:
        raise ConfigurationError(
            "DATABASE_URL is not set and no local service is running (start one with `make run`)"
        )
    return url
