//! `berth restore`: put a backup's data back, into the service's volume or database, or to a
//! path.
//!
//! Invariants:
//! - The backup is read back whole (checksum compared, decrypted, decompressed) into a staging
//!   file and checked before anything live is touched: a damaged backup changes nothing.
//! - Live data is replaced only with `--force`, and only after a safety backup of it
//!   succeeded; the result names that backup.
//! - Services whose data is replaced are stopped first and started (or replaced) after, even
//!   when the restore fails half-way.

use crate::*;
use berth_api::{BackupsOutcome, Outcome, RestoreResult, human_bytes};
use berth_backup::meta::{BackupMeta, ContentKind, Reason};
use berth_backup::runner::WriteToFile;
use berth_backup::{Identities, archive};
use berth_manifest::{Backup, Manifest};
use berth_state::RunFinish;
use jiff::Timestamp;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod directory;

pub struct RestorePlan {
    pub manifest: Manifest,
    pub name: String,
    pub id: Option<String>,
    pub at: Option<Timestamp>,
    /// Restore to this path on the agent's machine instead of the live data.
    pub to: Option<PathBuf>,
    pub force: bool,
    /// The storage to read from.
    pub from: Option<String>,
    /// Identities given for this restore only.
    pub identity: Option<Identities>,
    /// Keep setuid and setgid bits of archived files.
    pub keep_setuid: bool,
    /// Restore a backup whose record cannot be authenticated.
    pub allow_untrusted: bool,
    pub actor: String,
}

/// `--at` as people write it: RFC 3339, or a date and time (or a date, meaning its end) in
/// the server's time zone.
pub fn parse_at(text: &str) -> Result<Timestamp, OpError> {
    let text = text.trim();
    if let Ok(timestamp) = text.parse::<Timestamp>() {
        return Ok(timestamp);
    }
    let tz = jiff::tz::TimeZone::system();
    if let Ok(datetime) = text.replace(' ', "T").parse::<jiff::civil::DateTime>() {
        return datetime
            .to_zoned(tz)
            .map(|z| z.timestamp())
            .map_err(|e| OpError::invalid(format!("`{text}`: {e}")));
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        return date
            .at(23, 59, 59, 999_999_999)
            .to_zoned(tz)
            .map(|z| z.timestamp())
            .map_err(|e| OpError::invalid(format!("`{text}`: {e}")));
    }
    Err(OpError::invalid(format!("`{text}` is not a time"))
        .hint("write 2026-11-23T03:00:00Z, 2026-11-23 03:00 (server time) or 2026-11-23"))
}

/// The things a restore did, in order, for its result.
pub(crate) struct Actions(Vec<String>);

impl Actions {
    fn push(&mut self, progress: &Progress, text: String) {
        progress.log(text.clone());
        self.0.push(text);
    }
}

impl Backups {
    /// `berth restore`. The caller holds the app's deploy lock (the engine's `locks()`), so
    /// nothing replaces the containers a restore stops and starts; the restore takes the
    /// backup lock itself.
    pub async fn restore(self: Arc<Self>, plan: RestorePlan, progress: Progress) -> Outcome {
        let started = Instant::now();
        let app = plan.manifest.app.clone();
        let run = self
            .store()
            .start_backup_run(&app, &plan.name, "restore", &plan.actor)
            .unwrap_or_default();
        let _backup_lock = self
            .locks
            .acquire(
                &app,
                berth_api::LockInfo {
                    operation: "restore".into(),
                    holder: plan.actor.clone(),
                    since: berth_state::now_ms(),
                },
                |holder| {
                    progress.log(format!(
                        "waiting for the {} of {app}'s backups started by {}",
                        holder.operation, holder.holder
                    ))
                },
            )
            .await;
        let mut actions = Actions(Vec::new());
        let result = self.restore_steps(&plan, &mut actions, &progress).await;
        // A restore berth refused (no --force over live data, an occupied --to, an
        // untrusted backup) changed nothing: it is no failure, and never turns status red.
        let (status, cause, error) = match &result {
            Ok(_) => ("ok", None, None),
            Err(e) if e.kind == ErrorKind::Invalid => {
                ("refused", Some("refused"), Some(e.message.clone()))
            }
            Err(e) => ("failed", Some("restore-failed"), Some(e.message.clone())),
        };
        if run > 0
            && let Err(e) = self.store().finish_backup_run(
                run,
                &RunFinish {
                    status,
                    backup_id: result.as_ref().ok().map(|r| r.id.as_str()),
                    cause,
                    error: error.as_deref(),
                },
            )
        {
            tracing::error!(error = %e, "cannot record a restore");
        }
        self.audit(
            &plan.actor,
            "restore",
            &format!("{app}/{}", plan.name),
            status,
            &match &result {
                Ok(r) => format!("{} from {} to {}", r.id, r.storage, r.target),
                Err(e) => e.message.clone(),
            },
        );
        let (restored, error) = match result {
            Ok(restored) => (Some(restored), None),
            Err(mut error) => {
                if !actions.0.is_empty() {
                    error.details = actions.0.clone();
                    let done = actions.0.join("; ");
                    let hint = error.hint.clone().unwrap_or_default();
                    error.hint = Some(format!(
                        "done before it failed: {done}{}{hint}",
                        if hint.is_empty() { "" } else { "\n" }
                    ));
                }
                (None, Some(error))
            }
        };
        finish_outcome(
            &app,
            "restore",
            started,
            error,
            BackupsOutcome {
                restored,
                ..BackupsOutcome::default()
            },
        )
    }

