//! The schedule worker and `berth status`'s view of an app's backups.

use super::*;

// ---- schedule and status -----------------------------------------------------------------

/// What the scheduler plans, for `berth status`: (app, backup, operation) -> next run (ms).
pub type PlannedRuns = Mutex<std::collections::HashMap<(String, String, &'static str), i64>>;

impl Backups {
    /// Every app with a live release, with its manifest.
    fn live_manifests(&self) -> Vec<Manifest> {
        let Ok(apps) = self.store().apps() else {
            return Vec::new();
        };
        apps.into_iter()
            .filter_map(|app| self.store().live_release(&app.name).ok().flatten())
            .filter_map(|release| release_manifest(&release).ok())
            .collect()
    }

    /// `berth status`'s view of an app's backups.
    pub fn backup_status(&self, manifest: &Manifest) -> Vec<berth_api::BackupStatus> {
        let app = &manifest.app;
        let runs = self.store().latest_backup_runs(app).unwrap_or_default();
        let copies = self.store().backup_copies(app, None).unwrap_or_default();
        let planned = self
            .planned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        manifest
            .backup
            .backups
            .values()
            .map(|backup| {
                let last_run = runs
                    .iter()
                    .filter(|r| {
                        r.name == backup.name
                            && r.operation != "prune"
                            && RunStatus::parse(&r.status) != RunStatus::Refused
                    })
                    // The run that ended last (one still running counts as last): a
                    // restore's safety backup starts after the restore and must not hide it.
                    .max_by_key(|r| (r.finished_at.unwrap_or(i64::MAX), r.started_at))
                    .map(|r| berth_api::BackupRunInfo {
                        operation: r.operation.clone(),
                        status: RunStatus::parse(&r.status),
                        started_at: r.started_at,
                        finished_at: r.finished_at,
                        backup_id: r.backup_id.clone(),
                        cause: r.cause.clone(),
                        error: r.error.clone(),
                    });
                berth_api::BackupStatus {
                    name: backup.name.clone(),
                    schedule: backup.schedule.clone(),
                    next_run: planned
                        .get(&(app.clone(), backup.name.clone(), "backup"))
                        .copied(),
                    last_ok: self
                        .store()
                        .last_good_backup(app, &backup.name)
                        .ok()
                        .flatten(),
                    last_run,
                    failing_copies: copies
                        .iter()
                        .filter(|c| c.name == backup.name && c.verify_error.is_some())
                        .map(|c| format!("{} on {}", c.id, c.destination))
                        .collect(),
                }
            })
            .collect()
    }

    /// When a schedule first fires after the agent starts: now, if a run it should have made
    /// while the agent was down was missed (once, not once per miss); else its next time.
    pub fn first_due(
        &self,
        app: &str,
        name: &str,
        operation: &str,
        schedule: &berth_backup::schedule::Schedule,
        now: jiff::Timestamp,
        tz: &jiff::tz::TimeZone,
    ) -> jiff::Timestamp {
        let last = self
            .store()
            .latest_backup_runs(app)
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.name == name && r.operation == operation)
            .and_then(|r| jiff::Timestamp::from_millisecond(r.started_at).ok());
        let previous = schedule.previous_at_or_before(now, tz);
        match (last, previous) {
            (Some(last), Some(previous)) if last < previous => now,
            _ => schedule
                .next_after(now, tz)
                .unwrap_or(now + jiff::SignedDuration::from_hours(24)),
        }
    }
}

