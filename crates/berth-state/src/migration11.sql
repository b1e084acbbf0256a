-- berth state, version 11: two-factor console logins. The TOTP secret is kept as base32 (it
-- must be read to check a code); recovery codes only as SHA-256, one per line.
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_pending TEXT;
ALTER TABLE users ADD COLUMN totp_last_step INTEGER;
ALTER TABLE users ADD COLUMN recovery_codes TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN second_factor_pending INTEGER NOT NULL DEFAULT 0;

CREATE TABLE console_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