    /// Picks the backup and the copy to read.
    async fn choose_backup(
        &self,
        plan: &RestorePlan,
        backup: &Backup,
    ) -> Result<(BackupMeta, String), OpError> {
        let manifest = &plan.manifest;
        // Records this server's key (or the one given for this restore) signed; others
        // could have been planted by anyone who can write to the storage.
        let mut identities = self.backup_key()?;
        if let Some(extra) = &plan.identity {
            identities.extend(extra);
        }
        let keys = identities.record_keys();
        let mut refreshed = false;
        loop {
            let (copies, warnings) = self.catalog_for(manifest, backup, refreshed).await;
            let (copies, untrusted): (Vec<_>, Vec<_>) = copies
                .into_iter()
                .partition(|(meta, _)| plan.allow_untrusted || meta.trust(&keys).is_trusted());
            if let Some(id) = &plan.id
                && let Some((meta, storage)) = untrusted.iter().find(|(m, _)| &m.id == id)
                && !copies.iter().any(|(m, _)| &m.id == id)
            {
                let trust = meta.trust(&keys);
                return Err(OpError::invalid(format!(
                    "backup {id} on {storage} is not one berth can vouch for: {}",
                    trust.explain()
                ))
                .hint(
                    "look at it with `berth backup list`; give the key of the server that wrote it with --identity, or pass --allow-untrusted if you trust the storage",
                ));
            }
            let wanted: Vec<&(BackupMeta, String)> = copies
                .iter()
                .filter(|(meta, storage)| {
                    plan.from.as_ref().is_none_or(|f| f == storage)
                        && match (&plan.id, plan.at) {
                            (Some(id), _) => &meta.id == id,
                            (None, Some(at)) => {
                                meta.created_at <= at && meta.reason != Reason::Safety
                            }
                            (None, None) => meta.reason != Reason::Safety,
                        }
                })
                .collect();
            // The newest backup; of its copies, the first in the backup's storage order.
            let newest = wanted.iter().map(|(m, _)| m.created_at).max();
            let choice = wanted
                .iter()
                .filter(|(m, _)| Some(m.created_at) == newest)
                .min_by_key(|(_, storage)| {
                    backup
                        .to
                        .iter()
                        .position(|s| s == storage)
                        .unwrap_or(usize::MAX)
                });
            if let Some((meta, storage)) = choice {
                return Ok((meta.clone(), storage.clone()));
            }
            if !refreshed {
                refreshed = true;
                continue;
            }
            let what = match (&plan.id, plan.at) {
                (Some(id), _) => format!("no backup {id} of {}", backup.name),
                (None, Some(at)) => format!("no backup of {} taken at or before {at}", backup.name),
                (None, None) => format!("no backups of {}", backup.name),
            };
            let mut error = OpError::not_found(format!(
                "{what} on {}",
                plan.from.clone().unwrap_or_else(|| backup.to.join(" or "))
            ))
            .hint(if untrusted.is_empty() {
                "`berth backup list` shows what there is".to_owned()
            } else {
                format!(
                    "{} backups there have records berth cannot vouch for (not signed by this server's key); `berth backup list` shows them. Give the key of the server that wrote them with --identity, or pass --allow-untrusted if you trust the storage",
                    untrusted.len()
                )
            });
            error.details = warnings;
            return Err(error);
        }
    }

