-- Rollups: daily metrics, trending scores and leaderboard snapshots (docs/rollups.md).
-- A "day" is a UTC calendar day: events with day <= ts < day + 1, both as UTC midnights.

-- name: rollup_set_work_mem(work_mem)$
-- For the rest of the caller's transaction only. Every rollup statement is a bulk join: a
-- nested loop is never the right plan, but a misestimate of the scratch tables can pick one
-- (seconds instead of milliseconds), so they are ruled out. Merge joins too: nothing here
-- arrives sorted, and on the CTE row estimates the boards' joins sorted 40 000 rows to merge
-- what a hash joins in a fifth of the time. JIT compiling costs more than these sub-second
-- statements gain from it (and ruling out nested loops inflates costs past jit_above_cost),
-- so it is off too.
SELECT set_config('work_mem', :work_mem::text, true),
       set_config('enable_nestloop', 'off', true),
       set_config('enable_mergejoin', 'off', true),
       set_config('enable_hashagg', 'on', true),
       set_config('jit', 'off', true);

-- name: rollup_count_settings(work_mem)$
-- The same, for the transaction that counts a day's events (rollup_stage_rule_day or, on a
-- replica, rollup_day_rule_counts), with hash aggregation off: the count groups the rows of each
-- (rule, type, client) as they come out of the day's index (migration 0016), nearly one group
-- per event, where the planner, guessing a tenth of that, would hash them (four times slower).
-- The steps after it set hash aggregation back (rollup_set_work_mem).
SELECT set_config('work_mem', :work_mem::text, true),
       set_config('enable_nestloop', 'off', true),
       set_config('enable_mergejoin', 'off', true),
       set_config('enable_hashagg', 'off', true),
       set_config('jit', 'off', true);

-- name: rollup_lock_day(day)$
-- Serializes every rollup (task, HTTP dry run, CLI) that writes or reads-to-write this day;
-- released when the caller's transaction ends.
SELECT pg_advisory_xact_lock(hashtext('ingest.rollup.day'), :day::date - date '2000-01-01');

-- name: rollup_start_run(actor, end_day, days, args, day_reasons)^
INSERT INTO rollup_runs (actor, end_day, days, args, day_reasons)
VALUES (:actor, :end_day::date, :days::date[], :args::jsonb, :day_reasons::jsonb)
RETURNING id, started_at;

