//! `berth backup run`, `list` and `prune`: taking a backup, the catalogue of verified copies,
//! retention.

use crate::*;

impl Backups {
    // ---- operations ------------------------------------------------------------------------

    /// `berth backup run`: each named backup (or all), then retention on each storage that
    /// holds the new backup. The caller holds the app's backup lock (`Backups::locks`).
    pub async fn run_backups(
        self: Arc<Self>,
        manifest: Manifest,
        names: Vec<String>,
        reason: Reason,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let app = manifest.app.clone();
        let mut outcome = BackupsOutcome::default();
        let mut error = None;
        for name in &names {
            let Ok(backup) = Self::backup_named(&manifest, name) else {
                continue;
            };
            let result = self
                .backup_once(&manifest, backup, reason, &backup.to, &actor, &progress)
                .await;
            if matches!(result.status, RunStatus::Ok | RunStatus::Partial) {
                let good: Vec<String> = result
                    .copies
                    .iter()
                    .filter(|c| c.ok)
                    .map(|c| c.storage.clone())
                    .collect();
                if !to_keep(&backup.keep).keeps_everything() {
                    let pruned = self
                        .prune_storages(&manifest, backup, &good, false, &actor, &progress)
                        .await;
                    outcome.pruned.extend(pruned);
                }
            }
            if result.status != RunStatus::Ok && error.is_none() {
                error = Some(OpError::failed(format!(
                    "backup {name} {}: {}",
                    if result.status == RunStatus::Partial {
                        "was stored only in part"
                    } else {
                        "failed"
                    },
                    result.error.clone().unwrap_or_default()
                )));
            }
            outcome.runs.push(result);
        }
        finish_outcome(&app, "backup", started, error, outcome)
    }

