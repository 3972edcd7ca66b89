-- Rollups, trending, leaderboards and author notifications (docs/rollups.md).

-- One row per rollup run: its arguments, how long it took and what it wrote.
CREATE TABLE rollup_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    actor        text NOT NULL,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'succeeded', 'failed', 'dry_run')),
    end_day      date NOT NULL,
    days         date[] NOT NULL,
    args         jsonb NOT NULL DEFAULT '{}',
    duration_ms  double precision,
    row_counts   jsonb NOT NULL DEFAULT '{}',
    error        text
);
CREATE INDEX rollup_runs_started_at_idx ON rollup_runs (started_at);

-- The days whose metrics were written, and when: the backfill looks for the missing ones and
-- re-rolls days whose donations changed since.
CREATE TABLE rollup_days (
    day        date PRIMARY KEY,
    rolled_at  timestamptz NOT NULL DEFAULT now(),
    run_id     bigint
);

-- Per-run scratch: the per-day aggregates are computed in parallel into these tables, then
-- each day is applied to the metric tables in one transaction, its trending and boards read
-- from this run's staged days and the stored other days. Unlogged: a crash only loses scratch.
CREATE UNLOGGED TABLE rollup_stage_rule (
    run_id   bigint NOT NULL,
    day      date NOT NULL,
    rule_id  text COLLATE "C" NOT NULL,
    views    integer NOT NULL,
    copies   integer NOT NULL,
    saves    integer NOT NULL,
    forks    integer NOT NULL,
    votes    integer NOT NULL,
    PRIMARY KEY (run_id, day, rule_id)
);
CREATE UNLOGGED TABLE rollup_stage_author (
    run_id                  bigint NOT NULL,
    day                     date NOT NULL,
    author_id               text COLLATE "C" NOT NULL,
    views                   integer NOT NULL,
    copies                  integer NOT NULL,
    saves                   integer NOT NULL,
    forks                   integer NOT NULL,
    votes                   integer NOT NULL,
    donations_count         integer NOT NULL,
    donations_amount_cents  bigint NOT NULL,
    PRIMARY KEY (run_id, day, author_id)
);

-- Donations are attributed to the UTC day they were created on.
CREATE INDEX donations_created_at_rollup_idx ON donations (created_at);

CREATE TABLE notifications (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    author_id   text COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('DONATION', 'FORK', 'LEADERBOARD_TOP10')),
    -- What caused it ("donation:<id>", "fork:<event id>", "top10:<board>:<entity>:<day>"):
    -- unique per author, so no cause is ever notified twice.
    cause_key   text COLLATE "C" NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz,
    CONSTRAINT notifications_author_cause_key UNIQUE (author_id, cause_key)
);
CREATE INDEX notifications_unread_idx ON notifications (author_id, created_at) WHERE read_at IS NULL;
