-- name: crawl_get_source(source_id)^
-- The source a crawl batch names, with the curator its rules are attributed to.
SELECT id, name, curator_id
FROM crawl_sources
WHERE id = :source_id;

-- name: crawl_upsert_items(source_id, curator_id, items)
-- One statement per batch. `items` is a jsonb array of validated, normalised items, each with
-- its content hash; external ids are unique within it. Items whose stored hash equals the new
-- one are not written at all; new and changed items upsert their rule (keyed, like the item,
-- by source and external id; an existing rule keeps its author) and then their crawl item.
-- Returns one row per item: its outcome (created, updated, unchanged) and its rule id.
WITH incoming AS (
    SELECT i.*
    FROM jsonb_to_recordset(:items::jsonb) AS i(
        external_id text, url text, title text, summary text, tags text[], model text,
        raw jsonb, content_hash text)
),
known AS (
    SELECT ci.external_id, ci.content_hash, ci.rule_id
    FROM crawl_items ci
    WHERE ci.source_id = :source_id::text
      AND ci.external_id IN (SELECT external_id FROM incoming)
),
changed AS (
    SELECT i.*
    FROM incoming i
    LEFT JOIN known k ON k.external_id = i.external_id
    WHERE k.external_id IS NULL OR k.content_hash IS DISTINCT FROM i.content_hash
),
saved_rules AS (
    INSERT INTO rules AS r (author_id, title, summary, url, tags, model, source_id, external_id)
    SELECT :curator_id::text, c.title, c.summary, c.url, coalesce(c.tags, '{}'), c.model,
           :source_id::text, c.external_id
    FROM changed c
    ORDER BY c.external_id  -- one lock order for every batch: overlapping batches cannot deadlock
    ON CONFLICT (source_id, external_id) DO UPDATE
    SET title = EXCLUDED.title,
        summary = EXCLUDED.summary,
        url = EXCLUDED.url,
        tags = EXCLUDED.tags,
        model = EXCLUDED.model,
        updated_at = now()
    RETURNING r.id, r.external_id
),
saved_items AS (
    -- The outcome comes from what this statement really wrote, not from its snapshot: a batch
    -- racing another one with the same item sees no stored row, yet only one of them inserts it.
    -- Inserted rows have xmax = 0; a conflicting row with the same content hash is not written.
    INSERT INTO crawl_items AS ci
        (source_id, external_id, url, title, summary, raw, content_hash, rule_id)
    SELECT :source_id::text, c.external_id, c.url, c.title, c.summary, c.raw, c.content_hash,
           sr.id
    FROM changed c
    JOIN saved_rules sr ON sr.external_id = c.external_id
    ORDER BY c.external_id
    ON CONFLICT (source_id, external_id) DO UPDATE
    SET url = EXCLUDED.url,
        title = EXCLUDED.title,
        summary = EXCLUDED.summary,
        raw = EXCLUDED.raw,
        content_hash = EXCLUDED.content_hash,
        rule_id = EXCLUDED.rule_id,
        updated_at = now()
    WHERE ci.content_hash IS DISTINCT FROM EXCLUDED.content_hash
    RETURNING ci.external_id, (ci.xmax = 0) AS inserted
)
SELECT i.external_id,
       CASE WHEN si.external_id IS NULL THEN 'unchanged'
            WHEN si.inserted THEN 'created'
            ELSE 'updated' END AS outcome,
       coalesce(sr.id, k.rule_id) AS rule_id
FROM incoming i
LEFT JOIN saved_items si ON si.external_id = i.external_id
LEFT JOIN saved_rules sr ON sr.external_id = i.external_id
LEFT JOIN known k ON k.external_id = i.external_id;

-- name: crawl_user_exists(user_id)$
SELECT EXISTS (SELECT 1 FROM users WHERE id = :user_id);

-- name: crawl_insert_source(name, curator_id)$
-- The new source's id, or NULL when the name is already taken.
INSERT INTO crawl_sources (name, curator_id)
VALUES (:name, :curator_id)
ON CONFLICT (name) DO NOTHING
RETURNING id;

-- name: crawl_set_curator(source_id, curator_id)$
UPDATE crawl_sources SET curator_id = :curator_id WHERE id = :source_id RETURNING id;

-- name: crawl_list_sources()
-- Every source with its curator and what it has imported so far.
SELECT s.id, s.name, s.curator_id, s.created_at,
       count(ci.id) AS items,
       max(ci.updated_at) AS last_item_at
FROM crawl_sources s
LEFT JOIN crawl_items ci ON ci.source_id = s.id
GROUP BY s.id
ORDER BY s.name;
