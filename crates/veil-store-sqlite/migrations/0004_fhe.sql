-- Encrypted inference: a model version may carry a compiled circuit (sealed file, wrapped key
-- here, public summary), and users upload TFHE evaluation keys (files; metadata here).

ALTER TABLE models ADD COLUMN fhe_file_id TEXT;
ALTER TABLE models ADD COLUMN fhe_wrapped_key BLOB;
ALTER TABLE models ADD COLUMN fhe_summary TEXT;

CREATE TABLE evaluation_keys (
    id          TEXT PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users(id),
    sha256      TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX evaluation_keys_user ON evaluation_keys(user_id, created_at);
