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
    /// The record's MAC under the key of the server that wrote it (see [`BackupMeta::trust`]).
    /// Records of berth before 0.1 have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RecordAuth>,
}

/// A record's authentication: HMAC-SHA256 over everything else in it, under a key derived
/// from the writing server's age identity (`backup.key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAuth {
    /// Which key (a hash of it; see `keys::RecordKey`).
    pub key: String,
    pub mac: String,
}

/// Whether berth can vouch for a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Its MAC is good under a key berth holds: berth (this server, or the one whose key was
    /// given) wrote it.
    Trusted,
    /// It carries no MAC (written by berth before records were signed, or by someone else).
    Unsigned,
    /// It is signed by a key berth does not hold (another server's: give its `backup.key`
    /// with `--identity`).
    UnknownKey,
    /// Its MAC does not match: it was changed after it was written, or forged.
    Forged,
}

impl Trust {
    pub fn is_trusted(self) -> bool {
        self == Trust::Trusted
    }

    /// For listings and errors: `trusted`, `unsigned`, `unknown-key`, `forged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Trusted => "trusted",
            Trust::Unsigned => "unsigned",
            Trust::UnknownKey => "unknown-key",
            Trust::Forged => "forged",
        }
    }

    /// Why berth does not vouch for the record, in words.
    pub fn explain(self) -> &'static str {
        match self {
            Trust::Trusted => "berth wrote this record",
            Trust::Unsigned => {
                "its record is not signed: an older berth wrote it, or someone who can write to the storage planted it"
            }
            Trust::UnknownKey => {
                "its record is signed by another server's key: give that server's backup.key with --identity to check it"
            }
            Trust::Forged => {
                "its record's signature does not match: it was changed after berth wrote it, or forged"
            }
        }
    }
}

impl BackupMeta {
    /// Where a backup's files live on a destination, relative to its root or prefix.
    pub fn directory(app: &str, name: &str) -> String {
        format!("{app}/{name}")
    }

    /// The data object's key. Always derived from the id and kind, never taken from the
    /// record's `object` field, which anyone who can write the storage could point anywhere.
    pub fn object_key(&self) -> String {
        format!(
            "{}/{}",
            Self::directory(&self.app, &self.name),
            object_name(&self.id, self.kind)
        )
    }

    /// Refuses a record whose fields could not have been written by berth: an id of another
    /// shape, an `object` other than the one berth derives from id and kind, a checksum that
    /// is not 64 hex digits.
    pub fn check_shape(&self) -> Result<(), String> {
        if !is_valid_id(&self.id) {
            return Err(format!("the id {:?} is not a backup id", self.id));
        }
        let expected = object_name(&self.id, self.kind);
        if self.object != expected {
            return Err(format!(
                "its object is {:?}, not {expected:?} as berth names it",
                self.object
            ));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("its sha256 is not 64 hex digits".to_owned());
        }
        Ok(())
    }

