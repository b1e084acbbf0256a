//! berth's embedded state: one SQLite file (WAL mode, versioned migrations) in the agent's
//! data directory.
//!
//! Invariants:
//! - `apps.live_release` changes only in [`Store::commit_switch`], in the same transaction
//!   that marks the new release live, the old one retired and their containers current or
//!   retiring. That transaction is the commit point of a deploy: after a crash, the agent
//!   serves whatever it says.
//! - Secret values are stored only encrypted; this crate never sees plaintext.

mod accounts;
mod model;
mod resources;
mod tokens;

pub use model::*;
pub use resources::*;

use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state file {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "cannot upgrade the state file {path}: {message}; restore it from a backup or move it aside"
    )]
    Migrate { path: PathBuf, message: String },
    #[error("the disk holding the state file is full while trying to {action}; free some space")]
    DiskFull { action: &'static str },
    #[error("state file error while trying to {action}: {message}")]
    Sqlite {
        action: &'static str,
        message: String,
    },
    #[error("the state file holds an unreadable {what}: {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StateError {
    move |error| match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StateError::DiskFull { action },
        _ => StateError::Sqlite {
            action,
            message: error.to_string(),
        },
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Store {
    connection: Mutex<Connection>,
}

/// Which audit entries to read: newest first, `limit` from `offset` on.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub limit: usize,
    pub offset: usize,
    /// An app: its own entries and its services' and backups'.
    pub app: Option<String>,
    /// A part of the actor.
    pub actor: Option<String>,
    pub action: Option<String>,
    pub result: Option<String>,
}

