//! The self-describing record stored beside every backup.
//!
//! A destination holds, per backup, the data object (`ID.KIND.zst.age`) and this record as
//! `ID.json`. The record is written last, only after the data was read back and checked, so
//! its presence is the commit mark: a data object without a record is an unfinished upload
//! and is never listed. With the record and an age identity, a new server (or the standard
//! `age` and `zstd` tools) can restore the backup without berth's state.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The version of this record's layout.
pub const FORMAT: u32 = 1;

/// What a backup holds once decrypted and decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContentKind {
    /// A SQLite database file.
    Sqlite,
    /// A PostgreSQL dump in `pg_dump`'s custom format.
    PostgresDump,
    /// A MySQL/MariaDB SQL dump.
    MysqlDump,
    /// A tar archive of a directory or volume.
    Tar,
    /// A tar archive of berth's data directory (state, keys, certificates).
    BerthState,
    /// Whatever a user-given dump command printed.
    Stream,
}

impl ContentKind {
    /// The file extension of the plaintext.
    pub fn extension(self) -> &'static str {
        match self {
            ContentKind::Sqlite => "sqlite",
            ContentKind::PostgresDump => "pgdump",
            ContentKind::MysqlDump => "sql",
            ContentKind::Tar | ContentKind::BerthState => "tar",
            ContentKind::Stream => "bin",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::Sqlite => "sqlite",
            ContentKind::PostgresDump => "postgres-dump",
            ContentKind::MysqlDump => "mysql-dump",
            ContentKind::Tar => "tar",
            ContentKind::BerthState => "berth-state",
            ContentKind::Stream => "stream",
        }
    }
}

/// Why a backup was taken. Safety backups (taken before a restore replaces data) are not
/// counted by retention rules; they are kept for [`SAFETY_KEEP_DAYS`] days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Scheduled,
    Manual,
    Safety,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Scheduled => "scheduled",
            Reason::Manual => "manual",
            Reason::Safety => "safety",
        }
    }
}

pub const SAFETY_KEEP_DAYS: i64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    pub format: u32,
    pub id: String,
    pub app: String,
    /// The backup's name in the manifest (`[backups.NAME]`).
    pub name: String,
    pub kind: ContentKind,
    pub reason: Reason,
    /// When the source was read (RFC 3339, UTC).
    pub created_at: Timestamp,
    /// The data object's file name, in the same directory as this record.
    pub object: String,
    /// Stored (compressed, encrypted) size in bytes.
    pub size: u64,
    /// SHA-256 of the stored bytes, hex: `sha256sum` of the object prints it.
    pub sha256: String,
    /// Size of the plaintext.
    pub content_size: u64,
    pub compression: String,
    pub encryption: String,
    /// The age recipients the backup is encrypted to (public keys).
    pub recipients: Vec<String>,
    /// What was backed up, for people (`sqlite /data/app.db in service web`).
    pub source: String,
    /// What the content check found (`integrity_check ok, 12 tables`).
    pub check: String,
    /// When a copy on this destination was last read back and checked.
    pub verified_at: Timestamp,
    pub berth_version: String,
}

impl BackupMeta {
    /// Where a backup's files live on a destination, relative to its root or prefix.
    pub fn directory(app: &str, name: &str) -> String {
        format!("{app}/{name}")
    }

    pub fn object_key(&self) -> String {
        format!("{}/{}", Self::directory(&self.app, &self.name), self.object)
    }

    pub fn record_key(&self) -> String {
        record_key(&self.app, &self.name, &self.id)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        json
    }
}

pub fn record_key(app: &str, name: &str, id: &str) -> String {
    format!("{}/{id}.json", BackupMeta::directory(app, name))
}

pub fn object_name(id: &str, kind: ContentKind) -> String {
    format!("{id}.{}.zst.age", kind.extension())
}

/// A new backup id: the UTC time to the second, then 4 random hex digits, so ids sort by time
/// and two backups in the same second do not collide (`20261123T030001Z-3f9a`).
pub fn new_id(at: Timestamp) -> String {
    let suffix: u16 = rand::random();
    format!("{}-{suffix:04x}", at.strftime("%Y%m%dT%H%M%SZ"))
}

/// True for strings shaped like ids this module makes (used to refuse path tricks in ids
/// that come from the command line).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 21
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            16 => b == b'-',
            17..=20 => b.is_ascii_hexdigit(),
            _ => b.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_validate() {
        let a = new_id("2026-11-23T03:00:01Z".parse().unwrap());
        let b = new_id("2026-11-23T03:00:02Z".parse().unwrap());
        assert!(a < b);
        assert!(a.starts_with("20261123T030001Z-"));
        assert!(is_valid_id(&a), "{a}");
        assert!(!is_valid_id("../../etc/passwd"));
        assert!(!is_valid_id("20261123T030001Z-3f9"));
    }

    #[test]
    fn the_record_round_trips_as_json() {
        let meta = BackupMeta {
            format: FORMAT,
            id: "20261123T030001Z-3f9a".into(),
            app: "shop".into(),
            name: "db".into(),
            kind: ContentKind::Sqlite,
            reason: Reason::Scheduled,
            created_at: "2026-11-23T03:00:01Z".parse().unwrap(),
            object: object_name("20261123T030001Z-3f9a", ContentKind::Sqlite),
            size: 10,
            sha256: "00".repeat(32),
            content_size: 20,
            compression: "zstd".into(),
            encryption: "age".into(),
            recipients: vec!["age1x".into()],
            source: "sqlite /data/app.db".into(),
            check: "integrity_check ok".into(),
            verified_at: "2026-11-23T03:00:02Z".parse().unwrap(),
            berth_version: "0.1.0".into(),
        };
        let back: BackupMeta = serde_json::from_slice(&meta.to_json()).unwrap();
        assert_eq!(back, meta);
        assert_eq!(
            meta.object_key(),
            "shop/db/20261123T030001Z-3f9a.sqlite.zst.age"
        );
        assert_eq!(meta.record_key(), "shop/db/20261123T030001Z-3f9a.json");
    }
}
