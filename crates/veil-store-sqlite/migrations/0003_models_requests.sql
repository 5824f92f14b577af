-- Signing keys, model versions (encrypted files; wrapped keys here), and requests that may
-- need review.

CREATE TABLE signing_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     BIGINT NOT NULL REFERENCES users(id),
    name        TEXT NOT NULL,
    public_key  BLOB NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE UNIQUE INDEX signing_keys_active_name ON signing_keys(user_id, name) WHERE revoked_at IS NULL;

CREATE TABLE models (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    owner_id    BIGINT NOT NULL REFERENCES users(id),
    owner_email TEXT NOT NULL,
    file_id     TEXT NOT NULL UNIQUE,
    wrapped_key BLOB NOT NULL,
    sha256      TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    summary     TEXT NOT NULL,
    signed_by   TEXT,
    created_at  BIGINT NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    requester_id BIGINT NOT NULL REFERENCES users(id),
    requester    TEXT NOT NULL,
    target       TEXT NOT NULL,
    dataset      TEXT,
    parameters   TEXT NOT NULL,
    epsilon      BIGINT NOT NULL,
    delta        BIGINT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'running', 'done', 'failed')),
    reason       TEXT,
    result       TEXT,
    reviewer     TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX requests_requester ON requests(requester_id, id);
CREATE INDEX requests_status ON requests(status, id);
