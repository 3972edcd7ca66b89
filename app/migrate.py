"""Forward-only migrations: numbered plain-SQL files applied in order, each in a transaction.

The runner holds a PostgreSQL advisory lock so concurrent starts cannot apply a file twice,
records each file with a SHA-256 checksum, and refuses to go on when an applied file has
changed. Procrastinate's schema comes from the installed package, applied once when absent.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from procrastinate.schema import SchemaManager

from app.db import connect
from app.errors import ChecksumMismatch, MigrationError
from app.settings import PROJECT_ROOT
from app.sql import queries

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass
class MigrationReport:
    applied: list[str] = field(default_factory=list)
    procrastinate_schema_applied: bool = False

    @property
    def nothing_to_do(self) -> bool:
        return not self.applied and not self.procrastinate_schema_applied

    def summary(self) -> str:
        if self.nothing_to_do:
            return "Nothing to migrate: the database is up to date."
        parts = [f"applied {name}" for name in self.applied]
        if self.procrastinate_schema_applied:
            parts.append("applied the Procrastinate schema")
        return "Migrated: " + "; ".join(parts) + "."


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read the numbered files in order; a misnamed or duplicate number is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILENAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name must look like 0001_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations share number {version:04d}")
        found[version] = Migration(version, path.stem, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def _check_applied(migrations: list[Migration], applied: dict[int, asyncpg.Record]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, row in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {row['name']} which this code does not know; "
                "is this an older version of the service?"
            )
        if migration.checksum != row["checksum"]:
            raise ChecksumMismatch(
                f"migration {migration.name} was changed after it was applied "
                f"(checksum {row['checksum'][:12]} in the database, {migration.checksum[:12]} "
                "on disk); add a new migration instead of editing an applied one"
            )


async def migrate(conn: asyncpg.Connection, *, directory: Path = MIGRATIONS_DIR) -> MigrationReport:
    """Apply pending migrations, then Procrastinate's schema if it is absent."""
    migrations = load_migrations(directory)
    report = MigrationReport()
    await queries.lock_migrations(conn)
    try:
        await queries.create_migrations_table(conn)
        applied = {row["version"]: row async for row in queries.applied_migrations(conn)}
        _check_applied(migrations, applied)
        # Procrastinate's tables first, so that migrations may create views over them.
        if not await queries.procrastinate_schema_present(conn):
            async with conn.transaction():
                await conn.execute(SchemaManager.get_schema())
            report.procrastinate_schema_applied = True
        for migration in migrations:
            if migration.version not in applied:
                await _apply(conn, migration)
                report.applied.append(migration.name)
    finally:
        await queries.unlock_migrations(conn)
    return report


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await queries.record_migration(
                conn, version=migration.version, name=migration.name, checksum=migration.checksum
            )
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"migration {migration.name} failed: {exc}") from exc


async def migrate_url(dsn: str) -> MigrationReport:
    """Open one connection to `dsn` and migrate it."""
    conn = await connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
