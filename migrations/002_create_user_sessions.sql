-- Sessions with a sliding time to live. Times come from the database clock
-- (now()), so every service instance agrees on expiry. `ttl_ms` is kept so
-- that a touch can slide `expires_at` in one UPDATE.
CREATE TABLE user_sessions (
    id            uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_activity timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    ttl_ms        bigint      NOT NULL CHECK (ttl_ms > 0),
    data          jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(data) = 'object')
);

-- "A user's live sessions, newest first": the leading user_id serves every
-- per-user lookup, and the trailing columns give the list order without a sort.
CREATE INDEX user_sessions_user_id_idx ON user_sessions (user_id, created_at DESC, id DESC);

-- The sweep of expired sessions.
CREATE INDEX user_sessions_expires_at_idx ON user_sessions (expires_at);