impl Store {
    /// Opens (creating if needed) the state file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let open_error = |e: rusqlite::Error| StateError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let mut connection = Connection::open(path).map_err(open_error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(open_error)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        migrations()
            .to_latest(&mut connection)
            .map_err(|e| StateError::Migrate {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    /// An in-memory store, for unit tests of the logic above it.
    pub fn in_memory() -> Result<Self> {
        let mut connection =
            Connection::open_in_memory().map_err(sql("open an in-memory store"))?;
        migrations()
            .to_latest(&mut connection)
            .map_err(|e| StateError::Migrate {
                path: ":memory:".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is safe to keep using.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- apps --------------------------------------------------------------------------

    pub fn ensure_app(&self, name: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO apps (name, created_at) VALUES (?1, ?2)",
                params![name, now_ms()],
            )
            .map(|_| ())
            .map_err(sql("record the app"))
    }

    pub fn apps(&self) -> Result<Vec<App>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT name, created_at, live_release, maintenance, stopped FROM apps ORDER BY name",
            )
            .map_err(sql("list apps"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(App {
                    name: row.get(0)?,
                    created_at: row.get(1)?,
                    live_release: row.get(2)?,
                    maintenance: row.get(3)?,
                    stopped: row.get(4)?,
                })
            })
            .map_err(sql("list apps"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list apps"))
    }

    pub fn app(&self, name: &str) -> Result<Option<App>> {
        self.conn()
            .query_row(
                "SELECT name, created_at, live_release, maintenance, stopped FROM apps WHERE name = ?1",
                [name],
                |row| {
                    Ok(App {
                        name: row.get(0)?,
                        created_at: row.get(1)?,
                        live_release: row.get(2)?,
                        maintenance: row.get(3)?,
                        stopped: row.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(sql("read an app"))
    }

    /// Turns maintenance mode on (with the message shown to visitors) or off. Returns whether
    /// the app exists.
    /// Marks an app stopped (`berth stop`) or not; false when there is no such app.
    pub fn set_stopped(&self, app: &str, stopped: bool) -> Result<bool> {
        self.conn()
            .execute(
                "UPDATE apps SET stopped = ?2 WHERE name = ?1",
                params![app, stopped],
            )
            .map(|n| n > 0)
            .map_err(sql("mark the app stopped"))
    }

    /// Forgets an app (`berth destroy`): its record, releases, instances and events, in one
    /// transaction. Secrets, the backup catalog and the audit log are kept: they are removed
    /// on their own, or outlive the app on purpose. Returns whether the app existed.
    pub fn delete_app(&self, app: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("forget the app"))?;
        for statement in [
            "DELETE FROM instances WHERE app = ?1",
            "DELETE FROM events WHERE app = ?1",
            "DELETE FROM releases WHERE app = ?1",
        ] {
            tx.execute(statement, [app])
                .map_err(sql("forget the app"))?;
        }
        let existed = tx
            .execute("DELETE FROM apps WHERE name = ?1", [app])
            .map_err(sql("forget the app"))?
            > 0;
        tx.commit().map_err(sql("forget the app"))?;
        Ok(existed)
    }

    pub fn set_maintenance(&self, app: &str, message: Option<&str>) -> Result<bool> {
        self.conn()
            .execute(
                "UPDATE apps SET maintenance = ?2 WHERE name = ?1",
                params![app, message],
            )
            .map(|n| n > 0)
            .map_err(sql("set maintenance mode"))
    }

    // ---- releases ----------------------------------------------------------------------

    /// Records a new release in `deploying` state with the next number for its app.
    pub fn create_release(&self, new: &NewRelease) -> Result<Release> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("record a release"))?;
        tx.execute(
            "INSERT OR IGNORE INTO apps (name, created_at) VALUES (?1, ?2)",
            params![new.app, now_ms()],
        )
        .map_err(sql("record a release"))?;
        let number: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE app = ?1",
                [&new.app],
                |r| r.get(0),
            )
            .map_err(sql("record a release"))?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO releases (app, number, version, kind, rollback_of, status, manifest_toml, manifest_json, actor, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'deploying', ?6, ?7, ?8, ?9)",
            params![new.app, number, new.version, new.kind.as_str(), new.rollback_of, new.manifest_toml, new.manifest_json, new.actor, now],
        )
        .map_err(sql("record a release"))?;
        tx.commit().map_err(sql("record a release"))?;
        drop(conn);
        self.release(&new.app, number)?.ok_or_else(|| {
            StateError::Conflict(format!(
                "release {number} of {} vanished after it was recorded",
                new.app
            ))
        })
    }

    pub fn set_release_images(
        &self,
        app: &str,
        number: i64,
        images: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let json = serde_json::to_string(images).map_err(|e| StateError::Corrupt {
            what: "image list",
            message: e.to_string(),
        })?;
        self.conn()
            .execute(
                "UPDATE releases SET images_json = ?3 WHERE app = ?1 AND number = ?2",
                params![app, number, json],
            )
            .map(|_| ())
            .map_err(sql("record release images"))
    }

    pub fn fail_release(&self, app: &str, number: i64, error: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("record a failed release"))?;
        tx.execute(
            "UPDATE releases SET status = 'failed', finished_at = ?3, error = ?4 WHERE app = ?1 AND number = ?2 AND status = 'deploying'",
            params![app, number, now_ms(), error],
        )
        .map_err(sql("record a failed release"))?;
        tx.execute(
            "DELETE FROM instances WHERE app = ?1 AND release = ?2 AND state = 'pending'",
            params![app, number],
        )
        .map_err(sql("record a failed release"))?;
        tx.commit().map_err(sql("record a failed release"))
    }

    /// The commit point of a deploy or restart: the new containers become current, the ones
    /// they replace start retiring, and (for a deploy) the release becomes the app's live one.
    pub fn commit_switch(&self, switch: &Switch<'_>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("switch releases"))?;
        let now = now_ms();
        if let Some(number) = switch.new_live_release {
            tx.execute(
                "UPDATE releases SET status = 'retired' WHERE app = ?1 AND status = 'live' AND number != ?2",
                params![switch.app, number],
            )
            .map_err(sql("switch releases"))?;
            tx.execute(
                "UPDATE releases SET status = 'live', finished_at = ?3, error = NULL WHERE app = ?1 AND number = ?2",
                params![switch.app, number, now],
            )
            .map_err(sql("switch releases"))?;
            tx.execute(
                "UPDATE apps SET live_release = ?2 WHERE name = ?1",
                params![switch.app, number],
            )
            .map_err(sql("switch releases"))?;
        }
        for id in switch.retiring {
            tx.execute(
                "UPDATE instances SET state = 'retiring' WHERE container_id = ?1",
                [id],
            )
            .map_err(sql("switch releases"))?;
        }
        for id in switch.now_current {
            tx.execute(
                "UPDATE instances SET state = 'current' WHERE container_id = ?1",
                [id],
            )
            .map_err(sql("switch releases"))?;
        }
        tx.commit().map_err(sql("switch releases"))
    }

    pub fn release(&self, app: &str, number: i64) -> Result<Option<Release>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(&format!("{RELEASE_COLUMNS} WHERE app = ?1 AND number = ?2"))
            .map_err(sql("read a release"))?;
        statement
            .query_row(params![app, number], release_from_row)
            .optional()
            .map_err(sql("read a release"))
    }

    /// An app's releases, newest first.
    pub fn releases(&self, app: &str, limit: usize) -> Result<Vec<Release>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(&format!(
                "{RELEASE_COLUMNS} WHERE app = ?1 ORDER BY number DESC LIMIT ?2"
            ))
            .map_err(sql("list releases"))?;
        let rows = statement
            .query_map(params![app, limit as i64], release_from_row)
            .map_err(sql("list releases"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list releases"))
    }

    pub fn releases_with_status(&self, status: ReleaseStatus) -> Result<Vec<Release>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(&format!(
                "{RELEASE_COLUMNS} WHERE status = ?1 ORDER BY app, number"
            ))
            .map_err(sql("list releases"))?;
        let rows = statement
            .query_map([status.as_str()], release_from_row)
            .map_err(sql("list releases"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list releases"))
    }

    pub fn live_release(&self, app: &str) -> Result<Option<Release>> {
        match self.app(app)?.and_then(|a| a.live_release) {
            Some(number) => self.release(app, number),
            None => Ok(None),
        }
    }

    // ---- instances ---------------------------------------------------------------------

    pub fn add_instance(&self, instance: &Instance) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO instances (container_id, name, app, service, release, replica, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    instance.container_id,
                    instance.name,
                    instance.app,
                    instance.service,
                    instance.release,
                    instance.replica,
                    instance.state.as_str(),
                    instance.created_at
                ],
            )
            .map(|_| ())
            .map_err(sql("record a container"))
    }

    pub fn remove_instance(&self, container_id: &str) -> Result<()> {
        self.conn()
            .execute(
                "DELETE FROM instances WHERE container_id = ?1",
                [container_id],
            )
            .map(|_| ())
            .map_err(sql("forget a container"))
    }

    pub fn instances(&self, app: &str) -> Result<Vec<Instance>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT container_id, name, app, service, release, replica, state, created_at
                 FROM instances WHERE app = ?1 ORDER BY service, release, replica, created_at",
            )
            .map_err(sql("list containers"))?;
        let rows = statement
            .query_map([app], |row| {
                let state: String = row.get(6)?;
                Ok(Instance {
                    container_id: row.get(0)?,
                    name: row.get(1)?,
                    app: row.get(2)?,
                    service: row.get(3)?,
                    release: row.get(4)?,
                    replica: row.get(5)?,
                    state: InstanceState::parse(&state),
                    created_at: row.get(7)?,
                })
            })
            .map_err(sql("list containers"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("list containers"))
    }