-- name: rollup_facts_horizon(margin_s)$
-- Every transaction that began before the oldest one still open in this database has ended, so a
-- run whose reads start after this sees every event and donation change stamped earlier (they
-- carry their transaction's start, now()). Sessions of roles this one may not inspect show no
-- start: then no later than two minutes ago (any intake or Stripe transaction has ended by then).
SELECT least(now(),
             -- strictly before it: that transaction's rows carry its start and are not seen yet
             (SELECT min(a.xact_start) - interval '1 microsecond' FROM pg_stat_activity a
              WHERE a.datname = current_database() AND a.backend_type = 'client backend'
                AND a.pid <> pg_backend_pid()),
             (SELECT now() - interval '2 minutes' FROM pg_stat_activity a
              WHERE a.datname = current_database() AND a.backend_type = 'client backend'
                AND a.pid <> pg_backend_pid() AND a.state IS NULL
              LIMIT 1))
       - make_interval(secs => :margin_s::float8);

-- name: rollup_replay_timestamp()$
-- On a streaming standby, a time it has every commit up to: the commit time of the last
-- transaction it replayed; before it has replayed one since it started (NULL then), the time of
-- the checkpoint it started from: a standby accepts connections only once it has replayed past
-- that checkpoint. NULL on a primary that never went through recovery.
SELECT coalesce(pg_last_xact_replay_timestamp(),
                CASE WHEN pg_is_in_recovery()
                     THEN (SELECT c.checkpoint_time FROM pg_control_checkpoint() AS c)
                END);

-- name: rollup_finish_run(run_id, status, duration_ms, row_counts, day_reasons, error)!
-- `day_reasons`: why each day was rolled, the refreshed (cascade) days included.
UPDATE rollup_runs
SET finished_at = now(), status = :status, duration_ms = :duration_ms::float8,
    row_counts = :row_counts::jsonb, day_reasons = :day_reasons::jsonb, error = :error
WHERE id = :run_id;

-- name: rollup_clear_stage(run_id)$
-- This run's scratch rows, and those of runs that died more than a day ago.
WITH stale AS (
    SELECT r.id FROM rollup_runs r WHERE r.started_at < now() - interval '1 day'
),
rule_rows AS (
    DELETE FROM rollup_stage_rule s
    WHERE s.run_id = :run_id OR s.run_id IN (SELECT id FROM stale)
    RETURNING 1
),
author_rows AS (
    DELETE FROM rollup_stage_author s
    WHERE s.run_id = :run_id OR s.run_id IN (SELECT id FROM stale)
    RETURNING 1
),
window_rows AS (
    DELETE FROM rollup_stage_window s
    WHERE s.run_id = :run_id OR s.run_id IN (SELECT id FROM stale)
    RETURNING 1
),
scope_rows AS (
    DELETE FROM rollup_stage_scope s
    WHERE s.run_id = :run_id OR s.run_id IN (SELECT id FROM stale)
    RETURNING 1
)
SELECT (SELECT count(*) FROM rule_rows) + (SELECT count(*) FROM author_rows)
       + (SELECT count(*) FROM window_rows) + (SELECT count(*) FROM scope_rows);

-- name: rollup_analyze_stage#
-- Fresh statistics once the days are staged: the planner otherwise takes the (unlogged, never
-- auto-analyzed in time) scratch tables for nearly empty and picks nested loops, or sorts where
-- a hash would do (the windows read the staged days a third faster once analyzed).
ANALYZE rollup_stage_rule, rollup_stage_author;

-- name: rollup_analyze_windows#
-- The same for the window and scope rows, before the apply statements read them.
ANALYZE rollup_stage_window, rollup_stage_scope;

-- name: rollup_stage_scopes(run_id)$
-- The boards every rule belongs to, numbered: GLOBAL, each of its (current) tags, its model.
WITH rule_scopes AS (
    SELECT r.id AS rule_id, r.author_id, 'GLOBAL' AS scope, '' AS scope_key
    FROM rules r
    UNION
    SELECT r.id, r.author_id, 'TAG', t.tag
    FROM rules r CROSS JOIN LATERAL unnest(r.tags) AS t (tag)
    WHERE t.tag IS NOT NULL AND t.tag <> ''
    UNION
    SELECT r.id, r.author_id, 'MODEL', r.model
    FROM rules r
    WHERE r.model IS NOT NULL AND r.model <> ''
),
numbered AS (
    SELECT scope, scope_key, row_number() OVER (ORDER BY scope, scope_key COLLATE "C") AS scope_no
    FROM (SELECT DISTINCT scope, scope_key FROM rule_scopes) AS k
),
staged AS (
    INSERT INTO rollup_stage_scope (run_id, rule_id, scope_no, author_id, scope, scope_key)
    SELECT :run_id, s.rule_id, n.scope_no, s.author_id, s.scope, s.scope_key
    FROM rule_scopes s
    JOIN numbered n ON n.scope = s.scope AND n.scope_key = s.scope_key
    RETURNING 1
)
SELECT count(*) FROM staged;

-- name: rollup_stage_rule_day(run_id, day, view_cap)$
-- The one expensive statement: one day of events (the BRIN index on ts finds its blocks),
-- counted per rule and type into the stage, in one statement on the primary. The counting
-- (views capped per client IP, docs/rollups.md) is the SQL function rollup_rule_counts_of_day
-- (migrations/0010), which the planner inlines here, shared with rollup_day_rule_counts.
WITH staged AS (
    INSERT INTO rollup_stage_rule (run_id, day, rule_id, views, copies, saves, forks, votes)
    SELECT :run_id, :day::date, c.rule_id, c.views, c.copies, c.saves, c.forks, c.votes
    FROM rollup_rule_counts_of_day(:day::date, :view_cap::int) AS c
    RETURNING 1
)
SELECT count(*) FROM staged;

-- name: rollup_day_rule_counts(run_id, day, view_cap)
-- The same counts as a plain SELECT, for a read replica (ROLLUP_DATABASE_URL, docs/scaling.md:
-- a standby refuses every write): the rows come in rollup_stage_rule's column order and are
-- copied into the stage on the primary (app.rollup.stage_day).
SELECT :run_id::bigint AS run_id, :day::date AS day, c.rule_id, c.views, c.copies, c.saves,
       c.forks, c.votes
FROM rollup_rule_counts_of_day(:day::date, :view_cap::int) AS c;

-- name: rollup_stage_author_day(run_id, day)$
-- The day's author rows from the day's staged rule rows (engagement summed over the author's
-- rules) plus the money kept from donations created that day. Always on the primary, even with a
-- replica for the events: donations are read where they are written, so a day is never marked
-- rolled (rollup_days.facts_as_of) with a refund a lagging replica had not replayed yet, which the
-- dirty-day check (donations.updated_at > facts_as_of) would then never see again.
WITH engagement AS (
    SELECT r.author_id, sum(s.views)::int AS views, sum(s.copies)::int AS copies,
           sum(s.saves)::int AS saves, sum(s.forks)::int AS forks, sum(s.votes)::int AS votes
    FROM rollup_stage_rule s
    JOIN rules r ON r.id = s.rule_id
    WHERE s.run_id = :run_id AND s.day = :day::date
    GROUP BY r.author_id
),
kept AS (
    -- Money kept per donation, as the Stripe side defines it (donations_kept, docs/stripe.md):
    -- paid minus refunded minus an open or lost dispute; nothing for pending or failed.
    SELECT coalesce(d.author_id, r.author_id) AS author_id, d.kept_cents
    FROM donations_kept d
    LEFT JOIN rules r ON r.id = d.rule_id
    WHERE d.created_at >= (:day::date)::timestamp AT TIME ZONE 'UTC'
      AND d.created_at < (:day::date + 1)::timestamp AT TIME ZONE 'UTC'
),
money AS (
    SELECT author_id, count(*)::int AS donations_count, sum(kept_cents)::bigint AS amount
    FROM kept
    WHERE kept_cents > 0 AND author_id IS NOT NULL
    GROUP BY author_id
),
staged AS (
    INSERT INTO rollup_stage_author (run_id, day, author_id, views, copies, saves, forks, votes,
                                     donations_count, donations_amount_cents)
    SELECT :run_id, :day::date, coalesce(e.author_id, m.author_id),
           coalesce(e.views, 0), coalesce(e.copies, 0), coalesce(e.saves, 0),
           coalesce(e.forks, 0), coalesce(e.votes, 0),
           coalesce(m.donations_count, 0), coalesce(m.amount, 0)
    FROM engagement e
    FULL JOIN money m ON m.author_id = e.author_id
    WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = coalesce(e.author_id, m.author_id))
    RETURNING 1
)
SELECT count(*) FROM staged;

