//! Stopping and starting a whole app: `berth stop` stops its containers and leaves its routes
//! answering 503 ("APP is stopped."), keeping everything else (releases, volumes, secrets,
//! backups); `berth start` brings the same release back. A stopped app stays stopped across
//! agent restarts.

use super::reconcile::ReconcileReport;
use crate::engine::{Engine, LiveApp, release_manifest};
use crate::error::OpError;
use crate::names;
use crate::progress::Progress;
use berth_api::{DestroyRequest, Outcome};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Engine {
    /// Refuses an operation that would start containers of an app its owner stopped: a
    /// deploy from CI must not quietly wake an app someone stopped on purpose.
    pub fn ensure_not_stopped(&self, app: &str, operation: &str) -> Result<(), OpError> {
        if self.store().app(app)?.is_some_and(|a| a.stopped) {
            return Err(OpError::invalid(format!(
                "{app} is stopped (by `berth stop`), so berth will not {operation} it"
            ))
            .hint(format!(
                "run `berth start {app}` first, then {operation} again"
            )));
        }
        Ok(())
    }

    /// `berth start` of an app that runs is a mistake worth naming.
    pub fn ensure_stopped(&self, app: &str) -> Result<(), OpError> {
        if !self.store().app(app)?.is_some_and(|a| a.stopped) {
            return Err(OpError::invalid(format!(
                "{app} is not stopped, so there is nothing to start"
            ))
            .hint("`berth status` shows its services; `berth restart SERVICE` replaces a service's containers"));
        }
        Ok(())
    }

    /// `berth stop APP` (the caller holds the app's lock).
    pub async fn stop_app(
        self: Arc<Self>,
        app: String,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let result = self.stop_steps(&app, &progress).await;
        self.finish_lifecycle(&app, "stop", &actor, started, result, "")
    }

    /// `berth start APP` (the caller holds the app's lock).
    pub async fn start_app(
        self: Arc<Self>,
        app: String,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let result = self.start_steps(&app, &progress).await;
        self.finish_lifecycle(&app, "start", &actor, started, result, "")
    }

    async fn stop_steps(&self, app: &str, progress: &Progress) -> Result<(), OpError> {
        let live = self.store().live_release(app)?.ok_or_else(|| {
            OpError::not_found(format!("app {app} has no live release to stop"))
                .hint("`berth apps` lists the apps")
        })?;
        let manifest = release_manifest(&live)?;
        // The routes first: new requests get the stopped page, never a refused upstream.
        self.store().set_stopped(app, true)?;
        self.install_live(
            app,
            Some(LiveApp {
                manifest: manifest.clone(),
                release: live.number,
                upstreams: BTreeMap::new(),
            }),
        );
        progress.log(format!(
            "{app} answers 503 \"{app} is stopped.\" from now on"
        ));
        let containers = self
            .runtime()
            .list_containers(&[(names::AGENT, self.agent_id()), (names::APP, app)])
            .await?;
        let step = progress.step(format!("stop {} containers", containers.len()));
        for container in &containers {
            let timeout = container
                .labels
                .get(names::SERVICE)
                .and_then(|s| {
                    manifest
                        .services
                        .get(s)
                        .or_else(|| manifest.accessories.get(s))
                })
                .map_or(Duration::from_secs(10), |s| s.stop_timeout);
            if let Err(error) = self.runtime().stop_container(&container.id, timeout).await {
                step.fail(&error.to_string());
                return Err(error.into());
            }
        }
        step.done(Some(
            "volumes, secrets, releases and backups are kept; `berth start` brings it back".into(),
        ));
        Ok(())
    }

    async fn start_steps(&self, app: &str, progress: &Progress) -> Result<(), OpError> {
        self.ensure_stopped(app)?;
        self.store().set_stopped(app, false)?;
        let step = progress.step(format!("start {app}"));
        let mut report = ReconcileReport::default();
        // What a restart of the agent does: stopped containers of the live release started,
        // missing replicas recreated through the health gate, routes rebuilt.
        let result = self.reconcile_app_locked(app, &mut report).await;
        if let Err(error) = &result {
            step.fail(&error.message);
            // Still stopped, as far as anyone can tell: say so to the proxy too.
            let _ = self.store().set_stopped(app, true);
            if let Ok(Some(live)) = self.store().live_release(app)
                && let Ok(manifest) = release_manifest(&live)
            {
                self.install_live(
                    app,
                    Some(LiveApp {
                        manifest,
                        release: live.number,
                        upstreams: BTreeMap::new(),
                    }),
                );
            }
            return result;
        }
        step.done(Some(format!(
            "{} started, {} recreated",
            report.started.len(),
            report.recreated.len()
        )));
        Ok(())
    }

    /// `berth destroy APP` (the caller holds the app's lock): the app's routes, containers,
    /// network and release images go, and berth forgets its releases. Volumes and secrets go
    /// only when asked; the backup catalog and the audit log always stay, so a backup of a
    /// destroyed app can still be listed and restored.
    pub async fn destroy_app(
        self: Arc<Self>,
        app: String,
        request: DestroyRequest,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let result = self.destroy_steps(&app, &request, &actor, &progress).await;
        let detail = format!(
            "volumes {}, secrets {}",
            if request.volumes { "removed" } else { "kept" },
            if request.secrets { "removed" } else { "kept" }
        );
        self.finish_lifecycle(&app, "destroy", &actor, started, result, &detail)
    }

    async fn destroy_steps(
        &self,
        app: &str,
        request: &DestroyRequest,
        actor: &str,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let live = self.store().live_release(app)?;
        let manifest = live.as_ref().map(release_manifest).transpose()?;
        // No backup may run while the app's containers and volumes go (a scheduled one
        // would fail halfway, or hold a volume the destroy must remove).
        let _backup_lock = self
            .backups()
            .locks()
            .acquire(
                app,
                berth_api::LockInfo {
                    operation: "destroy".into(),
                    holder: actor.to_owned(),
                    since: berth_state::now_ms(),
                },
                |holder| {
                    progress.log(format!(
                        "waiting for the {} of {app} started by {}",
                        holder.operation, holder.holder
                    ))
                },
            )
            .await;
        if request.final_backup {
            self.final_backups(app, manifest.as_ref(), actor, progress)
                .await?;
        }
        // From here on the app is stopped as far as anyone can tell: an agent that crashes
        // midway does not start it again, and `berth destroy` run again finishes the job.
        self.store().set_stopped(app, true)?;
        self.install_live(app, None);
        progress.log(format!("{app} is no longer routed"));

        let labels = [(names::AGENT, self.agent_id()), (names::APP, app)];
        let containers = self.runtime().list_containers(&labels).await?;
        let step = progress.step(format!(
            "remove {}",
            crate::progress::counted(containers.len(), "container")
        ));
        let stop_timeout = |service: Option<&String>| {
            service
                .and_then(|s| {
                    let m = manifest.as_ref()?;
                    m.services.get(s).or_else(|| m.accessories.get(s))
                })
                .map_or(Duration::from_secs(10), |s| s.stop_timeout)
        };
        for container in &containers {
            let timeout = stop_timeout(container.labels.get(names::SERVICE));
            let removed = async {
                self.runtime()
                    .stop_container(&container.id, timeout)
                    .await?;
                self.runtime().remove_container(&container.id).await
            };
            if let Err(error) = removed.await {
                step.fail(&error.to_string());
                return Err(error.into());
            }
        }
        step.done(None);

        for network in self.runtime().list_networks(&labels).await? {
            self.runtime().remove_network(&network).await?;
        }
        let _ = std::fs::remove_dir_all(self.secret_files_dir(app));

        let images = self
            .runtime()
            .images_matching(&format!("berth/{app}/*"))
            .await?;
        let prefix = format!("berth/{app}/");
        let mut untagged = 0;
        for image in &images {
            for tag in image.tags.iter().filter(|t| t.starts_with(&prefix)) {
                if let Err(error) = self.runtime().remove_image(tag).await {
                    tracing::debug!(%error, tag, "release image not removed");
                } else {
                    untagged += 1;
                }
            }
        }
        if untagged > 0 {
            progress.log(format!("{untagged} release images untagged"));
        }

        let volumes = self.runtime().list_volumes(&labels).await?;
        if request.volumes {
            let step = progress.step(format!(
                "remove {}",
                crate::progress::counted(volumes.len(), "volume")
            ));
            for volume in &volumes {
                if let Err(error) = self.runtime().remove_volume(volume).await {
                    step.fail(&error.to_string());
                    return Err(error.into());
                }
            }
            step.done(Some(volumes.join(", ")));
        } else if !volumes.is_empty() {
            progress.log(format!(
                "volumes kept: {} (`docker volume rm` them, or destroy with --volumes)",
                volumes.join(", ")
            ));
        }
        if request.secrets {
            let removed = self.store().delete_secrets(app)?;
            progress.log(format!("{removed} secrets removed"));
        } else {
            let kept = self.store().secrets(app)?.len();
            if kept > 0 {
                progress.log(format!(
                    "{kept} secrets kept: a new deploy of {app} uses them again"
                ));
            }
        }
        self.store().delete_app(app)?;
        self.forget_draining(app);
        self.release_changed(app, None);
        Ok(())
    }

    /// The backups a destroy was asked to take first: every backup of the live release, each
    /// of which must succeed, or nothing is destroyed. The caller holds the backup lock.
    async fn final_backups(
        &self,
        app: &str,
        manifest: Option<&berth_manifest::Manifest>,
        actor: &str,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let Some(manifest) = manifest.filter(|m| !m.backup.backups.is_empty()) else {
            return Err(OpError::invalid(format!(
                "{app} has no backups configured, so there is no final backup to take"
            ))
            .hint("destroy without --backup, or take what you need by hand first"));
        };
        for (name, backup) in &manifest.backup.backups {
            let result = self
                .backups()
                .backup_once(
                    manifest,
                    backup,
                    berth_backup::Reason::Manual,
                    &backup.to,
                    actor,
                    progress,
                )
                .await;
            if result.status != berth_api::RunStatus::Ok {
                return Err(OpError::failed(format!(
                    "the final backup {name} did not succeed ({}), so nothing was destroyed",
                    result.error.unwrap_or_else(|| result.status.to_string())
                ))
                .hint(
                    "fix the backup (`berth backup run` shows why), or destroy without --backup",
                ));
            }
        }
        Ok(())
    }

    fn finish_lifecycle(
        &self,
        app: &str,
        operation: &str,
        actor: &str,
        started: Instant,
        result: Result<(), OpError>,
        detail: &str,
    ) -> Outcome {
        self.audit(
            actor,
            operation,
            app,
            if result.is_ok() { "ok" } else { "failed" },
            detail,
        );
        let live = self.store().live_release(app).ok().flatten();
        Outcome {
            ok: result.is_ok(),
            app: app.to_owned(),
            operation: operation.to_owned(),
            release: live.as_ref().map(|l| l.number),
            version: live.as_ref().map(|l| l.version.clone()),
            live_release: live.as_ref().map(|l| l.number),
            elapsed_ms: started.elapsed().as_millis() as u64,
            urls: Vec::new(),
            error: result.err().map(|e| e.to_operation()),
            backups: None,
        }
    }
}