    // ---- events and audit --------------------------------------------------------------

    pub fn add_event(
        &self,
        app: &str,
        release: Option<i64>,
        level: &str,
        message: &str,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO events (app, release, at, level, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![app, release, now_ms(), level, message],
            )
            .map(|_| ())
            .map_err(sql("record an event"))
    }

    pub fn events(&self, app: &str, release: i64) -> Result<Vec<Event>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT at, level, message FROM events WHERE app = ?1 AND release = ?2 ORDER BY id",
            )
            .map_err(sql("list events"))?;
        let rows = statement
            .query_map(params![app, release], |row| {
                Ok(Event {
                    at: row.get(0)?,
                    level: row.get(1)?,
                    message: row.get(2)?,
                })
            })
            .map_err(sql("list events"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list events"))
    }

    pub fn add_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO audit (at, actor, action, target, result, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![entry.at, entry.actor, entry.action, entry.target, entry.result, entry.detail],
            )
            .map(|_| ())
            .map_err(sql("record an audit entry"))
    }

    /// The newest `limit` entries, of one app (its own and its services' and backups') when
    /// `app` is given.
    pub fn audit(&self, limit: usize, app: Option<&str>) -> Result<Vec<AuditEntry>> {
        self.audit_filtered(&AuditFilter {
            limit,
            app: app.map(str::to_owned),
            ..AuditFilter::default()
        })
    }

    /// The newest entries first, filtered and paged.
    pub fn audit_filtered(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT at, actor, action, target, result, detail FROM audit
                 WHERE (?2 IS NULL OR target = ?2 OR substr(target, 1, length(?2) + 1) = ?2 || '/')
                   AND (?4 IS NULL OR instr(actor, ?4) > 0)
                   AND (?5 IS NULL OR action = ?5)
                   AND (?6 IS NULL OR result = ?6)
                 ORDER BY id DESC LIMIT ?1 OFFSET ?3",
            )
            .map_err(sql("read the audit log"))?;
        let rows = statement
            .query_map(
                rusqlite::params![
                    filter.limit as i64,
                    filter.app,
                    filter.offset as i64,
                    filter.actor,
                    filter.action,
                    filter.result
                ],
                |row| {
                    Ok(AuditEntry {
                        at: row.get(0)?,
                        actor: row.get(1)?,
                        action: row.get(2)?,
                        target: row.get(3)?,
                        result: row.get(4)?,
                        detail: row.get(5)?,
                    })
                },
            )
            .map_err(sql("read the audit log"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("read the audit log"))
    }

    // ---- secrets (ciphertext only) -----------------------------------------------------

    pub fn put_secret(&self, app: &str, name: &str, ciphertext: &[u8]) -> Result<()> {
        let now = now_ms();
        self.conn()
            .execute(
                "INSERT INTO secrets (app, name, ciphertext, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (app, name) DO UPDATE SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                params![app, name, ciphertext, now],
            )
            .map(|_| ())
            .map_err(sql("store a secret"))
    }

    pub fn secret_ciphertext(&self, app: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.conn()
            .query_row(
                "SELECT ciphertext FROM secrets WHERE app = ?1 AND name = ?2",
                params![app, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read a secret"))
    }

    pub fn secrets(&self, app: &str) -> Result<Vec<SecretInfo>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT name, created_at, updated_at FROM secrets WHERE app = ?1 ORDER BY name",
            )
            .map_err(sql("list secrets"))?;
        let rows = statement
            .query_map([app], |row| {
                Ok(SecretInfo {
                    name: row.get(0)?,
                    created_at: row.get(1)?,
                    updated_at: row.get(2)?,
                })
            })
            .map_err(sql("list secrets"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list secrets"))
    }

    /// Removes every secret of an app; returns how many there were.
    pub fn delete_secrets(&self, app: &str) -> Result<usize> {
        self.conn()
            .execute("DELETE FROM secrets WHERE app = ?1", [app])
            .map_err(sql("delete the app's secrets"))
    }

    /// Returns whether the secret existed.
    pub fn delete_secret(&self, app: &str, name: &str) -> Result<bool> {
        self.conn()
            .execute(
                "DELETE FROM secrets WHERE app = ?1 AND name = ?2",
                params![app, name],
            )
            .map(|n| n > 0)
            .map_err(sql("delete a secret"))
    }
}

impl Store {
    // ---- backups -----------------------------------------------------------------------

    /// Records (or refreshes) one good copy of a backup.
    pub fn put_backup_copy(&self, copy: &BackupCopy) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO backup_copies (app, name, id, destination, created_at, verified_at, verify_error, meta_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (app, name, id, destination) DO UPDATE SET
                   verified_at = excluded.verified_at, verify_error = excluded.verify_error,
                   meta_json = excluded.meta_json",
                params![
                    copy.app,
                    copy.name,
                    copy.id,
                    copy.destination,
                    copy.created_at,
                    copy.verified_at,
                    copy.verify_error,
                    copy.meta_json
                ],
            )
            .map(|_| ())
            .map_err(sql("record a backup"))
    }

    /// Marks a copy's latest re-verification as failed (it stays listed, flagged).
    pub fn fail_backup_copy(
        &self,
        app: &str,
        name: &str,
        id: &str,
        destination: &str,
        error: &str,
    ) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE backup_copies SET verify_error = ?5
                 WHERE app = ?1 AND name = ?2 AND id = ?3 AND destination = ?4",
                params![app, name, id, destination, error],
            )
            .map(|_| ())
            .map_err(sql("record a failed verification"))
    }

    pub fn remove_backup_copy(
        &self,
        app: &str,
        name: &str,
        id: &str,
        destination: &str,
    ) -> Result<()> {
        self.conn()
            .execute(
                "DELETE FROM backup_copies WHERE app = ?1 AND name = ?2 AND id = ?3 AND destination = ?4",
                params![app, name, id, destination],
            )
            .map(|_| ())
            .map_err(sql("forget a backup"))
    }

    /// Replaces what the catalog holds for one backup name on one storage with what the
    /// storage itself lists. Copies flagged as failing keep their flag.
    pub fn replace_backup_copies(
        &self,
        app: &str,
        name: &str,
        destination: &str,
        copies: &[BackupCopy],
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(sql("refresh the backup catalog"))?;
        let flagged: Vec<(String, String)> = {
            let mut statement = tx
                .prepare(
                    "SELECT id, verify_error FROM backup_copies
                     WHERE app = ?1 AND name = ?2 AND destination = ?3 AND verify_error IS NOT NULL",
                )
                .map_err(sql("refresh the backup catalog"))?;
            let rows = statement
                .query_map(params![app, name, destination], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .map_err(sql("refresh the backup catalog"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sql("refresh the backup catalog"))?
        };
        tx.execute(
            "DELETE FROM backup_copies WHERE app = ?1 AND name = ?2 AND destination = ?3",
            params![app, name, destination],
        )
        .map_err(sql("refresh the backup catalog"))?;
        for copy in copies {
            let error = copy.verify_error.clone().or_else(|| {
                flagged
                    .iter()
                    .find(|(id, _)| id == &copy.id)
                    .map(|(_, e)| e.clone())
            });
            tx.execute(
                "INSERT INTO backup_copies (app, name, id, destination, created_at, verified_at, verify_error, meta_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    copy.app,
                    copy.name,
                    copy.id,
                    copy.destination,
                    copy.created_at,
                    copy.verified_at,
                    error,
                    copy.meta_json
                ],
            )
            .map_err(sql("refresh the backup catalog"))?;
        }
        tx.commit().map_err(sql("refresh the backup catalog"))
    }

    /// Copies of an app's backups (of one name, or all), oldest first.
    pub fn backup_copies(&self, app: &str, name: Option<&str>) -> Result<Vec<BackupCopy>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT app, name, id, destination, created_at, verified_at, verify_error, meta_json
                 FROM backup_copies WHERE app = ?1 AND (?2 IS NULL OR name = ?2)
                 ORDER BY created_at, id, destination",
            )
            .map_err(sql("list backups"))?;
        let rows = statement
            .query_map(params![app, name], |row| {
                Ok(BackupCopy {
                    app: row.get(0)?,
                    name: row.get(1)?,
                    id: row.get(2)?,
                    destination: row.get(3)?,
                    created_at: row.get(4)?,
                    verified_at: row.get(5)?,
                    verify_error: row.get(6)?,
                    meta_json: row.get(7)?,
                })
            })
            .map_err(sql("list backups"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list backups"))
    }

    pub fn start_backup_run(
        &self,
        app: &str,
        name: &str,
        operation: &str,
        actor: &str,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO backup_runs (app, name, operation, actor, started_at, status) VALUES (?1, ?2, ?3, ?4, ?5, 'running')",
            params![app, name, operation, actor, now_ms()],
        )
        .map_err(sql("record a backup run"))?;
        Ok(conn.last_insert_rowid())
    }

    pub fn finish_backup_run(&self, run: i64, finish: &RunFinish<'_>) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE backup_runs SET finished_at = ?2, status = ?3, backup_id = ?4, cause = ?5, error = ?6 WHERE id = ?1",
                params![run, now_ms(), finish.status, finish.backup_id, finish.cause, finish.error],
            )
            .map(|_| ())
            .map_err(sql("record a backup run"))
    }

    /// Runs the agent was doing when it stopped: they are failed, with that as the cause.
    pub fn abandon_running_backup_runs(&self) -> Result<usize> {
        self.conn()
            .execute(
                "UPDATE backup_runs SET finished_at = ?1, status = 'failed', cause = 'interrupted',
                 error = CASE operation
                   WHEN 'restore' THEN 'the agent stopped while this restore ran; its staging files were removed at the next start; check the data, and restore again if it is not what you expect'
                   ELSE 'the agent stopped while this ran; nothing it wrote was recorded as a backup'
                 END
                 WHERE status = 'running'",
                [now_ms()],
            )
            .map_err(sql("record interrupted backup runs"))
    }

    /// The latest run of each (name, operation) of an app.
    pub fn latest_backup_runs(&self, app: &str) -> Result<Vec<BackupRun>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT id, app, name, operation, actor, started_at, finished_at, status, backup_id, cause, error
                 FROM backup_runs WHERE id IN (
                   SELECT max(id) FROM backup_runs WHERE app = ?1 GROUP BY name, operation)
                 ORDER BY name, operation",
            )
            .map_err(sql("list backup runs"))?;
        let rows = statement
            .query_map([app], |row| {
                Ok(BackupRun {
                    id: row.get(0)?,
                    app: row.get(1)?,
                    name: row.get(2)?,
                    operation: row.get(3)?,
                    actor: row.get(4)?,
                    started_at: row.get(5)?,
                    finished_at: row.get(6)?,
                    status: row.get(7)?,
                    backup_id: row.get(8)?,
                    cause: row.get(9)?,
                    error: row.get(10)?,
                })
            })
            .map_err(sql("list backup runs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("list backup runs"))
    }

    /// When the last successful backup of a name finished, if any.
    pub fn last_good_backup(&self, app: &str, name: &str) -> Result<Option<i64>> {
        self.conn()
            .query_row(
                "SELECT max(finished_at) FROM backup_runs
                 WHERE app = ?1 AND name = ?2 AND operation = 'backup' AND status = 'ok'",
                params![app, name],
                |row| row.get(0),
            )
            .map_err(sql("read backup runs"))
    }
}

