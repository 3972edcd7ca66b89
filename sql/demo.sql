-- The demo catalogue of `ingest demo` (app/demo.py). Users, rules and crawl sources belong
-- to the site; these are the rows it would have written, keyed by the ids the docs use.

-- name: demo_foreign_rows(user_ids, rule_ids, source_ids)$
-- Whether the site's catalogue holds users or rules the demo did not write (a real
-- database: every event, donation and import refers to them). Rules imported through the
-- demo's source count as the demo's.
SELECT EXISTS (SELECT 1 FROM users WHERE id <> ALL (:user_ids::text[]))
    OR EXISTS (SELECT 1 FROM rules
               WHERE id <> ALL (:rule_ids::text[])
                 AND (source_id IS NULL OR source_id <> ALL (:source_ids::text[])));

-- name: demo_insert_users(ids, handles)$
-- Users the demo adds (existing ids are left as they are); returns how many were added.
WITH added AS (
    INSERT INTO users (id, handle)
    SELECT * FROM unnest(:ids::text[], :handles::text[])
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM added;

-- name: demo_insert_rules(ids, author_ids, titles, tags, models)$
-- Rules the demo adds, each with its tags (a comma-separated list) and model.
WITH added AS (
    INSERT INTO rules (id, author_id, title, tags, model)
    SELECT r.id, r.author_id, r.title, string_to_array(r.tags, ','), r.model
    FROM unnest(:ids::text[], :author_ids::text[], :titles::text[], :tags::text[],
                :models::text[]) AS r (id, author_id, title, tags, model)
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM added;

-- name: demo_insert_source(id, name, curator_id)$
-- The demo's crawl source under a fixed id (`ingest sources add` draws one), or NULL when
-- it is already there.
INSERT INTO crawl_sources (id, name, curator_id)
VALUES (:id, :name, :curator_id)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: demo_events_loaded(key_prefix)$
-- Whether the demo's week of events is in already (each carries a demo idempotency key).
SELECT EXISTS (SELECT 1 FROM events WHERE left(idempotency_key, length(:key_prefix)) = :key_prefix);
