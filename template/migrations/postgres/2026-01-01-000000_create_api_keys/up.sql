CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    key_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    owner_id TEXT,
    scopes TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP,
    revoked_at TIMESTAMP,
    last_used_at TIMESTAMP,
    request_count BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX api_keys_owner_created ON api_keys (owner_id, created_at);
CREATE INDEX api_keys_created ON api_keys (created_at);