    async fn restore_steps(
        &self,
        plan: &RestorePlan,
        actions: &mut Actions,
        progress: &Progress,
    ) -> Result<RestoreResult, OpError> {
        let manifest = &plan.manifest;
        let backup = Self::backup_named(manifest, &plan.name)?;
        let (meta, storage) = self.choose_backup(plan, backup).await?;
        let step = progress.step(format!("find {} {}", plan.name, meta.id));
        step.done(Some(format!(
            "taken {}, {} on {storage}",
            meta.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            human_bytes(meta.content_size)
        )));
        let mut result = RestoreResult {
            name: plan.name.clone(),
            id: meta.id.clone(),
            storage: storage.clone(),
            target: String::new(),
            safety_backup: None,
            bytes: meta.content_size,
            actions: Vec::new(),
        };
        if let Some(to) = &plan.to {
            result.target = to.display().to_string();
            self.restore_to_path(plan, &meta, &storage, to, actions, progress)
                .await?;
        } else {
            self.restore_live(
                plan,
                backup,
                &meta,
                &storage,
                &mut result,
                actions,
                progress,
            )
            .await?;
        }
        result.actions = actions.0.clone();
        Ok(result)
    }

    /// Reads the backup back into `file` (checksum, decryption, decompression all checked).
    async fn stage(
        &self,
        plan: &RestorePlan,
        meta: &BackupMeta,
        storage: &str,
        file: &Path,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let step_name = format!("read {} from {storage}", meta.id);
        let step = progress.step(step_name.clone());
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| OpError::failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        let attempt = async {
            let runner = self.runner(
                &plan.manifest,
                &[storage.to_owned()],
                plan.identity.as_ref(),
                transfer_events(progress, &step_name),
            )?;
            let identities = runner.identities.clone();
            Ok::<_, OpError>(
                runner
                    .read_back(
                        &runner.destinations[0],
                        meta,
                        &identities,
                        &WriteToFile {
                            path: file.to_owned(),
                        },
                    )
                    .await?,
            )
        };
        match attempt.await {
            Ok(_) => {
                step.done(Some(format!(
                    "checksum and decryption good, {}",
                    human_bytes(meta.content_size)
                )));
                Ok(())
            }
            Err(error) => {
                let _ = std::fs::remove_file(file);
                step.fail(&error.message);
                Err(error)
            }
        }
    }

    fn scratch_file(&self, meta: &BackupMeta) -> PathBuf {
        self.data_dir
            .join("tmp")
            .join(format!("restore-{}.{}", meta.id, meta.kind.extension()))
    }

    async fn restore_to_path(
        &self,
        plan: &RestorePlan,
        meta: &BackupMeta,
        storage: &str,
        to: &Path,
        actions: &mut Actions,
        progress: &Progress,
    ) -> Result<(), OpError> {
        if !to.is_absolute() {
            return Err(OpError::invalid(format!(
                "--to {} must be an absolute path on the agent's machine",
                to.display()
            )));
        }
        let archive_kind = matches!(meta.kind, ContentKind::Tar | ContentKind::BerthState);
        // The parent is the operator's choice and trusted as named; the last component is
        // never followed (a link planted there in a shared directory is refused).
        let (parent, name) = berth_fs::split(to)?;
        std::fs::create_dir_all(parent)
            .map_err(|e| OpError::failed(format!("cannot create {}: {e}", parent.display())))?;
        let parent = berth_fs::Dir::open(parent)?;
        let existing = parent.entry(name)?;
        let occupied = match existing {
            None => false,
            Some(entry) if entry.kind == berth_fs::Kind::Symlink => {
                return Err(berth_fs::FsError::Symlink {
                    path: to.to_owned(),
                    expected: if archive_kind { "directory" } else { "file" },
                }
                .into());
            }
            Some(entry) if archive_kind && entry.kind != berth_fs::Kind::Directory => {
                return Err(OpError::invalid(format!(
                    "{} is a {}, and this backup is a directory archive",
                    to.display(),
                    entry.kind.name()
                ))
                .hint("choose a directory path with --to"));
            }
            Some(_) if archive_kind => !parent.subdirectory(name, false)?.names()?.is_empty(),
            Some(_) => true,
        };
        if occupied && !plan.force {
            return Err(OpError::invalid(format!(
                "{} already exists{}",
                to.display(),
                if archive_kind {
                    " and is not empty"
                } else {
                    ""
                }
            ))
            .hint("choose another path, or pass --force to overwrite it"));
        }
        let staged = self.scratch_file(meta);
        self.stage(plan, meta, storage, &staged, progress).await?;
        if archive_kind {
            let step = progress.step(format!("unpack into {}", to.display()));
            let journal = crate::staging::Journal::new(&self.data_dir);
            let unpacked = async {
                let (staging, staging_name) = parent.create_temp_dir(name)?;
                let recorded = journal.record(&plan.manifest.app, parent.path(), &staging_name);
                let unpacked =
                    unpack_into(&staged, &parent, &staging, &staging_name, plan.keep_setuid).await;
                let placed = unpacked.and_then(|info| {
                    if existing.is_some() {
                        journal.mark_swapping(&recorded);
                        swap_contents(&staging, &parent.subdirectory(name, false)?)?;
                        parent.remove_any(&staging_name)?;
                    } else {
                        parent.rename(&staging_name, name)?;
                    }
                    Ok(info)
                });
                if placed.is_err() {
                    let _ = parent.remove_any(&staging_name);
                }
                journal.forget(recorded);
                placed
            }
            .await;
            let _ = std::fs::remove_file(&staged);
            let info = step.finish(unpacked)?;
            actions.push(progress, format!("unpacked {} into {}", info, to.display()));
            return Ok(());
        }
        if meta.kind == ContentKind::Sqlite {
            let step = progress.step("check the database");
            let checked = check_sqlite(&staged).await;
            if checked.is_err() {
                let _ = std::fs::remove_file(&staged);
            }
            let report = step.finish(checked)?;
            actions.push(progress, format!("checked the database: {report}"));
        }
        // Decrypted data: readable by the agent's user only.
        let placed = std::fs::File::open(&staged)
            .map_err(|e| OpError::failed(format!("cannot read {}: {e}", staged.display())))
            .and_then(|mut file| Ok(parent.replace_with_copy(name, &mut file, None, 0o600)?));
        let _ = std::fs::remove_file(&staged);
        placed?;
        actions.push(
            progress,
            format!(
                "wrote {} to {} (mode 0600)",
                human_bytes(meta.content_size),
                to.display()
            ),
        );
        Ok(())
    }

