"""The migration runner: empty database, idempotence, changed files, schema shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

from app.errors import ChecksumMismatch, MigrationError
from app.migrate import MIGRATIONS_DIR, load_migrations, migrate, migrate_url

SHARED_TABLES = {
    "users": {"id", "handle"},
    "rules": {"id", "author_id", "title", "tags", "model", "source_id", "external_id"},
    "events": {
        "id",
        "type",
        "rule_id",
        "user_id",
        "ip_hash",
        "ts",
        "idempotency_key",
        "received_at",
    },
    "donations": {
        "id",
        "payment_intent_id",
        "author_id",
        "rule_id",
        "donor_user_id",
        "amount_cents",
        "refunded_cents",
        "currency",
        "status",
    },
    "stripe_events": {"id", "type", "payload", "received_at", "processed_at", "error"},
    "crawl_sources": {"id", "name", "curator_id"},
    "crawl_items": {
        "source_id",
        "external_id",
        "url",
        "title",
        "summary",
        "raw",
        "content_hash",
        "rule_id",
    },
    "rule_metric_daily": {
        "rule_id",
        "day",
        "views",
        "copies",
        "saves",
        "forks",
        "votes",
        "trending_score",
    },
    "author_metric_daily": {
        "author_id",
        "day",
        "views",
        "copies",
        "saves",
        "forks",
        "votes",
        "donations_count",
        "donations_amount_cents",
    },
    "leaderboard_snapshot": {
        "day",
        "period",
        "entity",
        "scope",
        "scope_key",
        "rank",
        "entity_id",
        "score",
    },
    "audit_log": {"id", "at", "actor", "action", "subject", "request_id", "details"},
}


async def test_empty_database_gets_every_migration_and_procrastinate(empty_db_url: str) -> None:
    report = await migrate_url(empty_db_url)
    assert report.applied == [m.name for m in load_migrations()]
    assert report.procrastinate_schema_applied
    conn = await asyncpg.connect(empty_db_url)
    try:
        for table, columns in SHARED_TABLES.items():
            rows = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
            )
            assert columns <= {r["column_name"] for r in rows}, table
        assert await conn.fetchval("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert recorded == len(load_migrations())
    finally:
        await conn.close()


async def test_second_run_is_a_no_op(db_url: str) -> None:
    report = await migrate_url(db_url)
    assert report.nothing_to_do
    assert report.summary() == "Nothing to migrate: the database is up to date."


async def test_keys_and_foreign_keys_exist(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        constraints = {
            (r["table_name"], r["constraint_type"])
            for r in await conn.fetch(
                "SELECT table_name, constraint_type FROM information_schema.table_constraints "
                "WHERE table_schema = 'public'"
            )
        }
    finally:
        await conn.close()
    for table in SHARED_TABLES:
        assert (table, "PRIMARY KEY") in constraints, table
    assert ("rules", "FOREIGN KEY") in constraints
    assert ("events", "FOREIGN KEY") in constraints
    assert ("donations", "UNIQUE") in constraints
    assert ("crawl_items", "UNIQUE") in constraints


async def test_changed_applied_file_is_refused(db_url: str, tmp_path: Path) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    first = sorted(copy.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after release\n")
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(ChecksumMismatch, match="was changed after it was applied"):
            await migrate(conn, directory=copy)
    finally:
        await conn.close()


async def test_new_file_is_applied_in_order(db_url: str, tmp_path: Path) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    (copy / "9999_extra.sql").write_text("CREATE TABLE extra_table (id int);")
    conn = await asyncpg.connect(db_url)
    try:
        report = await migrate(conn, directory=copy)
        assert report.applied == ["9999_extra"]
        assert await conn.fetchval("SELECT to_regclass('extra_table') IS NOT NULL")
    finally:
        await conn.close()


async def test_failing_migration_leaves_nothing_half_applied(db_url: str, tmp_path: Path) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    (copy / "9999_broken.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(MigrationError, match="9999_broken failed"):
            await migrate(conn, directory=copy)
        assert not await conn.fetchval("SELECT to_regclass('half') IS NOT NULL")
        assert not await conn.fetchval(
            "SELECT count(*) FROM schema_migrations WHERE version = 9999"
        )
    finally:
        await conn.close()


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="must look like"):
        load_migrations(tmp_path)


async def test_concurrent_runs_apply_each_file_once(empty_db_url: str) -> None:
    import asyncio

    reports = await asyncio.gather(*(migrate_url(empty_db_url) for _ in range(4)))
    applied = [name for report in reports for name in report.applied]
    assert sorted(applied) == sorted(m.name for m in load_migrations())
    assert sum(r.procrastinate_schema_applied for r in reports) == 1
