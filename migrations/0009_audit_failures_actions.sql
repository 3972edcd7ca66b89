-- audit_failures also lists actions named `<area>.<thing>_failed` / `_rejected` (for instance
-- `stripe.event_failed`, `stripe.webhook_rejected`), not only `<area>.failed`.
CREATE OR REPLACE VIEW audit_failures AS
SELECT id, at, actor, action, subject, request_id, details
FROM audit_log
WHERE action ~ '[._](failed|rejected|refused|invalid|error)$'
   OR details ? 'error'
ORDER BY at DESC, id DESC;
