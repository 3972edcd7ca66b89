-- name: search_find(query, lim)
-- The operator view of `search_rules`: the same ranking, plus each rule's title.
SELECT s.rule_id, r.title, s.rank, s.headline
FROM search_rules(:query::text, :lim::integer) s
JOIN rules r ON r.id = s.rule_id
ORDER BY s.rank DESC, s.rule_id;

-- name: search_try_rebuild_lock()$
-- One full rebuild at a time; released with the rebuild's transaction.
SELECT pg_try_advisory_xact_lock(hashtext('ingest.rebuild_search'));

-- name: search_create_next_table#
-- The table a full rebuild fills, shaped like `rule_search` as the migrations made it (columns,
-- collations, NOT NULL; its key and index come after the fill); created inside the rebuild's
-- transaction, so no other session ever sees it and a failed rebuild leaves nothing behind.
CREATE TABLE rule_search_next (LIKE rule_search INCLUDING DEFAULTS);

-- name: search_fill_next_table()$
-- Every rule's document, recording the version (xmin) of the rules row it was built from.
WITH filled AS (
    INSERT INTO rule_search_next (rule_id, document, row_version)
    SELECT r.id, rule_search_document(r.title, r.summary, r.tags, r.model), r.xmin
    FROM rules r
    RETURNING 1
)
SELECT count(*) FROM filled;

-- name: search_index_next_table#
ALTER TABLE rule_search_next ADD CONSTRAINT rule_search_next_pkey PRIMARY KEY (rule_id);
CREATE INDEX rule_search_next_document_idx ON rule_search_next USING gin (document);
ANALYZE rule_search_next;

-- name: search_catch_up_next_table()$
-- Bring the new table level with `rules`: documents of rules rows written (new xmin) or
-- deleted since the fill. Only changed rows are recomputed; returns how many changed.
WITH refreshed AS (
    INSERT INTO rule_search_next AS n (rule_id, document, row_version)
    SELECT r.id, rule_search_document(r.title, r.summary, r.tags, r.model), r.xmin
    FROM rules r
    LEFT JOIN rule_search_next o ON o.rule_id = r.id
    WHERE o.rule_id IS NULL OR o.row_version IS NULL OR NOT (o.row_version = r.xmin)
    ON CONFLICT (rule_id) DO UPDATE
    SET document = EXCLUDED.document, row_version = EXCLUDED.row_version
    RETURNING 1
),
removed AS (
    DELETE FROM rule_search_next n
    WHERE NOT EXISTS (SELECT 1 FROM rules r WHERE r.id = n.rule_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM refreshed) + (SELECT count(*) FROM removed);

-- name: search_freeze_rules#
-- Writers of `rules` wait (readers do not) until the swap commits, so no write is missed.
LOCK TABLE rules IN SHARE MODE;

-- name: search_swap_tables#
-- Readers wait only for these few catalog updates. A reader already waiting for the old
-- table re-resolves the name when it gets its lock, and finds the new table.
LOCK TABLE rule_search IN ACCESS EXCLUSIVE MODE;
DROP TABLE rule_search;
ALTER TABLE rule_search_next RENAME TO rule_search;
ALTER INDEX rule_search_next_pkey RENAME TO rule_search_pkey;
ALTER INDEX rule_search_next_document_idx RENAME TO rule_search_document_idx;
