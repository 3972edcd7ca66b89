-- Event intake speed: drop the BRIN index on view_dedupe.last_counted_at.
--
-- Every counted VIEW writes its window row, in time order, so nearly every insert widened the
-- last block range's summary: one more index update and WAL record per view (about 12 % of the
-- batch statement's CPU, measured). On PostgreSQL 15 an indexed column also disqualifies an
-- update from HOT, so each moved window wrote a new primary-key entry despite the table's
-- fillfactor. And once windows move, a block range holds both old and fresh rows, so the index
-- stopped narrowing the hourly purge anyway. The purge (`events_purge_view_dedupe`) now scans
-- the table once an hour, off the request path.
DROP INDEX IF EXISTS view_dedupe_last_counted_at_idx;
