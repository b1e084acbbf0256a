-- berth state, version 10: console accounts. Passwords are argon2id PHC strings; session ids
-- and one-time link secrets are kept only as SHA-256 (the browser or the link holds them).
CREATE TABLE users (
    name            TEXT PRIMARY KEY,
    role            TEXT NOT NULL CHECK (role IN ('viewer', 'deployer', 'admin')),
    status          TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'pending')),
    password_hash   TEXT,
    created_at      INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    INTEGER,
    last_login_at   INTEGER
);

CREATE TABLE sessions (
    id_hash      TEXT PRIMARY KEY,
    user_name    TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    ip           TEXT NOT NULL,
    user_agent   TEXT NOT NULL
);

CREATE INDEX sessions_by_user ON sessions (user_name);

CREATE TABLE account_links (
    id_hash    TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    purpose    TEXT NOT NULL CHECK (purpose IN ('setup', 'reset')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
