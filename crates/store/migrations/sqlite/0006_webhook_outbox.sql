-- Verified webhook events waiting for delivery to their workflow backend (delivery = "queued"),
-- and the dead-letter list (state = 'dead'). A row is deleted once delivered.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook         TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    event_type      TEXT,
    content_type    TEXT,
    body            BLOB    NOT NULL,
    received_at     INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    state           TEXT    NOT NULL DEFAULT 'pending',
    lease_until     INTEGER,
    UNIQUE (webhook, message_id)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at);
