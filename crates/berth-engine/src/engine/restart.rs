//! Replacing one service's containers with fresh ones of the same release.

use super::*;

impl Engine {
    // ---- restart -----------------------------------------------------------------------

    /// Replaces a service's containers with fresh ones of the same release (zero downtime
    /// for web services), or restarts an accessory in place.
    pub async fn restart_service(
        self: Arc<Self>,
        app: String,
        service: String,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let result = self.restart_steps(&app, &service, &progress).await;
        let live = self.store.live_release(&app).ok().flatten();
        self.audit(
            &actor,
            "restart",
            &format!("{app}/{service}"),
            if result.is_ok() { "ok" } else { "failed" },
            "",
        );
        Outcome {
            ok: result.is_ok(),
            app: app.clone(),
            operation: "restart".into(),
            release: live.as_ref().map(|l| l.number),
            version: live.as_ref().map(|l| l.version.clone()),
            live_release: live.as_ref().map(|l| l.number),
            elapsed_ms: started.elapsed().as_millis() as u64,
            urls: Vec::new(),
            error: result.err().map(|e| e.to_operation()),
            backups: None,
        }
    }

    pub(crate) async fn restart_steps(
        &self,
        app: &str,
        service_name: &str,
        progress: &Progress,
    ) -> Result<(), OpError> {
        self.ensure_not_stopped(app, "restart")?;
        let release = self.store.live_release(app)?.ok_or_else(|| {
            OpError::not_found(format!("app {app} has no live release")).hint("deploy it first")
        })?;
        let manifest = release_manifest(&release)?;
        if let Some(accessory) = manifest.accessories.get(service_name) {
            let containers = self
                .runtime
                .list_containers(&[
                    (names::AGENT, &self.agent_id),
                    (names::APP, app),
                    (names::ROLE, "accessory"),
                    (names::SERVICE, service_name),
                ])
                .await?;
            let container = containers.first().ok_or_else(|| {
                OpError::not_found(format!("accessory {service_name} has no container"))
            })?;
            let step = progress.step(format!("restart accessory {service_name}"));
            self.runtime
                .restart_container(&container.id, accessory.stop_timeout)
                .await?;
            let ctx = self.context_for(&release, &manifest)?;
            return self
                .gate_accessory(&ctx, accessory, &container.id, step)
                .await;
        }
        let service = manifest.services.get(service_name).ok_or_else(|| {
            let known: Vec<&str> = manifest
                .services
                .keys()
                .chain(manifest.accessories.keys())
                .map(String::as_str)
                .collect();
            OpError::not_found(format!("app {app} has no service {service_name}"))
                .hint(format!("its services: {}", known.join(", ")))
        })?;
        progress.set_release(release.number);
        let ctx = self.context_for(&release, &manifest)?;
        self.replace(&ctx, &[service], &release.images, false, progress)
            .await?;
        self.prune_secret_files(app);
        Ok(())
    }
}

#[async_trait::async_trait]
impl berth_backup_jobs::ServiceControl for Engine {
    async fn restart_service(
        &self,
        app: &str,
        service: &str,
        progress: &Progress,
    ) -> Result<(), OpError> {
        self.restart_steps(app, service, progress).await
    }
}