impl Store {
    // ---- alerts ------------------------------------------------------------------------

    /// Records a new alert (a state alert starts firing; an event is resolved at once) and
    /// returns its id.
    pub fn add_alert(&self, alert: &NewAlert<'_>) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO alerts (key, rule, severity, app, subject, summary, kind, started_at, resolved_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                alert.key,
                alert.rule,
                alert.severity,
                alert.app,
                alert.subject,
                alert.summary,
                if alert.event { "event" } else { "state" },
                alert.at,
                alert.event.then_some(alert.at),
            ],
        )
        .map_err(sql("record an alert"))?;
        let id = conn.last_insert_rowid();
        // Bounded: the newest 5,000 alerts are plenty to look back on.
        conn.execute(
            "DELETE FROM alerts WHERE resolved_at IS NOT NULL AND id <= ?1 - 5000",
            params![id],
        )
        .map_err(sql("prune old alerts"))?;
        conn.execute(
            "DELETE FROM alert_deliveries WHERE id <= (SELECT MAX(id) FROM alert_deliveries) - 20000",
            [],
        )
        .map_err(sql("prune old alert deliveries"))?;
        Ok(id)
    }

    /// Marks the firing alert with `key` resolved; returns it, or `None` when none fires.
    pub fn resolve_alert(&self, key: &str, at: i64) -> Result<Option<AlertRecord>> {
        let conn = self.conn();
        let firing = conn
            .query_row(
                &format!("{ALERT_COLUMNS} WHERE key = ?1 AND resolved_at IS NULL"),
                params![key],
                alert_from_row,
            )
            .optional()
            .map_err(sql("read a firing alert"))?;
        let Some(mut alert) = firing else {
            return Ok(None);
        };
        conn.execute(
            "UPDATE alerts SET resolved_at = ?1 WHERE id = ?2",
            params![at, alert.id],
        )
        .map_err(sql("resolve an alert"))?;
        alert.resolved_at = Some(at);
        Ok(Some(alert))
    }

    /// Every alert firing now, oldest first.
    pub fn firing_alerts(&self) -> Result<Vec<AlertRecord>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(&format!(
                "{ALERT_COLUMNS} WHERE resolved_at IS NULL ORDER BY id"
            ))
            .map_err(sql("list firing alerts"))?;
        let rows = statement
            .query_map([], alert_from_row)
            .map_err(sql("list firing alerts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("list firing alerts"))
    }

    /// The newest `limit` alerts (of `app`, with the host's, when given), newest first.
    pub fn recent_alerts(&self, limit: usize, app: Option<&str>) -> Result<Vec<AlertRecord>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(&format!(
                "{ALERT_COLUMNS} WHERE ?2 IS NULL OR app = ?2 OR app IS NULL ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(sql("list alerts"))?;
        let rows = statement
            .query_map(params![limit as i64, app], alert_from_row)
            .map_err(sql("list alerts"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list alerts"))
    }

    pub fn add_alert_delivery(&self, delivery: &AlertDelivery) -> Result<()> {
        let conn = self.conn();
        // Bounded: the newest 20,000 deliveries (reminders and tests included).
        conn.execute(
            "DELETE FROM alert_deliveries WHERE id <= (SELECT MAX(id) FROM alert_deliveries) - 20000",
            [],
        )
        .map_err(sql("prune old alert deliveries"))?;
        conn.execute(
            "INSERT INTO alert_deliveries (alert_id, channel, app, what, at, ok, attempts, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                delivery.alert_id,
                delivery.channel,
                delivery.app,
                delivery.what,
                delivery.at,
                delivery.ok,
                delivery.attempts,
                delivery.error
            ],
        )
        .map(|_| ())
        .map_err(sql("record an alert delivery"))
    }

    /// The last delivery to each channel (of each app), newest first.
    pub fn last_alert_deliveries(&self) -> Result<Vec<AlertDelivery>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT alert_id, channel, app, what, at, ok, attempts, error FROM alert_deliveries
                 WHERE id IN (SELECT MAX(id) FROM alert_deliveries GROUP BY app, channel)
                 ORDER BY id DESC",
            )
            .map_err(sql("list alert deliveries"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(AlertDelivery {
                    alert_id: row.get(0)?,
                    channel: row.get(1)?,
                    app: row.get(2)?,
                    what: row.get(3)?,
                    at: row.get(4)?,
                    ok: row.get(5)?,
                    attempts: row.get(6)?,
                    error: row.get(7)?,
                })
            })
            .map_err(sql("list alert deliveries"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("list alert deliveries"))
    }
}

impl Store {
    // ---- uptime history ----------------------------------------------------------------

    /// Records samples and brings the minute and hour buckets they fall in up to date, in
    /// one transaction; then drops what is past its keeping time.
    pub fn add_uptime_samples(&self, samples: &[UptimeSample], now: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("record uptime"))?;
        let mut minutes = std::collections::BTreeSet::new();
        for sample in samples {
            tx.execute(
                "INSERT INTO uptime_raw (subject, at, up, latency_ms) VALUES (?1, ?2, ?3, ?4)",
                params![sample.subject, sample.at, sample.up, sample.latency_ms],
            )
            .map_err(sql("record uptime"))?;
            minutes.insert((sample.subject.clone(), sample.at.div_euclid(MINUTE)));
        }
        let mut hours = std::collections::BTreeSet::new();
        for (subject, minute) in &minutes {
            let (checks, ups, p50, p95) = bucket(
                &tx,
                "SELECT up, latency_ms FROM uptime_raw WHERE subject = ?1 AND at >= ?2 AND at < ?3",
                subject,
                minute * MINUTE,
                (minute + 1) * MINUTE,
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO uptime_minutes (subject, minute, checks, ups, p50_ms, p95_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![subject, minute, checks, ups, p50, p95],
            )
            .map_err(sql("record uptime"))?;
            hours.insert((subject.clone(), (minute * MINUTE).div_euclid(HOUR)));
        }
        for (subject, hour) in &hours {
            // An hour's percentiles are those of its minutes' (close enough for a report).
            let mut statement = tx
                .prepare_cached(
                    "SELECT checks, ups, p50_ms, p95_ms FROM uptime_minutes WHERE subject = ?1 AND minute >= ?2 AND minute < ?3",
                )
                .map_err(sql("record uptime"))?;
            let rows: Vec<(i64, i64, i64, i64)> = statement
                .query_map(
                    params![subject, hour * HOUR / MINUTE, (hour + 1) * HOUR / MINUTE],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(sql("record uptime"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(sql("record uptime"))?;
            drop(statement);
            let checks: i64 = rows.iter().map(|r| r.0).sum();
            let ups: i64 = rows.iter().map(|r| r.1).sum();
            let mut p50s: Vec<i64> = rows.iter().map(|r| r.2).collect();
            let mut p95s: Vec<i64> = rows.iter().map(|r| r.3).collect();
            tx.execute(
                "INSERT OR REPLACE INTO uptime_hours (subject, hour, checks, ups, p50_ms, p95_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![subject, hour, checks, ups, percentile(&mut p50s, 50), percentile(&mut p95s, 95)],
            )
            .map_err(sql("record uptime"))?;
        }
        tx.execute(
            "DELETE FROM uptime_raw WHERE at < ?1",
            params![now - 48 * HOUR],
        )
        .map_err(sql("prune uptime"))?;
        tx.execute(
            "DELETE FROM uptime_minutes WHERE minute < ?1",
            params![(now - 14 * DAY) / MINUTE],
        )
        .map_err(sql("prune uptime"))?;
        tx.execute(
            "DELETE FROM uptime_hours WHERE hour < ?1",
            params![(now - 90 * DAY) / HOUR],
        )
        .map_err(sql("prune uptime"))?;
        tx.commit().map_err(sql("record uptime"))
    }

    /// A subject's checks and ups per UTC day since `since` (Unix ms), oldest first: days with
    /// no check are absent. (From the hour buckets, kept 90 days.)
    pub fn uptime_days(&self, subject: &str, since: i64) -> Result<Vec<UptimeDay>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached(
                "SELECT hour / 24, sum(checks), sum(ups) FROM uptime_hours
                 WHERE subject = ?1 AND hour >= ?2 GROUP BY hour / 24 ORDER BY hour / 24",
            )
            .map_err(sql("read uptime"))?;
        let rows = statement
            .query_map(params![subject, since.div_euclid(HOUR)], |r| {
                Ok(UptimeDay {
                    day_start: r.get::<_, i64>(0)? * DAY,
                    checks: r.get(1)?,
                    ups: r.get(2)?,
                })
            })
            .map_err(sql("read uptime"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql("read uptime"))
    }

    /// A subject's last check: when, and whether it was up.
    pub fn uptime_latest(&self, subject: &str) -> Result<Option<(i64, bool)>> {
        self.conn()
            .query_row(
                "SELECT at, up FROM uptime_raw WHERE subject = ?1 ORDER BY at DESC LIMIT 1",
                params![subject],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("read uptime"))
    }

    /// Every subject with history that belongs to `app` (`APP/...`), or every subject.
    pub fn uptime_subjects(&self, app: Option<&str>) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare(
                "SELECT DISTINCT subject FROM uptime_hours
                 WHERE ?1 IS NULL OR substr(subject, 1, length(?1) + 1) = ?1 || '/'
                 ORDER BY subject",
            )
            .map_err(sql("list uptime"))?;
        let rows = statement
            .query_map(params![app], |r| r.get(0))
            .map_err(sql("list uptime"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql("list uptime"))
    }

    /// A subject's record since `since` (Unix ms): from raw samples for up to 48 hours back,
    /// minute buckets up to 14 days, hour buckets beyond.
    pub fn uptime_since(&self, subject: &str, since: i64, now: i64) -> Result<UptimeWindow> {
        let conn = self.conn();
        let (query, from, to) = if now - since <= 48 * HOUR {
            (
                "SELECT count(*), COALESCE(sum(up), 0) FROM uptime_raw WHERE subject = ?1 AND at >= ?2 AND at <= ?3",
                since,
                now,
            )
        } else if now - since <= 14 * DAY {
            (
                "SELECT COALESCE(sum(checks), 0), COALESCE(sum(ups), 0) FROM uptime_minutes WHERE subject = ?1 AND minute >= ?2 AND minute <= ?3",
                since / MINUTE,
                now / MINUTE,
            )
        } else {
            (
                "SELECT COALESCE(sum(checks), 0), COALESCE(sum(ups), 0) FROM uptime_hours WHERE subject = ?1 AND hour >= ?2 AND hour <= ?3",
                since / HOUR,
                now / HOUR,
            )
        };
        let (checks, ups): (i64, i64) = conn
            .query_row(query, params![subject, from, to], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(sql("read uptime"))?;
        let mut latencies: Vec<i64> = if now - since <= 48 * HOUR {
            let mut statement = conn
                .prepare_cached(
                    "SELECT latency_ms FROM uptime_raw WHERE subject = ?1 AND at >= ?2 AND at <= ?3 AND up = 1",
                )
                .map_err(sql("read uptime"))?;
            statement
                .query_map(params![subject, since, now], |r| r.get(0))
                .map_err(sql("read uptime"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(sql("read uptime"))?
        } else {
            Vec::new()
        };
        Ok(UptimeWindow {
            checks,
            ups,
            p50_ms: (!latencies.is_empty()).then(|| percentile(&mut latencies, 50)),
            p95_ms: (!latencies.is_empty()).then(|| percentile(&mut latencies, 95)),
        })
    }
}

/// One UTC day of a subject's uptime record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UptimeDay {
    /// Midnight UTC of the day, Unix ms.
    pub day_start: i64,
    pub checks: i64,
    pub ups: i64,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

/// Checks, ups and latency percentiles of the raw samples a query selects.
fn bucket(
    tx: &rusqlite::Transaction<'_>,
    query: &str,
    subject: &str,
    from: i64,
    to: i64,
) -> Result<(i64, i64, i64, i64)> {
    let mut statement = tx.prepare_cached(query).map_err(sql("record uptime"))?;
    let rows: Vec<(bool, i64)> = statement
        .query_map(params![subject, from, to], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql("record uptime"))?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql("record uptime"))?;
    let ups = rows.iter().filter(|(up, _)| *up).count() as i64;
    let mut latencies: Vec<i64> = rows.iter().filter(|(up, _)| *up).map(|(_, l)| *l).collect();
    Ok((
        rows.len() as i64,
        ups,
        percentile(&mut latencies, 50),
        percentile(&mut latencies, 95),
    ))
}

/// The `p`th percentile (nearest rank) of `values`; 0 when there are none.
fn percentile(values: &mut [i64], p: usize) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = (p * values.len()).div_ceil(100).max(1);
    values[rank.min(values.len()) - 1]
}

impl Store {
    // ---- alert mutes -------------------------------------------------------------------

    pub fn add_alert_mute(&self, mute: &AlertMute) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO alert_mutes (app, rule, subject, until, actor, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![mute.app, mute.rule, mute.subject, mute.until, mute.actor, mute.created_at],
        )
        .map_err(sql("record a mute"))?;
        Ok(conn.last_insert_rowid())
    }

    /// Mutes in force at `now` (ended ones are dropped).
    pub fn alert_mutes(&self, now: i64) -> Result<Vec<AlertMute>> {
        let conn = self.conn();
        conn.execute("DELETE FROM alert_mutes WHERE until <= ?1", params![now])
            .map_err(sql("prune mutes"))?;
        let mut statement = conn
            .prepare("SELECT id, app, rule, subject, until, actor, created_at FROM alert_mutes ORDER BY id")
            .map_err(sql("list mutes"))?;
        let rows = statement
            .query_map([], |r| {
                Ok(AlertMute {
                    id: r.get(0)?,
                    app: r.get(1)?,
                    rule: r.get(2)?,
                    subject: r.get(3)?,
                    until: r.get(4)?,
                    actor: r.get(5)?,
                    created_at: r.get(6)?,
                })
            })
            .map_err(sql("list mutes"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql("list mutes"))
    }

    /// Ends a mute; whether there was one.
    pub fn remove_alert_mute(&self, id: i64) -> Result<bool> {
        self.conn()
            .execute("DELETE FROM alert_mutes WHERE id = ?1", params![id])
            .map(|n| n > 0)
            .map_err(sql("remove a mute"))
    }
}

const ALERT_COLUMNS: &str = "SELECT id, key, rule, severity, app, subject, summary, kind, started_at, resolved_at FROM alerts";

fn alert_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRecord> {
    let kind: String = row.get(7)?;
    Ok(AlertRecord {
        id: row.get(0)?,
        key: row.get(1)?,
        rule: row.get(2)?,
        severity: row.get(3)?,
        app: row.get(4)?,
        subject: row.get(5)?,
        summary: row.get(6)?,
        event: kind == "event",
        started_at: row.get(8)?,
        resolved_at: row.get(9)?,
    })
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("migrations.sql")),
        M::up(include_str!("migration2.sql")),
        M::up(include_str!("migration3.sql")),
        M::up(include_str!("migration4.sql")),
        M::up(include_str!("migration5.sql")),
        M::up(include_str!("migration6.sql")),
        M::up(include_str!("migration7.sql")),
        M::up(include_str!("migration8.sql")),
        M::up(include_str!("migration9.sql")),
        M::up(include_str!("migration10.sql")),
        M::up(include_str!("migration11.sql")),
        M::up(include_str!("migration12.sql")),
    ])
}

const RELEASE_COLUMNS: &str = "SELECT app, number, version, kind, rollback_of, status, manifest_toml, manifest_json, images_json, actor, created_at, finished_at, error FROM releases";

fn release_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Release> {
    let kind: String = row.get(3)?;
    let status: String = row.get(5)?;
    let images_json: String = row.get(8)?;
    Ok(Release {
        app: row.get(0)?,
        number: row.get(1)?,
        version: row.get(2)?,
        kind: ReleaseKind::parse(&kind),
        rollback_of: row.get(4)?,
        status: ReleaseStatus::parse(&status),
        manifest_toml: row.get(6)?,
        manifest_json: row.get(7)?,
        images: serde_json::from_str(&images_json).unwrap_or_default(),
        actor: row.get(9)?,
        created_at: row.get(10)?,
        finished_at: row.get(11)?,
        error: row.get(12)?,
    })
}

#[cfg(test)]
mod tests;