    /// A safety backup of what is about to be replaced, to the local storage.
    async fn safety_backup(
        &self,
        plan: &RestorePlan,
        backup: &Backup,
        actions: &mut Actions,
        progress: &Progress,
    ) -> Result<String, OpError> {
        let result = self
            .backup_once(
                &plan.manifest,
                backup,
                Reason::Safety,
                &[berth_manifest::LOCAL_STORAGE.to_owned()],
                &plan.actor,
                progress,
            )
            .await;
        match (result.status.as_str(), result.id) {
            ("ok", Some(id)) => {
                actions.push(
                    progress,
                    format!("took safety backup {id} of the current data (local storage)"),
                );
                Ok(id)
            }
            _ => Err(OpError::failed(format!(
                "the safety backup of the current data failed, so nothing was restored: {}",
                result.error.unwrap_or_default()
            ))),
        }
    }

    /// Refuses to go on over live data without `--force`; with it, takes the safety backup.
    async fn guard_live_data(
        &self,
        plan: &RestorePlan,
        backup: &Backup,
        live: Option<String>,
        result: &mut RestoreResult,
        actions: &mut Actions,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let Some(what) = live else {
            actions.push(progress, format!("{} holds no data yet", result.target));
            return Ok(());
        };
        if !plan.force {
            return Err(OpError::invalid(format!(
                "{} holds live data ({what}); berth will not replace it without --force",
                result.target
            ))
            .hint(
                "run again with --force: a safety backup of the current data is taken first; or restore elsewhere with --to PATH",
            ));
        }
        result.safety_backup = Some(self.safety_backup(plan, backup, actions, progress).await?);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn restore_live(
        &self,
        plan: &RestorePlan,
        backup: &Backup,
        meta: &BackupMeta,
        storage: &str,
        result: &mut RestoreResult,
        actions: &mut Actions,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let mut job = LiveRestore {
            backups: self,
            plan,
            backup,
            meta,
            storage,
            result,
            actions,
            progress,
        };
        kind_of(backup).restore(self, &mut job).await
    }
}

/// A restore over live data, as the kinds of source see it.
pub(crate) struct LiveRestore<'a> {
    backups: &'a Backups,
    pub(crate) plan: &'a RestorePlan,
    backup: &'a Backup,
    meta: &'a BackupMeta,
    storage: &'a str,
    result: &'a mut RestoreResult,
    pub(crate) actions: &'a mut Actions,
    pub(crate) progress: &'a Progress,
}

