//! The resolved backup settings: what is backed up, when, where to, and for how long.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The storage every manifest has: a directory in the agent's data directory, unless the
/// manifest gives `[storage.local] path = …`.
pub const LOCAL_STORAGE: &str = "local";

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BackupSettings {
    /// age recipients every backup is encrypted to, besides the agent's own key.
    pub recipients: Vec<String>,
    /// Storage by name; always holds [`LOCAL_STORAGE`].
    pub storage: BTreeMap<String, Storage>,
    pub backups: BTreeMap<String, Backup>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Storage {
    /// A directory on the server; `None` is `DATA_DIR/backups`.
    Directory(Option<PathBuf>),
    S3(S3Storage),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Storage {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub prefix: String,
    pub access_key_id_secret: String,
    pub secret_access_key_secret: String,
    pub part_size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub name: String,
    pub source: BackupSource,
    /// Cron schedule, in the server's time zone.
    pub schedule: Option<String>,
    pub keep: Keep,
    /// Storage names, in the order copies are written and restores look.
    pub to: Vec<String>,
    pub verify_schedule: Option<String>,
}

/// GFS retention counts, with the semantics of `restic forget --keep-*`. All zero keeps
/// everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupSource {
    Sqlite {
        /// The service whose volume holds the file; `None`: `path` is on the server.
        service: Option<String>,
        path: String,
    },
    Postgres(Database),
    Mysql(Database),
    Volume {
        /// The app-level volume name (as written in the manifest).
        volume: String,
        pause: bool,
        /// Where `before` and `after` run.
        service: Option<String>,
        before: Option<Vec<String>>,
        after: Option<Vec<String>>,
    },
    Directory {
        path: PathBuf,
    },
    Command {
        service: String,
        dump: Vec<String>,
        restore: Option<Vec<String>>,
    },
    /// The agent's data directory: state, keys, certificates.
    Berth,
}

impl BackupSource {
    /// The service or accessory the source needs running, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            BackupSource::Sqlite { service, .. } => service.as_deref(),
            BackupSource::Postgres(db) | BackupSource::Mysql(db) => match &db.location {
                DatabaseLocation::Service(s) => Some(s),
                DatabaseLocation::Host { .. } => None,
            },
            BackupSource::Volume { service, .. } => service.as_deref(),
            BackupSource::Command { service, .. } => Some(service),
            BackupSource::Directory { .. } | BackupSource::Berth => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub location: DatabaseLocation,
    pub database: String,
    pub user: String,
    pub password_secret: Option<String>,
    /// PostgreSQL: restore into a scratch database to verify (else `pg_restore --list`).
    pub verify_by_restore: bool,
    /// Connection parameters from a URL's query (`sslmode=require`), passed to the tools.
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseLocation {
    /// Run the tools inside this service's or accessory's container.
    Service(String),
    /// Run the tools on the server against this address.
    Host { host: String, port: u16 },
}