    /// What the MAC covers: every field but the MAC itself, in a fixed encoding.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.auth = None;
        let mut bytes = b"berth backup record v1\n".to_vec();
        bytes.extend(serde_json::to_vec(&unsigned).unwrap_or_default());
        bytes
    }

    /// Signs the record with `key` (after any change to it).
    pub fn sign(&mut self, key: &crate::keys::RecordKey) {
        self.auth = None;
        let mac = key.mac(&self.signed_bytes());
        self.auth = Some(RecordAuth {
            key: key.id.clone(),
            mac,
        });
    }

    /// Whether one of `keys` signed this record as it is.
    pub fn trust(&self, keys: &[crate::keys::RecordKey]) -> Trust {
        let Some(auth) = &self.auth else {
            return Trust::Unsigned;
        };
        let Some(key) = keys.iter().find(|k| k.id == auth.key) else {
            return Trust::UnknownKey;
        };
        if key.verifies(&self.signed_bytes(), &auth.mac) {
            Trust::Trusted
        } else {
            Trust::Forged
        }
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
            auth: None,
        };
        let back: BackupMeta = serde_json::from_slice(&meta.to_json()).unwrap();
        assert_eq!(back, meta);
        assert_eq!(
            meta.object_key(),
            "shop/db/20261123T030001Z-3f9a.sqlite.zst.age"
        );
        assert_eq!(meta.record_key(), "shop/db/20261123T030001Z-3f9a.json");
    }

    fn record() -> BackupMeta {
        let id = "20261123T030001Z-3f9a";
        BackupMeta {
            format: FORMAT,
            id: id.into(),
            app: "shop".into(),
            name: "db".into(),
            kind: ContentKind::Sqlite,
            reason: Reason::Scheduled,
            created_at: "2026-11-23T03:00:01Z".parse().unwrap(),
            object: object_name(id, ContentKind::Sqlite),
            size: 10,
            sha256: "ab".repeat(32),
            content_size: 20,
            compression: "zstd".into(),
            encryption: "age".into(),
            recipients: vec!["age1x".into()],
            source: "sqlite /data/app.db".into(),
            check: "integrity_check ok".into(),
            verified_at: "2026-11-23T03:00:02Z".parse().unwrap(),
            berth_version: "0.1.0".into(),
            auth: None,
        }
    }

    fn key() -> crate::keys::RecordKey {
        let identity = age::x25519::Identity::generate();
        let text = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_owned();
        crate::keys::Identities::parse(&text)
            .unwrap()
            .record_keys()
            .remove(0)
    }

    #[test]
    fn a_signed_record_is_trusted_only_as_written_and_only_under_its_key() {
        let (ours, theirs) = (key(), key());
        let mut meta = record();
        assert_eq!(meta.trust(std::slice::from_ref(&ours)), Trust::Unsigned);
        meta.sign(&ours);
        assert_eq!(meta.trust(std::slice::from_ref(&ours)), Trust::Trusted);
        let back: BackupMeta = serde_json::from_slice(&meta.to_json()).unwrap();
        assert_eq!(
            back.trust(std::slice::from_ref(&ours)),
            Trust::Trusted,
            "survives JSON"
        );
        assert_eq!(meta.trust(std::slice::from_ref(&theirs)), Trust::UnknownKey);
        assert_eq!(meta.trust(&[theirs.clone(), ours.clone()]), Trust::Trusted);
        // Any field changed after signing: the checksum (another object's data), the time
        // (to win "newest"), the reason (to dodge retention).
        for tamper in [
            (|m: &mut BackupMeta| m.sha256 = "cd".repeat(32)) as fn(&mut BackupMeta),
            |m| m.created_at = "2099-01-01T00:00:00Z".parse().unwrap(),
            |m| m.reason = Reason::Safety,
            |m| m.recipients.push("age1attacker".into()),
        ] {
            let mut forged = meta.clone();
            tamper(&mut forged);
            assert_eq!(forged.trust(std::slice::from_ref(&ours)), Trust::Forged);
        }
        // A MAC that is not even hex.
        let mut garbled = meta.clone();
        if let Some(auth) = garbled.auth.as_mut() {
            auth.mac = "zz".into();
        }
        assert_eq!(garbled.trust(std::slice::from_ref(&ours)), Trust::Forged);
    }

    #[test]
    fn a_record_must_name_the_object_berth_derives() {
        let good = record();
        assert_eq!(good.check_shape(), Ok(()));
        let mut traversal = record();
        traversal.object = "../../../../tmp/victim".into();
        assert!(traversal.check_shape().is_err());
        assert_eq!(
            traversal.object_key(),
            "shop/db/20261123T030001Z-3f9a.sqlite.zst.age",
            "the key never comes from the record's object field"
        );
        let mut other = record();
        other.object = object_name("20250101T000000Z-0000", ContentKind::Sqlite);
        assert!(other.check_shape().is_err(), "another backup's object");
        let mut checksum = record();
        checksum.sha256 = "../x".into();
        assert!(checksum.check_shape().is_err());
    }

    /// Random damage to a signed record's JSON (flipped bytes, fields swapped for others,
    /// values from other records): parsing never panics, a record that still verifies is
    /// the one that was signed, and the object berth would read is always the derived one.
    /// `BERTH_FUZZ_SECONDS` runs it longer; `BERTH_FUZZ_SEED` replays one seed.
    #[test]
    fn fuzz_damaged_records_are_never_trusted_as_something_else() {
        use rand::{Rng, SeedableRng};
        let seconds: f64 = std::env::var("BERTH_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0);
        let seed: u64 = std::env::var("BERTH_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let key = key();
        let mut original = record();
        original.sign(&key);
        let json = original.to_json();
        let replacements: &[&[u8]] = &[
            b"\"../../../../tmp/victim\"",
            b"\"2099-01-01T00:00:00Z\"",
            b"\"safety\"",
            b"\"manual\"",
            b"\"tar\"",
            b"0",
            b"18446744073709551615",
            b"null",
            b"{}",
            b"[]",
            b"\"\\u0000\"",
            b"\"20991231T000000Z-0000\"",
        ];
        let started = std::time::Instant::now();
        let mut cases = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            let mut damaged = json.clone();
            for _ in 0..rng.random_range(1..4) {
                if damaged.is_empty() {
                    break;
                }
                match rng.random_range(0..3) {
                    0 => {
                        let at = rng.random_range(0..damaged.len());
                        damaged[at] ^= 1 << rng.random_range(0..8);
                    }
                    1 => {
                        // Replace the value after some `": "` with another.
                        let colons: Vec<usize> = damaged
                            .windows(2)
                            .enumerate()
                            .filter(|(_, w)| w == b": ")
                            .map(|(i, _)| i + 2)
                            .collect();
                        if colons.is_empty() {
                            continue;
                        }
                        let start = colons[rng.random_range(0..colons.len())];
                        let end = damaged[start..]
                            .iter()
                            .position(|b| *b == b',' || *b == b'\n')
                            .map_or(damaged.len(), |n| start + n);
                        let with = replacements[rng.random_range(0..replacements.len())];
                        damaged.splice(start..end, with.iter().copied());
                    }
                    _ => {
                        let at = rng.random_range(0..damaged.len());
                        let cut = rng.random_range(at..=damaged.len());
                        damaged.drain(at..cut);
                    }
                }
            }
            if let Ok(parsed) = serde_json::from_slice::<BackupMeta>(&damaged) {
                if parsed.trust(std::slice::from_ref(&key)) == Trust::Trusted {
                    assert_eq!(
                        parsed,
                        original,
                        "seed {seed}: a changed record still verifies: {}",
                        String::from_utf8_lossy(&damaged)
                    );
                }
                let derived = format!(
                    "{}/{}",
                    BackupMeta::directory(&parsed.app, &parsed.name),
                    object_name(&parsed.id, parsed.kind)
                );
                assert_eq!(parsed.object_key(), derived, "seed {seed}");
                if parsed.check_shape().is_ok() {
                    assert_eq!(parsed.object, object_name(&parsed.id, parsed.kind));
                    assert!(!parsed.object.contains('/'), "seed {seed}");
                }
            }
            cases += 1;
        }
        assert!(cases > 100, "seed {seed}: only {cases} cases ran");
    }
}
