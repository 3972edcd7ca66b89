-- Rollup speed (docs/rollups.md, "Cost"): each applied day reads its window of engagement once.
--
-- Per rule and rolled day: the weighted engagement of the DAILY, WEEKLY, MONTHLY and ALL_TIME
-- windows ending that day (rounded as the boards store them) and the decayed trending score.
-- Filled by the day's first apply statement from the run's staged days and the stored other
-- days, then read by the rule upsert (trending) and by the leaderboards; before, each of those
-- statements aggregated the same rows again. Unlogged scratch like the other stage tables.
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