-- name: rollup_stage_window_day(run_id, run_days, day, horizon, half_life, w_view, w_copy, w_save, w_fork, w_vote)$
-- The day's first apply statement: every rule's weighted engagement in the windows ending on
-- `day` (DAILY, WEEKLY 7 days, MONTHLY 30 days, ALL_TIME) and its trending score, from one
-- read of the days up to it (the run's from the stage, the others from rule_metric_daily).
-- The rule upsert and the leaderboards read these rows instead of aggregating again.
-- trending(rule, D) = sum over d in (D - horizon, D] of weighted(d) * 2^(-(D - d) / half_life).
-- Window sums are rounded to 6 decimals so that sums taken in another order still tie.
WITH src AS (
    SELECT s.rule_id, s.day, s.views, s.copies, s.saves, s.forks, s.votes
    FROM rollup_stage_rule s
    WHERE s.run_id = :run_id AND s.day <= :day::date
    UNION ALL
    SELECT m.rule_id, m.day, m.views, m.copies, m.saves, m.forks, m.votes
    FROM rule_metric_daily m
    WHERE m.day <= :day::date AND m.day <> ALL (:run_days::date[])
),
weighted AS (
    SELECT src.rule_id, src.day,
           :w_view::float8 * src.views + :w_copy::float8 * src.copies
           + :w_save::float8 * src.saves + :w_fork::float8 * src.forks
           + :w_vote::float8 * src.votes AS ws
    FROM src
),
windows AS (
    SELECT rule_id,
           coalesce(sum(ws) FILTER (WHERE day = :day::date), 0) AS daily,
           coalesce(sum(ws) FILTER (WHERE day > :day::date - 7), 0) AS weekly,
           coalesce(sum(ws) FILTER (WHERE day > :day::date - 30), 0) AS monthly,
           sum(ws) AS all_time,
           coalesce(sum(rollup_decayed(ws, :day::date - day, :half_life::float8))
                    FILTER (WHERE day > :day::date - :horizon::int), 0) AS trending
    FROM weighted
    GROUP BY rule_id
),
staged AS (
    INSERT INTO rollup_stage_window (run_id, day, rule_id, daily, weekly, monthly, all_time,
                                     trending)
    SELECT :run_id, :day::date, rule_id, round(daily::numeric, 6)::float8,
           round(weekly::numeric, 6)::float8, round(monthly::numeric, 6)::float8,
           round(all_time::numeric, 6)::float8, round(trending::numeric, 6)::float8
    FROM windows
    RETURNING 1
)
SELECT count(*) FROM staged;

-- name: rollup_apply_rule_day(run_id, day)$
-- Replace the day's rule rows with the staged counts and their trending scores (from the
-- day's window rows): upsert what changed, delete rules that no longer have any event that
-- day. Returns the number of rule rows the day now has.
WITH staged AS (
    SELECT s.rule_id, s.views, s.copies, s.saves, s.forks, s.votes,
           coalesce(w.trending, 0) AS trending_score
    FROM rollup_stage_rule s
    JOIN rules r ON r.id = s.rule_id
    LEFT JOIN rollup_stage_window w
           ON w.run_id = s.run_id AND w.day = s.day AND w.rule_id = s.rule_id
    WHERE s.run_id = :run_id AND s.day = :day::date
),
upserted AS (
    INSERT INTO rule_metric_daily AS m (rule_id, day, views, copies, saves, forks, votes,
                                        trending_score)
    SELECT rule_id, :day::date, views, copies, saves, forks, votes, trending_score
    FROM staged
    ON CONFLICT (rule_id, day) DO UPDATE
    SET views = EXCLUDED.views, copies = EXCLUDED.copies, saves = EXCLUDED.saves,
        forks = EXCLUDED.forks, votes = EXCLUDED.votes, trending_score = EXCLUDED.trending_score
    WHERE (m.views, m.copies, m.saves, m.forks, m.votes, m.trending_score)
          IS DISTINCT FROM (EXCLUDED.views, EXCLUDED.copies, EXCLUDED.saves, EXCLUDED.forks,
                            EXCLUDED.votes, EXCLUDED.trending_score)
    RETURNING 1
),
removed AS (
    DELETE FROM rule_metric_daily m
    WHERE m.day = :day::date
      AND NOT EXISTS (SELECT 1 FROM staged s WHERE s.rule_id = m.rule_id)
    RETURNING 1
)
SELECT count(*) FROM staged;

-- name: rollup_apply_author_day(run_id, run_days, day, horizon, half_life, w_view, w_copy, w_save, w_fork, w_vote)$
-- Replace the day's author rows with the staged ones and their trending scores, exactly.
WITH src AS (
    SELECT s.author_id, s.day, s.views, s.copies, s.saves, s.forks, s.votes
    FROM rollup_stage_author s
    WHERE s.run_id = :run_id AND s.day > :day::date - :horizon::int AND s.day <= :day::date
    UNION ALL
    SELECT m.author_id, m.day, m.views, m.copies, m.saves, m.forks, m.votes
    FROM author_metric_daily m
    WHERE m.day > :day::date - :horizon::int AND m.day <= :day::date
      AND m.day <> ALL (:run_days::date[])
),
scores AS (
    SELECT src.author_id,
           round(sum(rollup_decayed(:w_view::float8 * src.views + :w_copy::float8 * src.copies
                                    + :w_save::float8 * src.saves + :w_fork::float8 * src.forks
                                    + :w_vote::float8 * src.votes,
                                    :day::date - src.day, :half_life::float8)
                    )::numeric, 6)::float8 AS score
    FROM src
    GROUP BY src.author_id
),
staged AS (
    SELECT s.*, coalesce(sc.score, 0) AS trending_score
    FROM rollup_stage_author s
    LEFT JOIN scores sc ON sc.author_id = s.author_id
    WHERE s.run_id = :run_id AND s.day = :day::date
      AND EXISTS (SELECT 1 FROM users u WHERE u.id = s.author_id)
),
upserted AS (
    INSERT INTO author_metric_daily AS a (author_id, day, views, copies, saves, forks, votes,
                                          donations_count, donations_amount_cents,
                                          trending_score)
    SELECT author_id, :day::date, views, copies, saves, forks, votes,
           donations_count, donations_amount_cents, trending_score
    FROM staged
    ON CONFLICT (author_id, day) DO UPDATE
    SET views = EXCLUDED.views, copies = EXCLUDED.copies, saves = EXCLUDED.saves,
        forks = EXCLUDED.forks, votes = EXCLUDED.votes,
        donations_count = EXCLUDED.donations_count,
        donations_amount_cents = EXCLUDED.donations_amount_cents,
        trending_score = EXCLUDED.trending_score
    WHERE (a.views, a.copies, a.saves, a.forks, a.votes, a.donations_count,
           a.donations_amount_cents, a.trending_score)
          IS DISTINCT FROM (EXCLUDED.views, EXCLUDED.copies, EXCLUDED.saves, EXCLUDED.forks,
                            EXCLUDED.votes, EXCLUDED.donations_count,
                            EXCLUDED.donations_amount_cents, EXCLUDED.trending_score)
    RETURNING 1
),
removed AS (
    DELETE FROM author_metric_daily a
    WHERE a.day = :day::date
      AND NOT EXISTS (SELECT 1 FROM staged s WHERE s.author_id = a.author_id)
    RETURNING 1
)
SELECT count(*) FROM staged;

-- Trending and leaderboards of a day read a window of days before it. The days of the running
-- rollup (`run_days`) are read from its staged rows, the final new numbers, and every other day
-- from the metric tables; so each day can be committed on its own, in any order, and is still
-- computed from the numbers the whole run will leave.

-- name: rollup_trend_rule_day(run_id, day)$
-- The trending scores of a day that is not itself re-rolled but reads one that is, from the
-- day's window rows (rollup_stage_window_day).
WITH updated AS (
    UPDATE rule_metric_daily t
    SET trending_score = w.trending
    FROM rollup_stage_window w
    WHERE w.run_id = :run_id AND w.day = :day::date
      AND t.rule_id = w.rule_id AND t.day = :day::date
      AND t.trending_score IS DISTINCT FROM w.trending
    RETURNING 1
)
SELECT count(*) FROM updated;

-- name: rollup_trend_author_day(run_id, run_days, day, horizon, half_life, w_view, w_copy, w_save, w_fork, w_vote)$
-- The same decayed sum over the author's daily rows (engagement only, not donations).
WITH src AS (
    SELECT s.author_id, s.day, s.views, s.copies, s.saves, s.forks, s.votes
    FROM rollup_stage_author s
    WHERE s.run_id = :run_id AND s.day > :day::date - :horizon::int AND s.day <= :day::date
    UNION ALL
    SELECT m.author_id, m.day, m.views, m.copies, m.saves, m.forks, m.votes
    FROM author_metric_daily m
    WHERE m.day > :day::date - :horizon::int AND m.day <= :day::date
      AND m.day <> ALL (:run_days::date[])
),
scores AS (
    SELECT src.author_id,
           round(sum(rollup_decayed(:w_view::float8 * src.views + :w_copy::float8 * src.copies
                                    + :w_save::float8 * src.saves + :w_fork::float8 * src.forks
                                    + :w_vote::float8 * src.votes,
                                    :day::date - src.day, :half_life::float8)
                    )::numeric, 6)::float8 AS score
    FROM src
    GROUP BY src.author_id
),
updated AS (
    UPDATE author_metric_daily t
    SET trending_score = s.score
    FROM scores s
    WHERE t.author_id = s.author_id AND t.day = :day::date
      AND t.trending_score IS DISTINCT FROM s.score
    RETURNING 1
)
SELECT count(*) FROM updated;

-- name: rollup_clear_leaderboards_day(day)!
DELETE FROM leaderboard_snapshot WHERE day = :day::date;

-- name: rollup_leaderboards_day(run_id, day, board_size)$
-- Every board of the day: DAILY / WEEKLY (7 days) / MONTHLY (30 days) / ALL_TIME windows
-- ending on `day`, for rules and authors, globally and per tag and per model (the rule's
-- tags and model as the run staged them). Score = weighted engagement in the window (the day's
-- window rows); rank by score, ties broken by entity id so a re-run ranks identically. Entities
-- with no score are not ranked.
--
-- A board is one integer, (scope_no * 4 + period_no) * 2 + entity (0 rule, 1 author): ranking
-- sorts on it instead of on text. Rule boards are ranked from a head: a rule's place in a board
-- is its place among the board's rules in the period's overall order (score, then id), so a
-- board with `board_size` rules among the period's first `head` rules has its whole top there;
-- only the rules of the other (sparse) boards are expanded beyond the head. Every board is
-- exact whatever the head size; the head only spares ranking ~10 000 rules x 4 periods x every
-- scope each day. Author boards sum the rule windows per (author, scope) once for all periods.
WITH periods AS (
    SELECT w.rule_id, p.period_no, p.score,
           row_number() OVER (PARTITION BY p.period_no
                              ORDER BY p.score DESC, w.rule_id COLLATE "C") AS place
    FROM rollup_stage_window w
    CROSS JOIN LATERAL (VALUES (0, w.daily), (1, w.weekly), (2, w.monthly), (3, w.all_time))
        AS p (period_no, score)
    WHERE w.run_id = :run_id AND w.day = :day::date AND p.score > 0
),
rule_boards AS (
    SELECT b.rule_id, b.author_id, b.scope_no
    FROM rollup_stage_scope b
    WHERE b.run_id = :run_id
),
scope_numbers AS (
    SELECT DISTINCT b.scope_no, b.scope, b.scope_key
    FROM rollup_stage_scope b
    WHERE b.run_id = :run_id
),
head AS (
    SELECT (b.scope_no * 4 + p.period_no) * 2 AS board, p.place, p.rule_id, p.score
    FROM periods p
    JOIN rule_boards b ON b.rule_id = p.rule_id
    WHERE p.place <= :board_size::int * 20
),
sparse AS (
    -- (scope, period) pairs whose board has fewer than board_size rules in the head.
    SELECT n.scope_no, p.period_no
    FROM scope_numbers n CROSS JOIN generate_series(0, 3) AS p (period_no)
    EXCEPT
    SELECT board / 8, (board / 2) % 4 FROM head GROUP BY board HAVING count(*) >= :board_size::int
),
rule_entries AS (
    SELECT board, place, rule_id, score FROM head
    UNION ALL
    SELECT (b.scope_no * 4 + p.period_no) * 2, p.place, p.rule_id, p.score
    FROM sparse x
    JOIN rule_boards b ON b.scope_no = x.scope_no
    JOIN periods p ON p.rule_id = b.rule_id AND p.period_no = x.period_no
    WHERE p.place > :board_size::int * 20
      AND EXISTS (SELECT 1 FROM sparse)  -- evaluated once: no sparse board, no join at all
),
author_scopes AS (
    -- Only positive rule scores count, as only they are ranked.
    SELECT b.author_id, b.scope_no, sum(greatest(w.daily, 0)) AS daily,
           sum(greatest(w.weekly, 0)) AS weekly, sum(greatest(w.monthly, 0)) AS monthly,
           sum(greatest(w.all_time, 0)) AS all_time
    FROM rollup_stage_window w
    JOIN rule_boards b ON b.rule_id = w.rule_id
    WHERE w.run_id = :run_id AND w.day = :day::date
    GROUP BY b.author_id, b.scope_no
),
ranked AS (
    SELECT board, rule_id AS entity_id, score,
           row_number() OVER (PARTITION BY board ORDER BY place) AS rank
    FROM rule_entries
    UNION ALL
    SELECT board, entity_id, score,
           row_number() OVER (PARTITION BY board ORDER BY score DESC, entity_id COLLATE "C")
    FROM (
        -- Rounded so that sums taken in another order still tie exactly.
        SELECT (a.scope_no * 4 + p.period_no) * 2 + 1 AS board, a.author_id AS entity_id,
               round(p.score::numeric, 6)::float8 AS score
        FROM author_scopes a
        CROSS JOIN LATERAL (VALUES (0, a.daily), (1, a.weekly), (2, a.monthly), (3, a.all_time))
            AS p (period_no, score)
        WHERE p.score > 0
    ) AS author_entries
),
inserted AS (
    INSERT INTO leaderboard_snapshot (day, period, entity, scope, scope_key, rank, entity_id, score)
    SELECT :day::date, (ARRAY['DAILY', 'WEEKLY', 'MONTHLY', 'ALL_TIME'])[(r.board / 2) % 4 + 1],
           CASE WHEN r.board % 2 = 0 THEN 'RULE' ELSE 'AUTHOR' END, n.scope, n.scope_key,
           r.rank, r.entity_id, r.score
    FROM ranked r
    JOIN scope_numbers n ON n.scope_no = r.board / 8
    WHERE r.rank <= :board_size::int
    RETURNING 1
)
SELECT count(*) FROM inserted;

-- name: rollup_mark_day(day, run_id, reasons, facts_as_of)!
-- The day's numbers now include every fact up to `facts_as_of` (the notes of updates and
-- deletions up to then are spent); `reasons` says why it was rolled.
WITH spent AS (
    DELETE FROM rollup_fact_changes
    WHERE day = :day::date AND changed_at <= :facts_as_of::timestamptz
)
INSERT INTO rollup_days AS d (day, rolled_at, run_id, facts_as_of, reasons)
VALUES (:day::date, now(), :run_id, :facts_as_of::timestamptz, :reasons::text[])
ON CONFLICT (day) DO UPDATE
SET rolled_at = now(), run_id = EXCLUDED.run_id, facts_as_of = EXCLUDED.facts_as_of,
    reasons = EXCLUDED.reasons;

