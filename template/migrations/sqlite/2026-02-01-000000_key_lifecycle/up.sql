ALTER TABLE api_keys ADD COLUMN enabled BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE api_keys ADD COLUMN rate_limit_requests INTEGER;
ALTER TABLE api_keys ADD COLUMN rate_limit_window INTEGER;
ALTER TABLE api_keys ADD COLUMN remaining BIGINT;
ALTER TABLE api_keys ADD COLUMN refill_interval TEXT;
ALTER TABLE api_keys ADD COLUMN refill_amount BIGINT;
ALTER TABLE api_keys ADD COLUMN refilled_at TIMESTAMP;
ALTER TABLE api_keys ADD COLUMN rotated_from TEXT;
ALTER TABLE api_keys ADD COLUMN replaced_by TEXT;
ALTER TABLE api_keys ADD COLUMN retires_at TIMESTAMP;

CREATE INDEX api_keys_expires ON api_keys (expires_at);

CREATE TABLE api_key_events (
    id TEXT PRIMARY KEY NOT NULL,
    key_id TEXT NOT NULL,
    action TEXT NOT NULL,
    actor_key_id TEXT,
    client TEXT,
    changes TEXT NOT NULL,
    at TIMESTAMP NOT NULL
);

CREATE INDEX api_key_events_key_at ON api_key_events (key_id, at);
CREATE INDEX api_key_events_at ON api_key_events (at);
