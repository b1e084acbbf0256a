-- berth state, version 3: the backup catalog and the record of backup operations.

-- One row per good copy of a backup on one storage: a cache of the records (ID.json) stored
-- beside the backups, which stay the source of truth. `berth backup list --refresh` rebuilds
-- it from the storage.
CREATE TABLE backup_copies (
    app           TEXT NOT NULL,
    name          TEXT NOT NULL,
    id            TEXT NOT NULL,
    destination   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    verified_at   INTEGER NOT NULL,
    -- Set when the latest re-verification of this copy failed.
    verify_error  TEXT,
    meta_json     TEXT NOT NULL,
    PRIMARY KEY (app, name, id, destination)
);

-- Every backup, verification, prune and restore: running, ok, partial or failed, with the cause.
CREATE TABLE backup_runs (
    id           INTEGER PRIMARY KEY,
    app          TEXT NOT NULL,
    name         TEXT NOT NULL,
    operation    TEXT NOT NULL,            -- backup | verify | prune | restore
    actor        TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    status       TEXT NOT NULL,            -- running | ok | partial | failed
    backup_id    TEXT,
    cause        TEXT,
    error        TEXT
);
CREATE INDEX backup_runs_by_name ON backup_runs(app, name, operation, id);
