"""The named queries of `sql/`, loaded once. Code refers to them by name only
(`queries.events_ingest_batch(conn, ...)`); tests/unit/test_sql_catalogue.py holds every call
site's name and parameters to the files."""

from __future__ import annotations

from typing import Any

import aiosql

from app.settings import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql"

queries: Any = aiosql.from_path(SQL_DIR, "asyncpg")
