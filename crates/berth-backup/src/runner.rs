//! Taking, verifying, listing, pruning and reading back backups on a set of destinations.
//!
//! A backup run streams the source once through the pipeline to every destination at once,
//! then reads each stored copy back, decrypts and decompresses it, compares its checksum and
//! checks its content, and only then writes the record that makes it a backup on that
//! destination. A copy that fails any step is deleted and reported; it is never listed.

use crate::destination::Destination;
use crate::error::{BackupError, Result};
use crate::keys::{Identities, Recipient};
use crate::meta::{self, BackupMeta, Reason};
use crate::pipeline::{
    self, CHANNEL_DEPTH, ChannelReader, ChannelWriter, Compression, Encoded, FanOutWriter,
};
use crate::retention::{self, Candidate, Keep};
use crate::source::{Consumer, PlainReceiver, Source};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// The time, so tests can run a year of daily backups in seconds.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// What a run reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Started {
        id: String,
        source: String,
    },
    /// Plaintext bytes read from the source so far.
    Read {
        bytes: u64,
    },
    /// Stored bytes read back so far (a verification or a restore), of `total`.
    ReadBack {
        bytes: u64,
        total: u64,
    },
    Stored {
        destination: String,
        bytes: u64,
    },
    Verified {
        destination: String,
        check: String,
    },
    CopyFailed {
        destination: String,
        error: String,
    },
}

pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

pub fn no_events() -> EventSink {
    Arc::new(|_| {})
}

pub struct Runner {
    pub destinations: Vec<Arc<Destination>>,
    /// Every backup is encrypted to all of these.
    pub recipients: Vec<Recipient>,
    /// What verification and restores decrypt with.
    pub identities: Identities,
    pub compression: Compression,
    pub clock: Arc<dyn Clock>,
    /// The time zone retention periods (days, weeks...) are counted in.
    pub time_zone: TimeZone,
    pub events: EventSink,
}

/// One copy's fate.
#[derive(Debug)]
pub struct CopyOutcome {
    pub destination: String,
    /// The record written, or why there is no good copy on this destination.
    pub result: Result<BackupMeta>,
}

#[derive(Debug)]
pub struct RunOutcome {
    pub id: String,
    pub created_at: Timestamp,
    pub source: String,
    /// What the source said it read.
    pub source_summary: String,
    pub encoded: Option<Encoded>,
    pub copies: Vec<CopyOutcome>,
    /// From the start until every copy was stored.
    pub stored_in: std::time::Duration,
    /// Reading every copy back and checking it.
    pub verified_in: std::time::Duration,
}

