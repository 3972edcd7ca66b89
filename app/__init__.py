"""Ingest service for the rules site: events, Stripe donations, crawl imports, rollups."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rules-ingest")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