    /// One backup of one name to `storages`, recorded in the state and the audit log. The
    /// caller holds the app's backup lock.
    pub async fn backup_once(
        &self,
        manifest: &Manifest,
        backup: &Backup,
        reason: Reason,
        storages: &[String],
        actor: &str,
        progress: &Progress,
    ) -> BackupResult {
        let app = &manifest.app;
        let name = &backup.name;
        let run = self
            .store()
            .start_backup_run(app, name, "backup", actor)
            .unwrap_or_default();
        let step_name = if reason == Reason::Safety {
            format!("safety backup of {name}")
        } else {
            format!("back up {name}")
        };
        let step = progress.step(step_name.clone());
        let mut result = BackupResult {
            name: name.clone(),
            id: None,
            status: RunStatus::Failed,
            source: String::new(),
            source_summary: None,
            content_size: None,
            size: None,
            copies: Vec::new(),
            write_ms: None,
            verify_ms: None,
            error: None,
            cause: None,
            warnings: Vec::new(),
        };
        if manifest.backup.recipients.is_empty() && reason != Reason::Safety {
            result.warnings.push(
                "backups are encrypted only to this server's key (DATA_DIR/backup.key): if the \
                 server is lost, so are they. Add your own age recipient under [encryption] \
                 recipients, or keep a copy of the key elsewhere"
                    .to_owned(),
            );
        }
        let events = transfer_events(progress, &step_name);
        let attempt = async {
            let runner = self.runner(manifest, storages, None, events)?;
            for destination in &runner.destinations {
                for key in destination.abort_unfinished().await {
                    progress.log(format!(
                        "aborted the unfinished upload of {key} on {}, left by an earlier failure",
                        destination.name()
                    ));
                }
            }
            let mut prepared = kind_of(backup).prepare(self, manifest).await?;
            result.source = prepared.source.describe();
            let outcome = runner
                .run(
                    app,
                    name,
                    reason,
                    prepared.source.as_mut(),
                    prepared.checker.as_ref(),
                )
                .await;
            result.warnings.extend(
                prepared
                    .warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain(..),
            );
            Ok::<_, OpError>(outcome)
        };
        match attempt.await {
            Err(error) => {
                result.error = Some(match &error.hint {
                    Some(hint) => format!("{} ({hint})", error.message),
                    None => error.message.clone(),
                });
                result.cause = Some(if error.kind == ErrorKind::Invalid {
                    "invalid".to_owned()
                } else {
                    "setup".to_owned()
                });
            }
            Ok(Err(error)) => {
                result.cause = Some(error.cause().to_owned());
                result.error = Some(error.to_string());
            }
            Ok(Ok(run_outcome)) => {
                result.id = Some(run_outcome.id.clone());
                result.source_summary = Some(run_outcome.source_summary.clone());
                result.content_size = run_outcome.encoded.as_ref().map(|e| e.content_size);
                result.size = run_outcome.encoded.as_ref().map(|e| e.size);
                result.write_ms = Some(run_outcome.stored_in.as_millis() as u64);
                result.verify_ms = Some(run_outcome.verified_in.as_millis() as u64);
                let mut errors = Vec::new();
                for copy in &run_outcome.copies {
                    match &copy.result {
                        Ok(meta) => {
                            self.catalog_put(meta, &copy.destination, None);
                            result.copies.push(CopyResult {
                                storage: copy.destination.clone(),
                                ok: true,
                                check: Some(meta.check.clone()),
                                error: None,
                                cause: None,
                            });
                        }
                        Err(error) => {
                            errors.push(error.to_string());
                            if result.cause.is_none() {
                                result.cause = Some(error.cause().to_owned());
                            }
                            result.copies.push(CopyResult {
                                storage: copy.destination.clone(),
                                ok: false,
                                check: None,
                                error: Some(error.to_string()),
                                cause: Some(error.cause().to_owned()),
                            });
                        }
                    }
                }
                let good = result.copies.iter().filter(|c| c.ok).count();
                result.status = if good == result.copies.len() && good > 0 {
                    RunStatus::Ok
                } else if good > 0 {
                    RunStatus::Partial
                } else {
                    RunStatus::Failed
                };
                if !errors.is_empty() {
                    result.error = Some(errors.join("; "));
                }
            }
        }
        let detail = match result.status.as_str() {
            "ok" | "partial" => {
                let stored: Vec<&str> = result
                    .copies
                    .iter()
                    .filter(|c| c.ok)
                    .map(|c| c.storage.as_str())
                    .collect();
                let check = result
                    .copies
                    .iter()
                    .find_map(|c| c.check.clone())
                    .unwrap_or_default();
                format!(
                    "{}: {} read, {} stored on {}, verified ({check})",
                    result.id.as_deref().unwrap_or("?"),
                    human_bytes(result.content_size.unwrap_or(0)),
                    human_bytes(result.size.unwrap_or(0)),
                    stored.join(" and ")
                )
            }
            _ => String::new(),
        };
        match result.status.as_str() {
            "ok" => step.done(Some(detail.clone())),
            _ => step.fail(result.error.as_deref().unwrap_or("failed")),
        }
        for warning in &result.warnings {
            progress.log(format!("warning: {warning}"));
        }
        if run > 0
            && let Err(e) = self.store().finish_backup_run(
                run,
                &RunFinish {
                    status: result.status.as_str(),
                    backup_id: result.id.as_deref(),
                    cause: result.cause.as_deref(),
                    error: result.error.as_deref(),
                },
            )
        {
            tracing::error!(error = %e, "cannot record a backup run");
        }
        self.audit(
            actor,
            if reason == Reason::Safety {
                "safety-backup"
            } else {
                "backup"
            },
            &format!("{app}/{name}"),
            result.status.as_str(),
            result.error.as_deref().unwrap_or(&detail),
        );
        if reason != Reason::Safety {
            self.metrics
                .record(app, name, result.status.as_str(), self.clock.now());
        }
        result
    }

