-- Author notifications (docs/rollups.md). Each statement is set-based and idempotent: the
-- unique (author_id, cause_key) makes ON CONFLICT DO NOTHING skip every cause already notified.

-- name: notifications_donations(since)$
-- One DONATION per donation that went through (it succeeded, even if refunded later).
WITH fresh AS (
    INSERT INTO notifications (author_id, kind, cause_key, payload)
    SELECT coalesce(d.author_id, r.author_id), 'DONATION', 'donation:' || d.id,
           jsonb_build_object('donationId', d.id, 'ruleId', d.rule_id,
                              'amountCents', d.amount_cents, 'currency', d.currency,
                              'donorUserId', d.donor_user_id, 'at', d.created_at)
    FROM donations d
    LEFT JOIN rules r ON r.id = d.rule_id
    WHERE d.updated_at >= :since::timestamptz
      AND d.status IN ('succeeded', 'partially_refunded', 'refunded', 'disputed', 'lost')
      AND coalesce(d.author_id, r.author_id) IS NOT NULL
    ON CONFLICT (author_id, cause_key) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM fresh;

-- name: notifications_forks(since)$
-- One FORK per FORK event on an author's rule, except the author forking their own rule.
WITH fresh AS (
    INSERT INTO notifications (author_id, kind, cause_key, payload)
    SELECT r.author_id, 'FORK', 'fork:' || e.id,
           jsonb_build_object('eventId', e.id, 'ruleId', e.rule_id, 'forkedBy', e.user_id,
                              'at', e.ts)
    FROM events e
    JOIN rules r ON r.id = e.rule_id
    WHERE e.type = 'FORK' AND e.ts >= :since::timestamptz
      AND e.user_id IS DISTINCT FROM r.author_id
    ON CONFLICT (author_id, cause_key) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM fresh;

-- name: notifications_top10(since_day)$
-- One LEADERBOARD_TOP10 per board an author (or one of their rules) entered: in the board's
-- top 10 on a day and not in that board's top 10 the day before.
WITH entered AS (
    SELECT s.day, s.period, s.entity, s.scope, s.scope_key, s.rank, s.entity_id, s.score
    FROM leaderboard_snapshot s
    WHERE s.day >= :since_day::date AND s.rank <= 10
      AND NOT EXISTS (
            SELECT 1 FROM leaderboard_snapshot p
            WHERE p.period = s.period AND p.entity = s.entity AND p.scope = s.scope
              AND p.scope_key = s.scope_key AND p.day = s.day - 1 AND p.rank <= 10
              AND p.entity_id = s.entity_id)
),
fresh AS (
    INSERT INTO notifications (author_id, kind, cause_key, payload)
    SELECT CASE WHEN e.entity = 'AUTHOR' THEN e.entity_id ELSE r.author_id END,
           'LEADERBOARD_TOP10',
           concat_ws(':', 'top10', e.period, e.entity, e.scope, e.scope_key, e.entity_id, e.day),
           jsonb_build_object('day', e.day, 'period', e.period, 'entity', e.entity,
                              'scope', e.scope, 'scopeKey', e.scope_key,
                              'entityId', e.entity_id, 'rank', e.rank, 'score', e.score)
    FROM entered e
    LEFT JOIN rules r ON e.entity = 'RULE' AND r.id = e.entity_id
    WHERE EXISTS (SELECT 1 FROM users u
                  WHERE u.id = CASE WHEN e.entity = 'AUTHOR' THEN e.entity_id ELSE r.author_id END)
    ON CONFLICT (author_id, cause_key) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM fresh;
