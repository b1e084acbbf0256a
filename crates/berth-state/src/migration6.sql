-- berth state, version 6: uptime history. Every probe of a service and every check of a
-- monitor is a raw sample (kept 48 hours), summed into 1-minute buckets (14 days) and 1-hour
-- buckets (90 days), with the latency median and 95th percentile of each bucket.
CREATE TABLE uptime_raw (
    subject    TEXT NOT NULL,
    at         INTEGER NOT NULL,
    up         INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL
);
CREATE INDEX uptime_raw_subject ON uptime_raw (subject, at);

CREATE TABLE uptime_minutes (
    subject TEXT NOT NULL,
    minute  INTEGER NOT NULL,
    checks  INTEGER NOT NULL,
    ups     INTEGER NOT NULL,
    p50_ms  INTEGER NOT NULL,
    p95_ms  INTEGER NOT NULL,
    PRIMARY KEY (subject, minute)
) WITHOUT ROWID;

CREATE TABLE uptime_hours (
    subject TEXT NOT NULL,
    hour    INTEGER NOT NULL,
    checks  INTEGER NOT NULL,
    ups     INTEGER NOT NULL,
    p50_ms  INTEGER NOT NULL,
    p95_ms  INTEGER NOT NULL,
    PRIMARY KEY (subject, hour)
) WITHOUT ROWID;
