-- berth state, version 7: alert mutes (`berth alerts mute`): alerts that match are still
-- recorded, but not sent, until the mute ends.
CREATE TABLE alert_mutes (
    id         INTEGER PRIMARY KEY,
    -- NULL matches every app (and the host's alerts).
    app        TEXT,
    -- NULL matches every rule.
    rule       TEXT,
    -- NULL matches every subject.
    subject    TEXT,
    until      INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