-- name: rollup_dirty_days()
-- Days whose numbers do not include every stored fact yet (the view, migrations/0011).
SELECT day, reasons, changed_since FROM rollup_dirty_days ORDER BY day;

-- name: rollup_changed_days(run_id, days)
-- Staged days whose rule counts are not the stored ones (rules that still exist, as the apply
-- keeps them): the days after them read them.
SELECT d.day
FROM unnest(:days::date[]) AS d (day)
WHERE EXISTS (
    (SELECT s.rule_id, s.views, s.copies, s.saves, s.forks, s.votes
     FROM rollup_stage_rule s
     JOIN rules r ON r.id = s.rule_id
     WHERE s.run_id = :run_id AND s.day = d.day
     EXCEPT
     SELECT m.rule_id, m.views, m.copies, m.saves, m.forks, m.votes
     FROM rule_metric_daily m
     WHERE m.day = d.day)
    UNION ALL
    (SELECT m.rule_id, m.views, m.copies, m.saves, m.forks, m.votes
     FROM rule_metric_daily m
     WHERE m.day = d.day
     EXCEPT
     SELECT s.rule_id, s.views, s.copies, s.saves, s.forks, s.votes
     FROM rollup_stage_rule s
     WHERE s.run_id = :run_id AND s.day = d.day)
)
ORDER BY d.day;

-- name: rollup_rolled_days_after(day)
-- Rolled days after `day`: their trending and boards read it.
SELECT day FROM rollup_days WHERE day > :day::date ORDER BY day;

-- name: rollup_recent_runs(limit_)
-- The last runs, for `ingest rollup --status`.
SELECT id, started_at, finished_at, status, actor, days, day_reasons, duration_ms, error
FROM rollup_runs ORDER BY id DESC LIMIT :limit_::int;

-- name: rollup_top_entries(day, limit_)
-- The head of the day's global boards, for the dry-run report.
SELECT period, entity, rank, entity_id, score
FROM leaderboard_snapshot
WHERE day = :day::date AND scope = 'GLOBAL' AND scope_key = '' AND rank <= :limit_::int
ORDER BY entity DESC, array_position(ARRAY['DAILY', 'WEEKLY', 'MONTHLY', 'ALL_TIME'], period),
         rank;


-- name: rollup_forget_changes_before(day)!
-- Notes of updated or deleted facts of days older than the retention floor: the rollup never
-- re-rolls those days (their events may be gone), so the notes would only pile up.
DELETE FROM rollup_fact_changes WHERE day < :day::date;
