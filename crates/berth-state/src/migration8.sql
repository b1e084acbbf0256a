-- berth state, version 8: resource history. Each sample of the host's and the services'
-- resources (CPU, memory, load, disk use) is summed into 1-minute buckets (kept 48 hours) and
-- 1-hour buckets (kept 90 days), with each bucket's peak. The key starts with the bucket, so
-- pruning by age and reading a window are range scans.
CREATE TABLE resource_minutes (
    bucket  INTEGER NOT NULL,
    subject TEXT NOT NULL,
    metric  TEXT NOT NULL,
    samples INTEGER NOT NULL,
    total   REAL NOT NULL,
    peak    REAL NOT NULL,
    PRIMARY KEY (bucket, subject, metric)
) WITHOUT ROWID;

CREATE TABLE resource_hours (
    bucket  INTEGER NOT NULL,
    subject TEXT NOT NULL,
    metric  TEXT NOT NULL,
    samples INTEGER NOT NULL,
    total   REAL NOT NULL,
    peak    REAL NOT NULL,
    PRIMARY KEY (bucket, subject, metric)
) WITHOUT ROWID;