impl RunOutcome {
    pub fn all_good(&self) -> bool {
        !self.copies.is_empty() && self.copies.iter().all(|c| c.result.is_ok())
    }
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub destination: String,
    pub kept: Vec<KeptBackup>,
    pub removed: Vec<String>,
    /// Data objects without a record (uploads a crash interrupted) that were removed.
    pub orphans_removed: Vec<String>,
    /// Backups whose records berth cannot vouch for: neither counted nor deleted.
    pub untrusted: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct KeptBackup {
    pub id: String,
    pub reasons: Vec<String>,
}

/// How long an object without a record may stay before prune takes it for an interrupted
/// upload (a run in progress writes its record within this time).
const ORPHAN_AGE_HOURS: i64 = 24;

impl Runner {
    /// Takes one backup of `source` to every destination. `Err` means the source failed and
    /// nothing was kept anywhere; otherwise each copy's outcome is in the result.
    pub async fn run(
        &self,
        app: &str,
        name: &str,
        reason: Reason,
        source: &mut dyn Source,
        checker: &dyn Consumer,
    ) -> Result<RunOutcome> {
        let started = std::time::Instant::now();
        let created_at = self.clock.now();
        let id = meta::new_id(created_at);
        let kind = source.kind();
        let object = meta::object_name(&id, kind);
        let key = format!("{}/{object}", BackupMeta::directory(app, name));
        let description = source.describe();
        (self.events)(Event::Started {
            id: id.clone(),
            source: description.clone(),
        });

        let (plain_tx, plain_rx) = mpsc::channel(CHANNEL_DEPTH);
        let mut senders = Vec::new();
        let mut commits = Vec::new();
        let mut puts = Vec::new();
        for destination in &self.destinations {
            let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
            let (commit_tx, commit_rx) = oneshot::channel();
            let destination = destination.clone();
            let key = key.clone();
            puts.push(tokio::spawn(async move {
                let progress = Arc::new(AtomicU64::new(0));
                destination.put_stream(&key, rx, commit_rx, progress).await
            }));
            senders.push(tx);
            commits.push(commit_tx);
        }
        let recipients = self.recipients.clone();
        let compression = self.compression;
        let events = self.events.clone();
        let encode = tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader::new(plain_rx);
            let mut writer = FanOutWriter::new(senders);
            let last_report = AtomicU64::new(0);
            let progress = |bytes: u64| {
                // Every 16 MiB is often enough for a progress bar.
                if bytes - last_report.load(Ordering::Relaxed) >= 16 << 20 {
                    last_report.store(bytes, Ordering::Relaxed);
                    events(Event::Read { bytes });
                }
            };
            let result = pipeline::encode(
                &mut reader,
                &mut writer,
                &recipients,
                compression,
                &progress,
            );
            let flushed = result.and_then(|encoded| writer.flush().map(|()| encoded));
            drop(writer);
            flushed
        });
        let produced = source.produce(plain_tx).await;
        let encoded = encode
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("the encoder stopped: {e}"))));
        let commit = produced.is_ok() && encoded.is_ok();
        for commit_tx in commits {
            let _ = commit_tx.send(commit);
        }
        let mut stored = Vec::new();
        for (destination, put) in self.destinations.iter().zip(puts) {
            let result = put.await.unwrap_or_else(|e| {
                Err(BackupError::Storage {
                    destination: destination.name().to_owned(),
                    detail: format!("the upload stopped: {e}"),
                })
            });
            stored.push((destination.clone(), result));
        }
        let stored_in = started.elapsed();
        let every_copy_failed_on_its_own = stored.iter().all(|(_, r)| {
            r.as_ref()
                .is_err_and(|e| !matches!(e, BackupError::Source(_)))
        });
        let source_summary = match produced {
            Ok(summary) => summary,
            Err(error) if !every_copy_failed_on_its_own => return Err(error),
            // The source stopped because nothing was left to write to; the copies' errors
            // below are the cause.
            Err(_) => String::new(),
        };
        let encoded = match encoded {
            Ok(encoded) => Some(encoded),
            Err(error) if !every_copy_failed_on_its_own => {
                return Err(BackupError::Source(format!(
                    "compressing and encrypting failed: {error}"
                )));
            }
            Err(_) => None,
        };

        let mut copies = Vec::new();
        for (destination, result) in stored {
            let name_of = destination.name().to_owned();
            let result = match (result, &encoded) {
                (Ok(bytes), Some(encoded)) => {
                    (self.events)(Event::Stored {
                        destination: name_of.clone(),
                        bytes,
                    });
                    let draft = BackupMeta {
                        format: meta::FORMAT,
                        id: id.clone(),
                        app: app.to_owned(),
                        name: name.to_owned(),
                        kind,
                        reason,
                        created_at,
                        object: object.clone(),
                        size: encoded.size,
                        sha256: encoded.sha256.clone(),
                        content_size: encoded.content_size,
                        compression: "zstd".to_owned(),
                        encryption: "age".to_owned(),
                        recipients: self
                            .recipients
                            .iter()
                            .map(|r| r.as_str().to_owned())
                            .collect(),
                        source: description.clone(),
                        check: String::new(),
                        verified_at: created_at,
                        berth_version: env!("CARGO_PKG_VERSION").to_owned(),
                        auth: None,
                    };
                    self.commit_copy(&destination, draft, checker).await
                }
                (Ok(_), None) => Err(BackupError::Source(
                    "compressing and encrypting failed".to_owned(),
                )),
                (Err(error), _) => Err(error),
            };
            match &result {
                Ok(meta) => (self.events)(Event::Verified {
                    destination: name_of.clone(),
                    check: meta.check.clone(),
                }),
                Err(error) => (self.events)(Event::CopyFailed {
                    destination: name_of.clone(),
                    error: error.to_string(),
                }),
            }
            copies.push(CopyOutcome {
                destination: name_of,
                result,
            });
        }
        Ok(RunOutcome {
            id,
            created_at,
            source: description,
            source_summary,
            encoded,
            copies,
            stored_in,
            verified_in: started.elapsed().saturating_sub(stored_in),
        })
    }

    /// Reads a freshly stored copy back and, if it is good, writes its record. A bad copy is
    /// deleted so it cannot be mistaken for a backup.
    async fn commit_copy(
        &self,
        destination: &Destination,
        mut draft: BackupMeta,
        checker: &dyn Consumer,
    ) -> Result<BackupMeta> {
        let checked = self
            .read_back(destination, &draft, &self.identities, checker)
            .await;
        let result = match checked {
            Ok(check) => {
                draft.check = check;
                draft.verified_at = self.clock.now();
                draft.sign(&self.signing_key()?);
                destination
                    .put_bytes(&draft.record_key(), Bytes::from(draft.to_json()))
                    .await
                    .map(|()| draft.clone())
            }
            Err(error) => Err(error),
        };
        if result.is_err() {
            let _ = destination.delete(&draft.record_key()).await;
            let _ = destination.delete(&draft.object_key()).await;
        }
        result
    }

    /// Reads a stored backup, checks its checksum, decrypts and decompresses it, and hands
    /// the plaintext to `consumer`. The checksum is compared over every stored byte even
    /// when decryption fails early, so a corrupt copy is named as such.
    pub async fn read_back(
        &self,
        destination: &Destination,
        meta: &BackupMeta,
        identities: &Identities,
        consumer: &dyn Consumer,
    ) -> Result<String> {
        let mut stream = destination.get_stream(&meta.object_key()).await?;
        let (stored_tx, stored_rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
        let (plain_tx, plain_rx) = mpsc::channel(CHANNEL_DEPTH);
        let identities = identities.clone();
        let id = meta.id.clone();
        let recipients = meta.recipients.clone();
        let decode = tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader::new(stored_rx);
            let mut writer = ChannelWriter::new(plain_tx);
            let decoded = pipeline::decode(&mut reader, &identities, &mut writer, &id, &recipients);
            match &decoded.content {
                Ok(_) => {
                    let _ = writer.flush();
                }
                Err(error) => writer.fail(io::Error::other(error.to_string())),
            }
            decoded
        });
        let events = self.events.clone();
        let total = meta.size;
        let feed = async move {
            let (mut read, mut reported) = (0u64, 0u64);
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        read += bytes.len() as u64;
                        if read - reported >= 16 << 20 {
                            reported = read;
                            events(Event::ReadBack { bytes: read, total });
                        }
                        if stored_tx.send(Ok(bytes)).await.is_err() {
                            break;
                        }
                    }
                    Err(error) => {
                        let _ = stored_tx
                            .send(Err(io::Error::other(error.to_string())))
                            .await;
                        return Err(error);
                    }
                }
            }
            Ok(())
        };
        let (fed, consumed) = tokio::join!(feed, consumer.consume(plain_rx));
        let decoded = decode.await.map_err(|e| BackupError::Damaged {
            id: meta.id.clone(),
            detail: format!("the decoder stopped: {e}"),
        })?;
        fed?;
        if decoded.sha256 != meta.sha256 {
            return Err(BackupError::ChecksumMismatch {
                id: meta.id.clone(),
                destination: destination.name().to_owned(),
                expected: meta.sha256.clone(),
                actual: decoded.sha256,
            });
        }
        match decoded.content {
            Err(
                error @ (BackupError::Decrypt { .. }
                | BackupError::NoKey { .. }
                | BackupError::Damaged { .. }),
            ) => {
                return Err(error);
            }
            Err(error) if consumed.is_ok() => return Err(error),
            _ => {}
        }
        consumed.map_err(|detail| BackupError::Content {
            id: meta.id.clone(),
            detail,
        })
    }

    /// The key this server signs its records with (its own identity, the first).
    fn signing_key(&self) -> Result<crate::keys::RecordKey> {
        self.identities
            .record_keys()
            .into_iter()
            .next()
            .ok_or_else(|| {
                BackupError::Invalid("there is no key to sign backup records with".into())
            })
    }

    /// Whether a record was written by berth with a key these identities hold.
    pub fn trust(&self, meta: &BackupMeta) -> meta::Trust {
        meta.trust(&self.identities.record_keys())
    }

    /// Re-verifies a listed backup and refreshes its record's `verified_at` and `check`
    /// (signed again). A record berth cannot vouch for is not read, and never rewritten,
    /// unless `adopt_unsigned` says to take an unsigned one (an older berth's) as this
    /// server's once it passes every check.
    pub async fn verify(
        &self,
        destination: &Destination,
        meta: &BackupMeta,
        checker: &dyn Consumer,
        adopt_unsigned: bool,
    ) -> Result<BackupMeta> {
        let trust = self.trust(meta);
        if !(trust.is_trusted() || adopt_unsigned && trust == meta::Trust::Unsigned) {
            return Err(BackupError::Untrusted {
                id: meta.id.clone(),
                destination: destination.name().to_owned(),
                why: trust.explain().to_owned(),
            });
        }
        let check = self
            .read_back(destination, meta, &self.identities, checker)
            .await?;
        let mut updated = meta.clone();
        updated.check = check;
        updated.verified_at = self.clock.now();
        updated.sign(&self.signing_key()?);
        destination
            .put_bytes(&updated.record_key(), Bytes::from(updated.to_json()))
            .await?;
        Ok(updated)
    }

    /// Every backup `app`'s `name` has on `destination`, oldest first.
    pub async fn list(
        &self,
        destination: &Destination,
        app: &str,
        name: &str,
    ) -> Result<Vec<BackupMeta>> {
        list(destination, app, name).await
    }

    /// Applies `keep` to the backups on `destination`. Safety backups are not counted; they
    /// go after [`meta::SAFETY_KEEP_DAYS`] days.
    pub async fn prune(
        &self,
        destination: &Destination,
        app: &str,
        name: &str,
        keep: &Keep,
        dry_run: bool,
    ) -> Result<PruneReport> {
        let listed = list(destination, app, name).await?;
        let now = self.clock.now();
        let mut report = PruneReport {
            destination: destination.name().to_owned(),
            ..PruneReport::default()
        };
        // Only records berth wrote count and go: planted ones could otherwise fill the
        // `keep` slots and push out real backups.
        let keys = self.identities.record_keys();
        let (backups, untrusted): (Vec<&BackupMeta>, Vec<&BackupMeta>) =
            listed.iter().partition(|b| b.trust(&keys).is_trusted());
        report.untrusted = untrusted.iter().map(|b| b.id.clone()).collect();
        let candidates: Vec<Candidate> = backups
            .iter()
            .filter(|b| b.reason != Reason::Safety)
            .map(|b| Candidate {
                id: b.id.clone(),
                at: b.created_at,
            })
            .collect();
        let mut doomed = Vec::new();
        for verdict in retention::apply(&candidates, keep, &self.time_zone) {
            if verdict.keep {
                report.kept.push(KeptBackup {
                    id: verdict.id,
                    reasons: verdict.reasons,
                });
            } else {
                doomed.push(verdict.id);
            }
        }
        let safety_limit = now - SignedDuration::from_hours(24 * meta::SAFETY_KEEP_DAYS);
        for backup in backups.iter().filter(|b| b.reason == Reason::Safety) {
            if backup.created_at < safety_limit {
                doomed.push(backup.id.clone());
            } else {
                report.kept.push(KeptBackup {
                    id: backup.id.clone(),
                    reasons: vec![format!(
                        "safety backup (kept {} days)",
                        meta::SAFETY_KEEP_DAYS
                    )],
                });
            }
        }
        for id in &doomed {
            let Some(backup) = backups.iter().find(|b| &b.id == id) else {
                continue;
            };
            if !dry_run {
                // The record first: once it is gone the backup is no longer listed, and a
                // crash before the data goes leaves an orphan the next prune removes.
                destination.delete(&backup.record_key()).await?;
                destination.delete(&backup.object_key()).await?;
            }
            report.removed.push(id.clone());
        }
        let orphan_limit = now - SignedDuration::from_hours(ORPHAN_AGE_HOURS);
        let files = destination.list(&BackupMeta::directory(app, name)).await?;
        // Any record file counts, even one that cannot be read: spoiling a record must not
        // turn its backup into an orphan that prune deletes.
        let record_files: std::collections::HashSet<&str> = files
            .iter()
            .filter_map(|f| f.strip_suffix(".json"))
            .collect();
        for file in &files {
            let Some(id) = file.split('.').next() else {
                continue;
            };
            if file.ends_with(".json") || !meta::is_valid_id(id) {
                continue;
            }
            let recorded = listed.iter().any(|b| b.id == id) || record_files.contains(id);
            let old = id_time(id).is_some_and(|t| t < orphan_limit);
            if !recorded && old {
                if !dry_run {
                    destination
                        .delete(&format!("{}/{file}", BackupMeta::directory(app, name)))
                        .await?;
                }
                report.orphans_removed.push(file.clone());
            }
        }
        report.orphans_removed.extend(
            destination
                .remove_stale_partials(
                    &BackupMeta::directory(app, name),
                    std::time::Duration::from_secs(ORPHAN_AGE_HOURS as u64 * 3600),
                )
                .await,
        );
        report.removed.sort();
        Ok(report)
    }
}