#[async_trait]
impl Restoring for LiveRestore<'_> {
    fn manifest(&self) -> &Manifest {
        &self.plan.manifest
    }

    fn progress(&self) -> &Progress {
        self.progress
    }

    fn backup_name(&self) -> &str {
        &self.backup.name
    }

    fn backup_id(&self) -> &str {
        &self.meta.id
    }

    fn safety_backup(&self) -> Option<&str> {
        self.result.safety_backup.as_deref()
    }

    fn set_target(&mut self, target: String) {
        self.result.target = target;
    }

    fn did(&mut self, text: String) {
        self.actions.push(self.progress, text);
    }

    async fn guard(&mut self, live: Option<String>) -> Result<(), OpError> {
        self.backups
            .guard_live_data(
                self.plan,
                self.backup,
                live,
                self.result,
                self.actions,
                self.progress,
            )
            .await
    }

    async fn stage(&mut self) -> Result<PathBuf, OpError> {
        let staged = self.backups.scratch_file(self.meta);
        self.backups
            .stage(self.plan, self.meta, self.storage, &staged, self.progress)
            .await?;
        Ok(staged)
    }

    async fn with_services_stopped(
        &mut self,
        services: &[String],
        change: Change<'_>,
    ) -> Result<(), OpError> {
        self.backups
            .with_services_stopped(
                &self.plan.manifest,
                services,
                self.actions,
                self.progress,
                change,
            )
            .await
    }

    async fn restore_directory(&mut self, dir: &Path, users: &[String]) -> Result<(), OpError> {
        let backups = self.backups;
        backups.restore_directory(self, dir, users).await
    }
}

/// Unpacks the archive `file` into `staging` (a new directory named `staging_name` in
/// `parent`), then checks that the name still holds that directory: if something swapped it
/// meanwhile, what was unpacked is not used.
async fn unpack_into(
    file: &Path,
    parent: &berth_fs::Dir,
    staging: &berth_fs::Dir,
    staging_name: &std::ffi::OsStr,
    keep_setuid: bool,
) -> Result<String, OpError> {
    let file = file.to_owned();
    // Unpacked through a path that pins the staging directory itself: if its name is
    // swapped for a link meanwhile (its parent may be writable by others), nothing follows it.
    let pinned = staging.try_clone()?;
    let info = tokio::task::spawn_blocking(move || {
        let mut input = std::io::BufReader::new(
            std::fs::File::open(&file)
                .map_err(|e| OpError::failed(format!("cannot read {}: {e}", file.display())))?,
        );
        let unpacked = archive::unpack(&mut input, &pinned.pinned_path(), keep_setuid)
            .map(|info| info.to_string())
            .map_err(|e| {
                OpError::failed(e.to_string().replace(
                    &pinned.pinned_path().display().to_string(),
                    &pinned.path().display().to_string(),
                ))
            });
        drop(pinned);
        unpacked
    })
    .await
    .map_err(|e| OpError::failed(format!("unpacking stopped: {e}")))??;
    let ours = staging.stat()?;
    match parent.entry(staging_name)? {
        Some(now) if now.dev == ours.dev && now.ino == ours.ino => Ok(info),
        _ => Err(berth_fs::FsError::Interference {
            path: staging.path().to_owned(),
        }
        .into()),
    }
}

/// Empties `dir` and moves everything from `from` into it (same file system: renames), all
/// through open directories, so no link planted meanwhile is followed.
fn swap_contents(from: &berth_fs::Dir, dir: &berth_fs::Dir) -> Result<(), OpError> {
    for name in dir.names()? {
        dir.remove_any(&name)?;
    }
    for name in from.names()? {
        from.move_to(&name, dir)?;
    }
    dir.sync()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_the_ways_people_write_them() {
        assert_eq!(
            parse_at("2026-11-23T03:00:00Z").unwrap().to_string(),
            "2026-11-23T03:00:00Z"
        );
        assert!(parse_at("2026-11-23 03:00").is_ok());
        assert!(parse_at("2026-11-23").is_ok());
        let error = parse_at("yesterday").unwrap_err();
        assert!(error.hint.as_deref().unwrap_or("").contains("2026-11-23"));
    }

    #[test]
    fn swapping_contents_replaces_everything() {
        let live = tempfile::tempdir().unwrap();
        let staged = tempfile::tempdir().unwrap();
        std::fs::write(live.path().join("old.txt"), b"old").unwrap();
        std::fs::create_dir(live.path().join("olddir")).unwrap();
        std::fs::write(staged.path().join("new.txt"), b"new").unwrap();
        swap_contents(
            &berth_fs::Dir::open(staged.path()).unwrap(),
            &berth_fs::Dir::open(live.path()).unwrap(),
        )
        .unwrap();
        let names: Vec<String> = std::fs::read_dir(live.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["new.txt"]);
    }
}
