//! Stopping and starting a whole app: `berth stop` stops its containers and leaves its routes
//! answering 503 ("APP is stopped."), keeping everything else (releases, volumes, secrets,
//! backups); `berth start` brings the same release back. A stopped app stays stopped across
//! agent restarts.

use crate::engine::{Engine, LiveApp, release_manifest};
use crate::error::OpError;
use crate::names;
use crate::progress::Progress;
use crate::reconcile::ReconcileReport;
use berth_api::Outcome;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Engine {
    /// Refuses an operation that would start containers of an app its owner stopped: a
    /// deploy from CI must not quietly wake an app someone stopped on purpose.
    pub(crate) fn ensure_not_stopped(&self, app: &str, operation: &str) -> Result<(), OpError> {
        if self.store.app(app)?.is_some_and(|a| a.stopped) {
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
    pub(crate) fn ensure_stopped(&self, app: &str) -> Result<(), OpError> {
        if !self.store.app(app)?.is_some_and(|a| a.stopped) {
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
        self.finish_lifecycle(&app, "stop", &actor, started, result)
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
        self.finish_lifecycle(&app, "start", &actor, started, result)
    }

    async fn stop_steps(&self, app: &str, progress: &Progress) -> Result<(), OpError> {
        let live = self.store.live_release(app)?.ok_or_else(|| {
            OpError::not_found(format!("app {app} has no live release to stop"))
                .hint("`berth apps` lists the apps")
        })?;
        let manifest = release_manifest(&live)?;
        // The routes first: new requests get the stopped page, never a refused upstream.
        self.store.set_stopped(app, true)?;
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
            .runtime
            .list_containers(&[(names::AGENT, &self.agent_id), (names::APP, app)])
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
            if let Err(error) = self.runtime.stop_container(&container.id, timeout).await {
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
        self.store.set_stopped(app, false)?;
        let step = progress.step(format!("start {app}"));
        let mut report = ReconcileReport::default();
        // What a restart of the agent does: stopped containers of the live release started,
        // missing replicas recreated through the health gate, routes rebuilt.
        let result = self.reconcile_app_locked(app, &mut report).await;
        if let Err(error) = &result {
            step.fail(&error.message);
            // Still stopped, as far as anyone can tell: say so to the proxy too.
            let _ = self.store.set_stopped(app, true);
            if let Ok(Some(live)) = self.store.live_release(app)
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

    fn finish_lifecycle(
        &self,
        app: &str,
        operation: &str,
        actor: &str,
        started: Instant,
        result: Result<(), OpError>,
    ) -> Outcome {
        self.audit(
            actor,
            operation,
            app,
            if result.is_ok() { "ok" } else { "failed" },
            "",
        );
        let live = self.store.live_release(app).ok().flatten();
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
