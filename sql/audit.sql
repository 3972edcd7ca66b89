-- name: insert_audit(actor, action, subject, request_id, details)!
INSERT INTO audit_log (actor, action, subject, request_id, details)
VALUES (:actor, :action, :subject, :request_id, :details);