/// Runs scheduled backups and verifications until `stop` resolves.
pub async fn scheduler(
    backups: Arc<Backups>,
    mut changes: tokio::sync::broadcast::Receiver<berth_core::ReleaseChange>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    use berth_backup::schedule::Schedule;
    tokio::pin!(stop);
    let tz = jiff::tz::TimeZone::system();
    // (app, backup, operation, schedule text) -> when it is due next.
    let mut due: std::collections::HashMap<
        (String, String, &'static str, String),
        jiff::Timestamp,
    > = std::collections::HashMap::new();
    loop {
        let now = backups.clock.now();
        let mut wanted = std::collections::HashSet::new();
        for manifest in backups.live_manifests() {
            for backup in manifest.backup.backups.values() {
                for (operation, text) in [
                    ("backup", &backup.schedule),
                    ("verify", &backup.verify_schedule),
                ] {
                    let Some(text) = text else { continue };
                    let Ok(schedule) = Schedule::parse(text) else {
                        continue;
                    };
                    let key = (
                        manifest.app.clone(),
                        backup.name.clone(),
                        operation,
                        text.clone(),
                    );
                    wanted.insert(key.clone());
                    let at = *due.entry(key.clone()).or_insert_with(|| {
                        backups.first_due(
                            &manifest.app,
                            &backup.name,
                            operation,
                            &schedule,
                            now,
                            &tz,
                        )
                    });
                    if at > now {
                        continue;
                    }
                    due.insert(
                        key,
                        schedule
                            .next_after(now, &tz)
                            .unwrap_or(now + jiff::SignedDuration::from_hours(24)),
                    );
                    spawn_scheduled(
                        backups.clone(),
                        manifest.clone(),
                        backup.name.clone(),
                        operation,
                    );
                }
            }
        }
        due.retain(|key, _| wanted.contains(key));
        {
            let mut planned = backups.planned.lock().unwrap_or_else(|p| p.into_inner());
            planned.clear();
            for ((app, name, operation, _), at) in &due {
                planned.insert((app.clone(), name.clone(), operation), at.as_millisecond());
            }
        }
        // Wake for the next due run, and at least every minute to see new deploys.
        let next = due.values().min().copied();
        report.idle(
            next.map(|at| at.as_millisecond()),
            Some(match due.len() {
                0 => "nothing scheduled".to_owned(),
                1 => "1 schedule".to_owned(),
                n => format!("{n} schedules"),
            }),
        );
        let wait = next
            .map(|at| at.duration_since(backups.clock.now()).unsigned_abs())
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_millis(200), Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A new release may bring new schedules; a lagging receiver missed some changes,
            // which the next pass sees anyway (it reads every live manifest).
            change = changes.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = change {
                    return;
                }
            }
            _ = &mut stop => return,
        }
    }
}

pub(super) fn spawn_scheduled(
    backups: Arc<Backups>,
    manifest: Manifest,
    name: String,
    operation: &'static str,
) {
    let job = format!("scheduled {operation} of {}/{name}", manifest.app);
    let workers = backups.workers().clone();
    workers.spawn_job(job, move |report, _stop| async move {
        let app = manifest.app.clone();
        report.running(format!("{operation} {app}/{name}"));
        let _lock = backups
            .locks
            .acquire(
                &app,
                berth_api::LockInfo {
                    operation: format!("scheduled {operation}"),
                    holder: "schedule".to_owned(),
                    since: berth_state::now_ms(),
                },
                |_| {},
            )
            .await;
        tracing::info!(app, backup = name, operation, "scheduled run started");
        let progress = Progress::silent(&app);
        let outcome = match operation {
            "verify" => {
                backups
                    .clone()
                    .verify_backups(
                        manifest,
                        vec![name.clone()],
                        VerifyOptions {
                            id: None,
                            adopt_unsigned: false,
                            identity: None,
                        },
                        "schedule".into(),
                        progress,
                    )
                    .await
            }
            _ => {
                backups
                    .clone()
                    .run_backups(
                        manifest,
                        vec![name.clone()],
                        Reason::Scheduled,
                        "schedule".into(),
                        progress,
                    )
                    .await
            }
        };
        match &outcome.error {
            None => tracing::info!(app, backup = name, operation, "scheduled run succeeded"),
            Some(error) => tracing::error!(
                app,
                backup = name,
                operation,
                error = %error.message,
                "scheduled run failed"
            ),
        }
    });
}
