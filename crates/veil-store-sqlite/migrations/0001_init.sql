-- Veil metadata schema, SQLite dialect. Timestamps are microseconds since the Unix epoch;
-- privacy amounts are integers (micro-ε, femto-δ). Keep in step with veil-store-postgres.

CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    permissions TEXT NOT NULL,
    preset      INTEGER NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    email                TEXT NOT NULL UNIQUE,
    role                 TEXT NOT NULL REFERENCES roles(name),
    password_hash        TEXT NOT NULL,
    must_change_password INTEGER NOT NULL DEFAULT 0,
    disabled             INTEGER NOT NULL DEFAULT 0,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX users_role ON users(role);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id),
    kind         TEXT NOT NULL CHECK (kind IN ('session', 'api')),
    name         TEXT,
    secret_hash  BLOB NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX tokens_user ON tokens(user_id);
-- A user's active API tokens have distinct names.
CREATE UNIQUE INDEX tokens_active_name ON tokens(user_id, name)
    WHERE kind = 'api' AND revoked_at IS NULL;

CREATE TABLE budgets (
    user_id       INTEGER NOT NULL REFERENCES users(id),
    scope         TEXT NOT NULL,
    epsilon_cap   BIGINT NOT NULL CHECK (epsilon_cap >= 0),
    delta_cap     BIGINT NOT NULL CHECK (delta_cap >= 0),
    epsilon_spent BIGINT NOT NULL DEFAULT 0 CHECK (epsilon_spent >= 0),
    delta_spent   BIGINT NOT NULL DEFAULT 0 CHECK (delta_spent >= 0),
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (user_id, scope)
);

CREATE TABLE budget_ledger (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id   INTEGER NOT NULL REFERENCES users(id),
    dataset   TEXT,
    epsilon   BIGINT NOT NULL,
    delta     BIGINT NOT NULL,
    purpose   TEXT NOT NULL,
    reference TEXT NOT NULL,
    audit_seq BIGINT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX budget_ledger_user ON budget_ledger(user_id, id);

CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    seal      BLOB NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log(actor, seq);

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BLOB NOT NULL,
    seal BLOB NOT NULL
);

-- The log is append-only. This stops mistakes, not a determined administrator: the hash
-- chain and seals are what detect tampering.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER budget_ledger_no_update BEFORE UPDATE ON budget_ledger
BEGIN
    SELECT RAISE(ABORT, 'the budget ledger is append-only');
END;
CREATE TRIGGER budget_ledger_no_delete BEFORE DELETE ON budget_ledger
BEGIN
    SELECT RAISE(ABORT, 'the budget ledger is append-only');
END;
