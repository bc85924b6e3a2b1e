-- API keys: only an HMAC-SHA256 of the secret part under a pepper held in the vault.
CREATE TABLE api_keys (
    key_id        TEXT    PRIMARY KEY,
    client_id     TEXT    NOT NULL,
    hash          BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    last_used_at  INTEGER
);
CREATE INDEX api_keys_client ON api_keys (client_id);

-- Change counters by table group, so other processes know to reload their caches.
CREATE TABLE change_counters (
    name   TEXT    PRIMARY KEY,
    epoch  INTEGER NOT NULL
);
INSERT INTO change_counters (name, epoch) VALUES ('api_keys', 0);
