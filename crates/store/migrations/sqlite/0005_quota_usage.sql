-- Requests counted against quotas, one row per counter and calendar window
-- (`d:2026-11-23`, `m:2026-11`); rows of past windows are pruned.
CREATE TABLE quota_usage (
    key     TEXT    NOT NULL,
    window  TEXT    NOT NULL,
    used    INTEGER NOT NULL,
    PRIMARY KEY (key, window)
);
