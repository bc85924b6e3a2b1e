-- The PostgreSQL schema: the same tables as migrations/sqlite (read those for what each column
-- means), for several gateway instances sharing one database. Integers are BIGINT because
-- every count and timestamp is an i64 in the code; binary columns are BYTEA.

CREATE TABLE undeclared_endpoints (
    method      TEXT    NOT NULL,
    shape       TEXT    NOT NULL,
    hits        BIGINT  NOT NULL,
    first_seen  BIGINT  NOT NULL,
    last_seen   BIGINT  NOT NULL,
    PRIMARY KEY (method, shape)
);

CREATE TABLE vault_keks (
    id          TEXT    PRIMARY KEY,
    kcv         BYTEA   NOT NULL,
    state       TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE vault_secrets (
    name           TEXT    PRIMARY KEY,
    secret_type    TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    expires_at     BIGINT,
    max_age_secs   BIGINT,
    consumers      TEXT    NOT NULL,
    keep_versions  BIGINT  NOT NULL
);

CREATE TABLE vault_versions (
    name           TEXT    NOT NULL REFERENCES vault_secrets(name) ON DELETE CASCADE,
    version        BIGINT  NOT NULL,
    state          TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    valid_until    BIGINT,
    first_used_at  BIGINT,
    kek_id         TEXT    NOT NULL,
    wrapped_dek    BYTEA   NOT NULL,
    ciphertext     BYTEA   NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX vault_versions_kek ON vault_versions (kek_id);

CREATE TABLE vault_meta (
    id     BIGINT PRIMARY KEY CHECK (id = 1),
    epoch  BIGINT NOT NULL
);
INSERT INTO vault_meta (id, epoch) VALUES (1, 0);

CREATE TABLE api_keys (
    key_id        TEXT    PRIMARY KEY,
    client_id     TEXT    NOT NULL,
    hash          BYTEA   NOT NULL,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX api_keys_client ON api_keys (client_id);

CREATE TABLE change_counters (
    name   TEXT    PRIMARY KEY,
    epoch  BIGINT  NOT NULL
);
INSERT INTO change_counters (name, epoch) VALUES ('api_keys', 0);

CREATE TABLE revoked_tokens (
    jti         TEXT    PRIMARY KEY,
    expires_at  BIGINT  NOT NULL
);

-- "window" is a reserved word in PostgreSQL, so it is always quoted.
CREATE TABLE quota_usage (
    key       TEXT    NOT NULL,
    "window"  TEXT    NOT NULL,
    used      BIGINT  NOT NULL,
    PRIMARY KEY (key, "window")
);

CREATE TABLE webhook_outbox (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook         TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    event_type      TEXT,
    content_type    TEXT,
    body            BYTEA   NOT NULL,
    received_at     BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    last_error      TEXT,
    state           TEXT    NOT NULL DEFAULT 'pending',
    lease_until     BIGINT,
    UNIQUE (webhook, message_id)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at);
