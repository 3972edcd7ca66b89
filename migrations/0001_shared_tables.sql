-- The shared-database contract (DESIGN.md): the site's main API reads these tables directly,
-- so names and columns here are not renamed. Identifiers are opaque text; they use the "C"
-- collation because they are compared for equality only and "C" makes their indexes cheaper.

CREATE TABLE users (
    id          text COLLATE "C" PRIMARY KEY,
    handle      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_handle_key ON users (lower(handle));

CREATE TABLE crawl_sources (
    id          text COLLATE "C" PRIMARY KEY DEFAULT ('src_' || replace(gen_random_uuid()::text, '-', '')),
    name        text NOT NULL,
    curator_id  text COLLATE "C" REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT crawl_sources_name_key UNIQUE (name)
);

CREATE TABLE rules (
    id           text COLLATE "C" PRIMARY KEY DEFAULT ('rul_' || replace(gen_random_uuid()::text, '-', '')),
    author_id    text COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title        text NOT NULL,
    summary      text,
    url          text,
    tags         text[] NOT NULL DEFAULT '{}',
    model        text,
    source_id    text COLLATE "C" REFERENCES crawl_sources (id) ON DELETE SET NULL,
    external_id  text COLLATE "C",
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rules_source_external_key UNIQUE (source_id, external_id)
);
CREATE INDEX rules_author_id_idx ON rules (author_id);
CREATE INDEX rules_tags_idx ON rules USING gin (tags);
CREATE INDEX rules_model_idx ON rules (model) WHERE model IS NOT NULL;

CREATE TABLE events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type             text NOT NULL,
    rule_id          text COLLATE "C" NOT NULL REFERENCES rules (id) ON DELETE CASCADE,
    user_id          text COLLATE "C" REFERENCES users (id) ON DELETE SET NULL,
    ip_hash          text COLLATE "C",
    ts               timestamptz NOT NULL,
    idempotency_key  text COLLATE "C",
    received_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_type_check CHECK (type IN ('VIEW', 'COPY', 'SAVE', 'FORK', 'VOTE'))
);
CREATE INDEX events_rule_id_ts_idx ON events (rule_id, ts);
-- Rollups scan a day at a time; events arrive roughly in time order, so BRIN stays tiny.
CREATE INDEX events_ts_brin_idx ON events USING brin (ts);

CREATE TABLE donations (
    id                 text COLLATE "C" PRIMARY KEY DEFAULT ('don_' || replace(gen_random_uuid()::text, '-', '')),
    payment_intent_id  text COLLATE "C" NOT NULL,
    author_id          text COLLATE "C" REFERENCES users (id) ON DELETE SET NULL,
    rule_id            text COLLATE "C" REFERENCES rules (id) ON DELETE SET NULL,
    donor_user_id      text COLLATE "C" REFERENCES users (id) ON DELETE SET NULL,
    amount_cents       bigint NOT NULL DEFAULT 0 CHECK (amount_cents >= 0),
    refunded_cents     bigint NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    currency           text NOT NULL DEFAULT 'usd',
    status             text NOT NULL DEFAULT 'pending',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT donations_payment_intent_id_key UNIQUE (payment_intent_id),
    CONSTRAINT donations_status_check CHECK (status IN (
        'pending', 'succeeded', 'failed', 'partially_refunded', 'refunded', 'disputed', 'lost'))
);
CREATE INDEX donations_author_id_idx ON donations (author_id);

CREATE TABLE stripe_events (
    id            text COLLATE "C" PRIMARY KEY,
    type          text NOT NULL,
    payload       jsonb NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz,
    error         text
);
CREATE INDEX stripe_events_unprocessed_idx ON stripe_events (received_at) WHERE processed_at IS NULL;

CREATE TABLE crawl_items (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id     text COLLATE "C" NOT NULL REFERENCES crawl_sources (id) ON DELETE CASCADE,
    external_id   text COLLATE "C" NOT NULL,
    url           text NOT NULL,
    title         text NOT NULL,
    summary       text,
    raw           jsonb,
    content_hash  text NOT NULL,
    rule_id       text COLLATE "C" REFERENCES rules (id) ON DELETE SET NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT crawl_items_source_external_key UNIQUE (source_id, external_id)
);

CREATE TABLE rule_metric_daily (
    rule_id         text COLLATE "C" NOT NULL REFERENCES rules (id) ON DELETE CASCADE,
    day             date NOT NULL,
    views           integer NOT NULL DEFAULT 0,
    copies          integer NOT NULL DEFAULT 0,
    saves           integer NOT NULL DEFAULT 0,
    forks           integer NOT NULL DEFAULT 0,
    votes           integer NOT NULL DEFAULT 0,
    trending_score  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (rule_id, day)
);
CREATE INDEX rule_metric_daily_day_idx ON rule_metric_daily (day);

CREATE TABLE author_metric_daily (
    author_id               text COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day                     date NOT NULL,
    views                   integer NOT NULL DEFAULT 0,
    copies                  integer NOT NULL DEFAULT 0,
    saves                   integer NOT NULL DEFAULT 0,
    forks                   integer NOT NULL DEFAULT 0,
    votes                   integer NOT NULL DEFAULT 0,
    donations_count         integer NOT NULL DEFAULT 0,
    donations_amount_cents  bigint NOT NULL DEFAULT 0,
    trending_score          double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (author_id, day)
);
CREATE INDEX author_metric_daily_day_idx ON author_metric_daily (day);

CREATE TABLE leaderboard_snapshot (
    day        date NOT NULL,
    period     text NOT NULL CHECK (period IN ('DAILY', 'WEEKLY', 'MONTHLY', 'ALL_TIME')),
    entity     text NOT NULL CHECK (entity IN ('RULE', 'AUTHOR')),
    scope      text NOT NULL CHECK (scope IN ('GLOBAL', 'TAG', 'MODEL')),
    scope_key  text NOT NULL DEFAULT '',
    rank       integer NOT NULL CHECK (rank > 0),
    entity_id  text COLLATE "C" NOT NULL,
    score      double precision NOT NULL,
    PRIMARY KEY (day, period, entity, scope, scope_key, rank)
);
CREATE INDEX leaderboard_snapshot_entity_idx ON leaderboard_snapshot (entity, entity_id, day);

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    subject     text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_actor_at_idx ON audit_log (actor, at);
CREATE INDEX audit_log_action_at_idx ON audit_log (action, at);