    pub(crate) fn catalog_put(&self, meta: &BackupMeta, storage: &str, error: Option<&str>) {
        let copy = BackupCopy {
            app: meta.app.clone(),
            name: meta.name.clone(),
            id: meta.id.clone(),
            destination: storage.to_owned(),
            created_at: meta.created_at.as_millisecond(),
            verified_at: meta.verified_at.as_millisecond(),
            verify_error: error.map(str::to_owned),
            meta_json: String::from_utf8_lossy(&meta.to_json()).into_owned(),
        };
        if let Err(e) = self.store().put_backup_copy(&copy) {
            tracing::error!(error = %e, "cannot record a backup in the catalog");
        }
    }

    /// Applies the backup's retention on each of `storages`.
    pub(crate) async fn prune_storages(
        &self,
        manifest: &Manifest,
        backup: &Backup,
        storages: &[String],
        dry_run: bool,
        actor: &str,
        progress: &Progress,
    ) -> Vec<PruneResult> {
        let mut results = Vec::new();
        let keep = to_keep(&backup.keep);
        for storage in storages {
            let step = progress.step(format!("prune {} on {storage}", backup.name));
            let attempt = async {
                let runner = self.runner(
                    manifest,
                    std::slice::from_ref(storage),
                    None,
                    runner::no_events(),
                )?;
                let destination = &runner.destinations[0];
                Ok::<_, OpError>(
                    runner
                        .prune(destination, &manifest.app, &backup.name, &keep, dry_run)
                        .await?,
                )
            };
            let result = match attempt.await {
                Ok(report) => {
                    if !dry_run {
                        for id in &report.removed {
                            if let Err(e) = self.store().remove_backup_copy(
                                &manifest.app,
                                &backup.name,
                                id,
                                storage,
                            ) {
                                tracing::error!(error = %e, "cannot update the backup catalog");
                            }
                        }
                    }
                    step.done(Some(format!(
                        "{} {}, {} kept ({})",
                        if dry_run { "would remove" } else { "removed" },
                        report.removed.len(),
                        report.kept.len(),
                        backup_keep_text(&backup.keep)
                    )));
                    PruneResult {
                        name: backup.name.clone(),
                        storage: storage.clone(),
                        kept: report.kept.into_iter().map(|k| k.id).collect(),
                        removed: report.removed,
                        untrusted: report.untrusted,
                        dry_run,
                        error: None,
                    }
                }
                Err(error) => {
                    step.fail(&error.message);
                    PruneResult {
                        name: backup.name.clone(),
                        storage: storage.clone(),
                        kept: Vec::new(),
                        removed: Vec::new(),
                        untrusted: Vec::new(),
                        dry_run,
                        error: Some(error.message.clone()),
                    }
                }
            };
            if !dry_run {
                self.audit(
                    actor,
                    "backup-prune",
                    &format!("{}/{} on {storage}", manifest.app, backup.name),
                    if result.error.is_none() {
                        "ok"
                    } else {
                        "failed"
                    },
                    &result
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("removed {}", result.removed.join(", "))),
                );
            }
            results.push(result);
        }
        results
    }

    /// `berth backup prune`: retention on every storage of each named backup. The caller holds
    /// the app's backup lock.
    pub async fn prune_backups(
        self: Arc<Self>,
        manifest: Manifest,
        names: Vec<String>,
        dry_run: bool,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let mut outcome = BackupsOutcome::default();
        let mut error = None;
        for name in &names {
            let Ok(backup) = Self::backup_named(&manifest, name) else {
                continue;
            };
            if to_keep(&backup.keep).keeps_everything() {
                progress.log(format!(
                    "{name} has no `keep` rule, so every backup is kept"
                ));
                continue;
            }
            // A storage whose newest backup failed its last verification is left alone:
            // pruning it could keep only the bad one.
            let copies = match self.store().backup_copies(&manifest.app, Some(name)) {
                Ok(copies) => copies,
                // Without the catalogue berth cannot tell which storage's newest backup
                // failed verification: pruning blind could keep only a bad copy.
                Err(state_error) => {
                    let message = format!(
                        "not pruning {name}: the backup catalogue could not be read ({state_error}), so berth cannot tell whether the newest backups verified"
                    );
                    progress.log(message.clone());
                    if error.is_none() {
                        error = Some(OpError::failed(message).hint(
                            "check the agent's state file (`berth status` and the agent's log say more), then prune again",
                        ));
                    }
                    continue;
                }
            };
            let mut storages = Vec::new();
            for storage in &backup.to {
                let newest = copies
                    .iter()
                    .filter(|c| &c.destination == storage)
                    .max_by_key(|c| c.created_at);
                match newest.and_then(|c| c.verify_error.as_ref().map(|e| (c, e))) {
                    Some((copy, problem)) => {
                        let message = format!(
                            "not pruning {name} on {storage}: its newest backup {} failed verification ({problem}); take a new backup first",
                            copy.id
                        );
                        progress.log(message.clone());
                        if error.is_none() {
                            error = Some(OpError::failed(message));
                        }
                    }
                    None => storages.push(storage.clone()),
                }
            }
            let results = self
                .prune_storages(&manifest, backup, &storages, dry_run, &actor, &progress)
                .await;
            for result in &results {
                if let Some(message) = &result.error
                    && error.is_none()
                {
                    error = Some(OpError::failed(format!(
                        "pruning {name} on {} failed: {message}",
                        result.storage
                    )));
                }
            }
            outcome.pruned.extend(results);
        }
        finish_outcome(&manifest.app, "prune", started, error, outcome)
    }

    /// Every good copy of a backup name, from the catalog, read from the storage itself
    /// when asked or when the catalog knows none (a new server). Returns warnings for
    /// storage that could not be read.
    pub(crate) async fn catalog_for(
        &self,
        manifest: &Manifest,
        backup: &Backup,
        refresh: bool,
    ) -> (Vec<(BackupMeta, String)>, Vec<String>) {
        let app = &manifest.app;
        let mut warnings = Vec::new();
        let cached = self
            .store()
            .backup_copies(app, Some(&backup.name))
            .unwrap_or_default();
        if refresh || cached.is_empty() {
            for storage in &backup.to {
                let listed = async {
                    let destination = self.destination(manifest, storage)?;
                    Ok::<_, OpError>(runner::list(&destination, app, &backup.name).await?)
                };
                match listed.await {
                    Ok(metas) => {
                        let copies: Vec<BackupCopy> = metas
                            .iter()
                            .map(|meta| BackupCopy {
                                app: app.clone(),
                                name: backup.name.clone(),
                                id: meta.id.clone(),
                                destination: storage.clone(),
                                created_at: meta.created_at.as_millisecond(),
                                verified_at: meta.verified_at.as_millisecond(),
                                verify_error: None,
                                meta_json: String::from_utf8_lossy(&meta.to_json()).into_owned(),
                            })
                            .collect();
                        if let Err(e) =
                            self.store()
                                .replace_backup_copies(app, &backup.name, storage, &copies)
                        {
                            warnings.push(format!("cannot update the catalog: {e}"));
                        }
                    }
                    Err(error) => warnings.push(format!(
                        "storage {storage} could not be read: {}",
                        error.message
                    )),
                }
            }
        }
        let copies = self
            .store()
            .backup_copies(app, Some(&backup.name))
            .unwrap_or_default();
        let list = copies
            .into_iter()
            .filter_map(|copy| {
                serde_json::from_str::<BackupMeta>(&copy.meta_json)
                    .ok()
                    .filter(|meta| meta.check_shape().is_ok())
                    .map(|meta| (meta, copy.destination))
            })
            .collect();
        (list, warnings)
    }

    /// `berth backup list`.
    pub async fn list_backups(
        &self,
        manifest: &Manifest,
        name: Option<&str>,
        refresh: bool,
    ) -> Result<berth_api::BackupList, OpError> {
        let names = match name {
            Some(name) => vec![name.to_owned()],
            None => manifest.backup.backups.keys().cloned().collect(),
        };
        let mut list = berth_api::BackupList::default();
        let keys = self.backup_key()?.record_keys();
        for name in names {
            let backup = Self::backup_named(manifest, &name)?;
            let (copies, warnings) = self.catalog_for(manifest, backup, refresh).await;
            list.warnings.extend(warnings);
            let flagged = self
                .store()
                .backup_copies(&manifest.app, Some(&name))
                .unwrap_or_default();
            for (meta, storage) in copies {
                let verify_error = flagged
                    .iter()
                    .find(|c| c.id == meta.id && c.destination == storage)
                    .and_then(|c| c.verify_error.clone());
                let trust = meta.trust(&keys);
                let copy = CopyInfo {
                    storage,
                    verified_at: meta.verified_at.as_millisecond(),
                    check: meta.check.clone(),
                    verify_error,
                    untrusted: (!trust.is_trusted()).then(|| trust.as_str().to_owned()),
                };
                match list
                    .backups
                    .iter_mut()
                    .find(|b| b.name == name && b.id == meta.id)
                {
                    Some(existing) => existing.copies.push(copy),
                    None => list.backups.push(BackupInfo {
                        name: name.clone(),
                        id: meta.id.clone(),
                        kind: meta.kind.as_str().to_owned(),
                        reason: meta.reason.as_str().to_owned(),
                        created_at: meta.created_at.as_millisecond(),
                        size: meta.size,
                        content_size: meta.content_size,
                        source: meta.source.clone(),
                        copies: vec![copy],
                    }),
                }
            }
        }
        list.backups
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.created_at.cmp(&b.created_at)));
        Ok(list)
    }
}

