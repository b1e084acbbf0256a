-- berth state, version 1.
CREATE TABLE apps (
    name          TEXT PRIMARY KEY,
    created_at    INTEGER NOT NULL,
    -- The release serving traffic; the commit point of every deploy.
    live_release  INTEGER
);

CREATE TABLE releases (
    app            TEXT NOT NULL REFERENCES apps(name),
    number         INTEGER NOT NULL,
    version        TEXT NOT NULL,
    kind           TEXT NOT NULL,            -- deploy | rollback
    rollback_of    INTEGER,
    status         TEXT NOT NULL,            -- deploying | live | retired | failed
    manifest_toml  TEXT NOT NULL,
    manifest_json  TEXT NOT NULL,            -- the resolved manifest (secret names only)
    images_json    TEXT NOT NULL DEFAULT '{}',
    actor          TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    error          TEXT,
    PRIMARY KEY (app, number)
);

-- Containers berth created for services (not accessories). Anything labelled as berth's
-- that is not here, or not `current`, is removed when the agent reconciles.
CREATE TABLE instances (
    container_id  TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    app           TEXT NOT NULL,
    service       TEXT NOT NULL,
    release       INTEGER NOT NULL,
    replica       INTEGER NOT NULL,
    state         TEXT NOT NULL,             -- pending | current | retiring
    created_at    INTEGER NOT NULL
);
CREATE INDEX instances_by_app ON instances(app, state);

CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    app       TEXT NOT NULL,
    release   INTEGER,
    at        INTEGER NOT NULL,
    level     TEXT NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX events_by_release ON events(app, release);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    result  TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);

CREATE TABLE secrets (
    app         TEXT NOT NULL,
    name        TEXT NOT NULL,
    ciphertext  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (app, name)
);
