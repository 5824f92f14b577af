-- Datasets: metadata and the wrapped data key of each encrypted file. Deleting a row
-- destroys the key. Privacy amounts are integers (micro-ε, femto-δ).

CREATE TABLE datasets (
    name          TEXT PRIMARY KEY,
    description   TEXT NOT NULL DEFAULT '',
    manifest      TEXT NOT NULL,
    file_id       TEXT NOT NULL UNIQUE,
    wrapped_key   BYTEA NOT NULL,
    row_count     BIGINT NOT NULL,
    bytes_stored  BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    epsilon_cap   BIGINT CHECK (epsilon_cap >= 0),
    delta_cap     BIGINT CHECK (delta_cap >= 0),
    epsilon_spent BIGINT NOT NULL DEFAULT 0 CHECK (epsilon_spent >= 0),
    delta_spent   BIGINT NOT NULL DEFAULT 0 CHECK (delta_spent >= 0),
    policy        TEXT NOT NULL DEFAULT 'auto' CHECK (policy IN ('auto', 'review'))
);
