-- Crawl intake and full-text search over rules.
--
-- Search lives in its own table, `rule_search` (one weighted tsvector per rule, GIN-indexed),
-- kept current by triggers on `rules` and rebuilt in full by the `rebuild_search` task, which
-- builds `rule_search_next` and swaps it in by renaming. Everything that reads the search
-- refers to the table by NAME at run time (a string-bodied SQL function, never a view or a
-- BEGIN ATOMIC body, which would bind to the old table's OID), so a swap is invisible to it.

-- Rule ids linked from crawl items: lets a rule delete find its crawl item without a scan.
CREATE INDEX crawl_items_rule_id_idx ON crawl_items (rule_id) WHERE rule_id IS NOT NULL;

-- The searchable document of a rule: title A, summary B, tags C, model D.
CREATE FUNCTION rule_search_document(title text, summary text, tags text[], model text)
RETURNS tsvector
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A')
        || setweight(to_tsvector('english'::regconfig, coalesce(summary, '')), 'B')
        || setweight(to_tsvector('english'::regconfig, coalesce(array_to_string(tags, ' '), '')), 'C')
        || setweight(to_tsvector('english'::regconfig, coalesce(model, '')), 'D')
$$;

CREATE TABLE rule_search (
    rule_id      text COLLATE "C" NOT NULL,
    document     tsvector NOT NULL,
    -- xmin of the rules row this document was built from; set by full rebuilds only, so a
    -- rebuild can find the rules rows written while it was building (see sql/search.sql).
    row_version  xid,
    CONSTRAINT rule_search_pkey PRIMARY KEY (rule_id)
);
CREATE INDEX rule_search_document_idx ON rule_search USING gin (document);

INSERT INTO rule_search (rule_id, document, row_version)
SELECT r.id, rule_search_document(r.title, r.summary, r.tags, r.model), r.xmin
FROM rules r;

-- Keeps `rule_search` current on every write to `rules`, whoever writes (this service or the
-- main API). SECURITY DEFINER with a pinned search_path: a role that may write `rules` needs no
-- privilege on `rule_search`, whose grants a rebuild would otherwise lose at each swap.
CREATE FUNCTION rule_search_sync() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM rule_search WHERE rule_id = OLD.id;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id THEN
        DELETE FROM rule_search WHERE rule_id = OLD.id;
    END IF;
    INSERT INTO rule_search (rule_id, document)
    VALUES (NEW.id, rule_search_document(NEW.title, NEW.summary, NEW.tags, NEW.model))
    ON CONFLICT (rule_id) DO UPDATE SET document = EXCLUDED.document, row_version = NULL;
    RETURN NULL;
END;
$$;
ALTER FUNCTION rule_search_sync() SET search_path FROM CURRENT;

CREATE TRIGGER rules_search_insert AFTER INSERT ON rules
    FOR EACH ROW EXECUTE FUNCTION rule_search_sync();
CREATE TRIGGER rules_search_update AFTER UPDATE OF id, title, summary, tags, model ON rules
    FOR EACH ROW
    WHEN (OLD.id IS DISTINCT FROM NEW.id
          OR OLD.title IS DISTINCT FROM NEW.title
          OR OLD.summary IS DISTINCT FROM NEW.summary
          OR OLD.tags IS DISTINCT FROM NEW.tags
          OR OLD.model IS DISTINCT FROM NEW.model)
    EXECUTE FUNCTION rule_search_sync();
CREATE TRIGGER rules_search_delete AFTER DELETE ON rules
    FOR EACH ROW EXECUTE FUNCTION rule_search_sync();

-- The read path for the main API: ranked rule ids with a highlighted snippet.
-- `query` uses web-search syntax ("exact phrase", -excluded, or); `lim` is clamped to 1..100.
-- Ranking: ts_rank_cd over the weighted document (A 1.0 > B 0.4 > C 0.2 > D 0.1), so a title
-- match outranks a summary match. The snippet marks matches with <mark>...</mark> and does NOT
-- escape the rule's text: escape it before rendering it as HTML.
-- VOLATILE on purpose: the body then reads with a snapshot taken after it has locked
-- `rule_search`, so a call that waited for a swap sees the new table's rows (a STABLE body
-- would reuse the caller's older snapshot, in which the new table is still empty).
CREATE FUNCTION search_rules(query text, lim integer DEFAULT 20)
RETURNS TABLE (rule_id text, rank real, headline text)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$
    WITH q AS (
        SELECT websearch_to_tsquery('english'::regconfig, coalesce(query, '')) AS tsq
    ),
    hits AS (
        SELECT s.rule_id,
               ts_rank_cd('{0.1, 0.2, 0.4, 1.0}'::real[], s.document, q.tsq) AS rank,
               q.tsq
        FROM q
        JOIN rule_search s ON s.document @@ q.tsq
        WHERE numnode(q.tsq) > 0
        ORDER BY rank DESC, s.rule_id
        LIMIT least(greatest(coalesce(lim, 20), 1), 100)
    )
    SELECT h.rule_id,
           h.rank,
           ts_headline(
               'english'::regconfig,
               r.title || coalesce(': ' || r.summary, ''),
               h.tsq,
               'StartSel=<mark>, StopSel=</mark>, MaxWords=35, MinWords=12, MaxFragments=2, FragmentDelimiter=" ... "'
           )
    FROM hits h
    JOIN rules r ON r.id = h.rule_id
    ORDER BY h.rank DESC, h.rule_id
$$;
ALTER FUNCTION search_rules(text, integer) SET search_path FROM CURRENT;
