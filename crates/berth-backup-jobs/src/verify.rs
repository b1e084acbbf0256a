//! `berth backup verify`: every copy read back and checked again, away from the live data.

use super::*;

impl Backups {
    /// `berth backup verify`: reads every copy (or one backup's) back and checks it again. The
    /// caller holds the app's backup lock.
    pub async fn verify_backups(
        self: Arc<Self>,
        manifest: Manifest,
        names: Vec<String>,
        options: VerifyOptions,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let mut outcome = BackupsOutcome::default();
        let mut failures = Vec::new();
        for name in &names {
            let Ok(backup) = Self::backup_named(&manifest, name) else {
                continue;
            };
            let run = self
                .store()
                .start_backup_run(&manifest.app, name, "verify", &actor)
                .unwrap_or_default();
            let results = self
                .verify_name(&manifest, backup, &options, &progress)
                .await;
            let failed: Vec<&VerifyResult> = results.iter().filter(|r| !r.ok).collect();
            let (status, cause, error) = match failed.first() {
                None if results.is_empty() => (
                    "failed",
                    Some("not-found".to_owned()),
                    Some(match &options.id {
                        Some(id) => format!("no backup {id} of {name} was found"),
                        None => format!("{name} has no backups to verify"),
                    }),
                ),
                None => ("ok", None, None),
                Some(first) => (
                    "failed",
                    first.cause.clone(),
                    Some(
                        failed
                            .iter()
                            .map(|r| r.error.clone().unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                ),
            };
            if let Some(error) = &error {
                failures.push(error.clone());
            }
            if run > 0
                && let Err(e) = self.store().finish_backup_run(
                    run,
                    &RunFinish {
                        status,
                        backup_id: options.id.as_deref(),
                        cause: cause.as_deref(),
                        error: error.as_deref(),
                    },
                )
            {
                tracing::error!(error = %e, "cannot record a verification");
            }
            self.audit(
                &actor,
                "backup-verify",
                &format!("{}/{name}", manifest.app),
                status,
                error
                    .as_deref()
                    .unwrap_or(&format!("{} copies verified", results.len())),
            );
            outcome.verified.extend(results);
        }
        let error = (!failures.is_empty()).then(|| OpError::failed(failures.join("; ")));
        finish_outcome(&manifest.app, "verify", started, error, outcome)
    }

    pub(super) async fn verify_name(
        &self,
        manifest: &Manifest,
        backup: &Backup,
        options: &VerifyOptions,
        progress: &Progress,
    ) -> Vec<VerifyResult> {
        let id = options.id.as_deref();
        let app = &manifest.app;
        let mut results = Vec::new();
        let (list, warnings) = self.catalog_for(manifest, backup, false).await;
        for warning in warnings {
            progress.log(format!("warning: {warning}"));
        }
        let prepared = match self.prepare_checker(manifest, backup).await {
            Ok(checker) => checker,
            Err(error) => {
                let step = progress.step(format!("verify {}", backup.name));
                step.fail(&error.message);
                return vec![VerifyResult {
                    name: backup.name.clone(),
                    id: id.unwrap_or_default().to_owned(),
                    storage: String::new(),
                    ok: false,
                    check: None,
                    error: Some(error.message.clone()),
                    cause: Some("setup".to_owned()),
                }];
            }
        };
        for (meta, storage) in list.iter().filter(|(m, _)| id.is_none_or(|id| m.id == id)) {
            let step_name = format!("verify {} {} on {storage}", backup.name, meta.id);
            let step = progress.step(step_name.clone());
            let attempt = async {
                let runner = self.runner(
                    manifest,
                    std::slice::from_ref(storage),
                    options.identity.as_ref(),
                    transfer_events(progress, &step_name),
                )?;
                Ok::<_, OpError>(
                    runner
                        .verify(
                            &runner.destinations[0],
                            meta,
                            prepared.as_ref(),
                            options.adopt_unsigned,
                        )
                        .await,
                )
            };
            let result = match attempt.await {
                Ok(Ok(updated)) => {
                    self.catalog_put(&updated, storage, None);
                    step.done(Some(updated.check.clone()));
                    VerifyResult {
                        name: backup.name.clone(),
                        id: meta.id.clone(),
                        storage: storage.clone(),
                        ok: true,
                        check: Some(updated.check),
                        error: None,
                        cause: None,
                    }
                }
                Ok(Err(error)) => {
                    let message = error.to_string();
                    // Without the key (a backup another server took, and its records) this
                    // server cannot check it: that is no sign the backup is bad.
                    let unverifiable = matches!(error.cause(), "no-key" | "untrusted");
                    if !unverifiable
                        && let Err(e) = self.store().fail_backup_copy(
                            app,
                            &backup.name,
                            &meta.id,
                            storage,
                            &message,
                        )
                    {
                        tracing::error!(error = %e, "cannot record a failed verification");
                    }
                    step.fail(&message);
                    VerifyResult {
                        name: backup.name.clone(),
                        id: meta.id.clone(),
                        storage: storage.clone(),
                        ok: false,
                        check: None,
                        error: Some(message),
                        cause: Some(error.cause().to_owned()),
                    }
                }
                Err(error) => {
                    step.fail(&error.message);
                    VerifyResult {
                        name: backup.name.clone(),
                        id: meta.id.clone(),
                        storage: storage.clone(),
                        ok: false,
                        check: None,
                        error: Some(error.message.clone()),
                        cause: Some("setup".to_owned()),
                    }
                }
            };
            results.push(result);
        }
        results
    }

    /// The check a backup's content gets, without preparing its source (which may need
    /// things a check does not, such as a volume to exist).
    pub(super) async fn prepare_checker(
        &self,
        manifest: &Manifest,
        backup: &Backup,
    ) -> Result<Box<dyn Consumer>, OpError> {
        kind_of(backup).checker(self, manifest).await
    }
}
