-- berth state, version 5: alerts (one row per firing-to-resolved span, or per one-off event)
-- and their deliveries to the alert channels.
CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY,
    -- What the alert is about, unique among firing alerts: rule and subject.
    key         TEXT NOT NULL,
    rule        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    app         TEXT,
    subject     TEXT NOT NULL,
    summary     TEXT NOT NULL,
    -- 'state' (fires, later resolves) or 'event' (a one-off: a replica replaced, an OOM kill).
    kind        TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    -- NULL while a state alert fires.
    resolved_at INTEGER
);
CREATE INDEX alerts_firing ON alerts (key) WHERE resolved_at IS NULL;
CREATE INDEX alerts_app ON alerts (app, id);

CREATE TABLE alert_deliveries (
    id       INTEGER PRIMARY KEY,
    alert_id INTEGER,
    channel  TEXT NOT NULL,
    app      TEXT,
    -- 'firing', 'resolved', 'reminder', 'event' or 'test'.
    what     TEXT NOT NULL,
    at       INTEGER NOT NULL,
    ok       INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    error    TEXT
);
CREATE INDEX alert_deliveries_channel ON alert_deliveries (app, channel, id);
