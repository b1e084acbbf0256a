-- berth state, version 9: API tokens. Only each token's SHA-256 is kept; the token itself is
-- shown once. A name is unique among the tokens not revoked, so a revoked name can be reused
-- while the audit log keeps meaning the old one.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('read', 'deploy', 'admin')),
    app          TEXT,
    token_hash   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;
