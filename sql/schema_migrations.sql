-- name: create_migrations_table#
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: lock_migrations()$
-- Serialises concurrent `ingest migrate` runs; released when the session ends.
SELECT pg_advisory_lock(7243911035552101);

-- name: unlock_migrations()$
SELECT pg_advisory_unlock(7243911035552101);

-- name: applied_migrations()
SELECT version, name, checksum FROM schema_migrations ORDER BY version;

-- name: record_migration(version, name, checksum)!
INSERT INTO schema_migrations (version, name, checksum) VALUES (:version, :name, :checksum);

-- name: procrastinate_schema_present()$
SELECT to_regclass('procrastinate_jobs') IS NOT NULL;