/// What `berth backup verify` was asked.
pub struct VerifyOptions {
    /// One backup only.
    pub id: Option<String>,
    /// Sign an older berth's unsigned record once it passes every check.
    pub adopt_unsigned: bool,
    /// Keys given for this verification only (another server's backups).
    pub identity: Option<Identities>,
}

pub(crate) fn to_keep(keep: &berth_manifest::Keep) -> Keep {
    Keep {
        last: keep.last,
        hourly: keep.hourly,
        daily: keep.daily,
        weekly: keep.weekly,
        monthly: keep.monthly,
        yearly: keep.yearly,
    }
}

fn backup_keep_text(keep: &berth_manifest::Keep) -> String {
    to_keep(keep).to_string()
}

/// Runner events as progress: bytes read become a transfer bar, the rest log lines.
pub(crate) fn transfer_events(progress: &Progress, step: &str) -> EventSink {
    let progress = progress.clone();
    let step = step.to_owned();
    Arc::new(move |event| match event {
        Event::Read { bytes } => progress.transfer(&step, bytes, None),
        Event::ReadBack { bytes, total } => progress.transfer(&step, bytes, Some(total)),
        Event::Stored { destination, bytes } => {
            progress.log(format!("stored {} on {destination}", human_bytes(bytes)))
        }
        Event::CopyFailed { destination, error } => progress.log(format!("{destination}: {error}")),
        Event::Started { .. } | Event::Verified { .. } => {}
    })
}

pub(crate) fn finish_outcome(
    app: &str,
    operation: &str,
    started: Instant,
    error: Option<OpError>,
    backups: BackupsOutcome,
) -> Outcome {
    Outcome {
        ok: error.is_none(),
        app: app.to_owned(),
        operation: operation.to_owned(),
        release: None,
        version: None,
        live_release: None,
        elapsed_ms: started.elapsed().as_millis() as u64,
        urls: Vec::new(),
        error: error.map(|e| e.to_operation()),
        backups: Some(backups),
    }
}
