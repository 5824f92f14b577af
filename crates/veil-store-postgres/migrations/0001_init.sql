-- Veil metadata schema, PostgreSQL dialect. Timestamps are microseconds since the Unix epoch;
-- privacy amounts are integers (micro-ε, femto-δ). Keep in step with veil-store-sqlite.

CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    permissions TEXT NOT NULL,
    preset      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id                   BIGSERIAL PRIMARY KEY,
    email                TEXT NOT NULL UNIQUE,
    role                 TEXT NOT NULL REFERENCES roles(name),
    password_hash        TEXT NOT NULL,
    must_change_password BOOLEAN NOT NULL DEFAULT FALSE,
    disabled             BOOLEAN NOT NULL DEFAULT FALSE,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX users_role ON users(role);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users(id),
    kind         TEXT NOT NULL CHECK (kind IN ('session', 'api')),
    name         TEXT,
    secret_hash  BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX tokens_user ON tokens(user_id);
CREATE UNIQUE INDEX tokens_active_name ON tokens(user_id, name)
    WHERE kind = 'api' AND revoked_at IS NULL;

CREATE TABLE budgets (
    user_id       BIGINT NOT NULL REFERENCES users(id),
    scope         TEXT NOT NULL,
    epsilon_cap   BIGINT NOT NULL CHECK (epsilon_cap >= 0),
    delta_cap     BIGINT NOT NULL CHECK (delta_cap >= 0),
    epsilon_spent BIGINT NOT NULL DEFAULT 0 CHECK (epsilon_spent >= 0),
    delta_spent   BIGINT NOT NULL DEFAULT 0 CHECK (delta_spent >= 0),
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (user_id, scope)
);

CREATE TABLE budget_ledger (
    id        BIGSERIAL PRIMARY KEY,
    user_id   BIGINT NOT NULL REFERENCES users(id),
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
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL,
    seal      BYTEA NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log(actor, seq);

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    seal BYTEA NOT NULL
);
-- The head row exists from the start so appenders can lock it with SELECT ... FOR UPDATE.
INSERT INTO audit_head (id, seq, hash, seal) VALUES (1, 0, '\x', '\x');

-- Append-only: stops mistakes; the hash chain and seals detect deliberate tampering.
CREATE FUNCTION veil_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION veil_append_only();
CREATE TRIGGER budget_ledger_append_only BEFORE UPDATE OR DELETE ON budget_ledger
    FOR EACH ROW EXECUTE FUNCTION veil_append_only();
