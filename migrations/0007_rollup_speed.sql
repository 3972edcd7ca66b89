-- Rollup speed (docs/rollups.md, "Cost"): each day's window of engagement is read once, and
-- the boards' scopes once per run.
--
-- Per rule and rolled day: the weighted engagement of the DAILY, WEEKLY, MONTHLY and ALL_TIME
-- windows ending that day (rounded as the boards store them) and the decayed trending score.
-- Staged from the run's staged days and the stored other days, then read by the rule upsert
-- (trending) and by the leaderboards; before, each of those statements aggregated the same
-- rows again. Unlogged scratch like the other stage tables.
CREATE UNLOGGED TABLE rollup_stage_window (
    run_id    bigint NOT NULL,
    day       date NOT NULL,
    rule_id   text COLLATE "C" NOT NULL,
    daily     double precision NOT NULL,
    weekly    double precision NOT NULL,
    monthly   double precision NOT NULL,
    all_time  double precision NOT NULL,
    trending  double precision NOT NULL,
    PRIMARY KEY (run_id, day, rule_id)
);

-- The boards each rule belongs to (GLOBAL, each tag, its model), numbered so that a board is
-- one integer to rank on; staged once per run instead of unnesting every rule's tags per day.
CREATE UNLOGGED TABLE rollup_stage_scope (
    run_id     bigint NOT NULL,
    rule_id    text COLLATE "C" NOT NULL,
    scope_no   integer NOT NULL,
    author_id  text COLLATE "C" NOT NULL,
    scope      text COLLATE "C" NOT NULL,
    scope_key  text COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, rule_id, scope_no)
);

-- Every rollup day writes some 29 000 leaderboard rows (288 boards x 100) into two indexes
-- whose keys lead with these text columns. Under the database's default collation each key
-- comparison is a strcoll() call; "C" compares bytes, which made the inserts about 40 %
-- cheaper. The values are upper-case ASCII words, tags and model names: equality is unchanged,
-- and order only differs from a non-C default collation for non-ASCII or mixed-case keys.
ALTER TABLE leaderboard_snapshot
    ALTER COLUMN period TYPE text COLLATE "C",
    ALTER COLUMN entity TYPE text COLLATE "C",
    ALTER COLUMN scope TYPE text COLLATE "C",
    ALTER COLUMN scope_key TYPE text COLLATE "C";
