-- The secrets vault. Values are stored only as AES-256-GCM ciphertext under a per-version data
-- key; data keys only wrapped by a key-encryption key (KEK) that never touches the database.
CREATE TABLE vault_keks (
    id          TEXT    PRIMARY KEY,   -- derived from the key check value
    kcv         BLOB    NOT NULL,      -- HMAC-SHA256(KEK, fixed label): proves a KEK, reveals nothing
    state       TEXT    NOT NULL,      -- active | next | retired
    created_at  INTEGER NOT NULL
);

CREATE TABLE vault_secrets (
    name           TEXT    PRIMARY KEY,
    secret_type    TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    expires_at     INTEGER,             -- Unix seconds; not served after
    max_age_secs   INTEGER,             -- rotation policy
    consumers      TEXT    NOT NULL,    -- JSON array of consumer ids ("route:orders")
    keep_versions  INTEGER NOT NULL
);

CREATE TABLE vault_versions (
    name           TEXT    NOT NULL REFERENCES vault_secrets(name) ON DELETE CASCADE,
    version        INTEGER NOT NULL,
    state          TEXT    NOT NULL,    -- active | disabled | destroyed
    created_at     INTEGER NOT NULL,
    valid_until    INTEGER,             -- end of the rotation grace period for a superseded version
    first_used_at  INTEGER,
    kek_id         TEXT    NOT NULL,
    wrapped_dek    BLOB    NOT NULL,
    ciphertext     BLOB    NOT NULL,
    PRIMARY KEY (name, version)
);

-- Bumped on every vault write, so other processes drop their caches.
CREATE TABLE vault_meta (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    epoch  INTEGER NOT NULL
);
INSERT INTO vault_meta (id, epoch) VALUES (1, 0);
