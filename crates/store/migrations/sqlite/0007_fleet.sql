-- Token revocations get their own change counter, so every process reloads its revoked-token
-- set when another one revokes (RFC 7009) instead of at its next start.
INSERT INTO change_counters (name, epoch) VALUES ('revoked_tokens', 0);
-- Who holds an outbox lease: the outcome of a delivery is recorded only by the worker whose
-- lease it still is, and each event's lease is renewed as its attempt starts.
ALTER TABLE webhook_outbox ADD COLUMN lease_token TEXT;