/// Every backup `app`'s `name` has on `destination`, oldest first. Records that cannot be
/// read are skipped with a warning, never guessed at.
pub async fn list(destination: &Destination, app: &str, name: &str) -> Result<Vec<BackupMeta>> {
    let dir = BackupMeta::directory(app, name);
    let mut backups = Vec::new();
    for file in destination.list(&dir).await? {
        let Some(id) = file.strip_suffix(".json") else {
            continue;
        };
        if !meta::is_valid_id(id) {
            continue;
        }
        let data = match destination.get_bytes(&format!("{dir}/{file}")).await {
            Ok(data) => data,
            // A link or special file planted where a record should be: not a record.
            Err(BackupError::File(error)) => {
                tracing::warn!(file, destination = destination.name(), %error, "a backup record that is not a file; skipped");
                continue;
            }
            Err(error) => return Err(error),
        };
        match serde_json::from_slice::<BackupMeta>(&data) {
            Ok(record) if record.id == id && record.app == app && record.name == name => {
                match record.check_shape() {
                    Ok(()) => backups.push(record),
                    Err(problem) => tracing::warn!(
                        file,
                        destination = destination.name(),
                        problem,
                        "a backup record berth could not have written; skipped"
                    ),
                }
            }
            Ok(_) => tracing::warn!(
                file,
                destination = destination.name(),
                "a backup record names another backup; skipped"
            ),
            Err(error) => {
                tracing::warn!(file, destination = destination.name(), %error, "an unreadable backup record; skipped")
            }
        }
    }
    backups.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(backups)
}

