-- The trending decay, written once (docs/rollups.md, "Trending score"): what a day's weighted
-- engagement still weighs `age_days` days later, with a half-life of `half_life` days. A
-- single-expression SQL function, IMMUTABLE: the planner inlines it into the rollup statements.
CREATE FUNCTION rollup_decayed(weighted double precision, age_days integer,
                               half_life double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT weighted * power(2.0::float8, -(age_days::float8) / half_life) $$;