/// The time an id was made, from its first 16 characters.
fn id_time(id: &str) -> Option<Timestamp> {
    let stamp = id.get(..16)?;
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp)
        .ok()?
        .to_zoned(TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// A consumer that writes the plaintext into a file (a restore `--to PATH`).
pub struct WriteToFile {
    pub path: std::path::PathBuf,
}

#[async_trait]
impl Consumer for WriteToFile {
    async fn consume(&self, input: PlainReceiver) -> std::result::Result<String, String> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader::new(input);
            let file = std::fs::File::create(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let mut out = io::BufWriter::with_capacity(pipeline::CHUNK, file);
            let n = io::copy(&mut reader, &mut out)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let file = out
                .into_inner()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            file.sync_all()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(format!("{n} bytes written to {}", path.display()))
        })
        .await
        .map_err(|e| format!("the writer stopped: {e}"))?
    }
}

/// A consumer that checks nothing and reads everything (for kinds checked elsewhere).
pub struct Drain;

#[async_trait]
impl Consumer for Drain {
    async fn consume(&self, mut input: PlainReceiver) -> std::result::Result<String, String> {
        let mut n = 0u64;
        while let Some(chunk) = input.recv().await {
            n += chunk.map_err(|e| e.to_string())?.len() as u64;
        }
        Ok(format!("{n} bytes read back"))
    }
}
