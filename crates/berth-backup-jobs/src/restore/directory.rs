//! Putting a directory back: unpacked beside it, then swapped in while its users are stopped.

use super::*;

impl Backups {
    /// Replaces a directory's contents with a tar backup: unpacked next to it first (so a
    /// bad archive changes nothing), then swapped in with the services using it stopped.
    pub(crate) async fn restore_directory(
        &self,
        job: &mut LiveRestore<'_>,
        dir: &Path,
        users: &[String],
    ) -> Result<(), OpError> {
        let plan = job.plan;
        let progress = job.progress;
        let (parent, name) = berth_fs::split(dir)?;
        let parent = berth_fs::Dir::open(parent)?;
        let target = parent.subdirectory(name, false)?;
        let entries = target.names()?.len();
        let live = (entries > 0).then(|| format!("{entries} entries"));
        job.guard(live).await?;
        let staged = job.stage().await?;
        let step = progress.step("unpack the archive");
        // Next to the live data (the same file system, so it can be moved in), in a new
        // directory only the agent can enter.
        let journal = crate::staging::Journal::new(&self.data_dir);
        let mut recorded = None;
        let unpacked = match parent.create_temp_dir(name) {
            Ok((staging, staging_name)) => {
                recorded = Some(journal.record(&plan.manifest.app, parent.path(), &staging_name));
                let done =
                    unpack_into(&staged, &parent, &staging, &staging_name, plan.keep_setuid).await;
                if done.is_err() {
                    let _ = parent.remove_any(&staging_name);
                }
                done.map(|info| (info, staging, staging_name))
            }
            Err(error) => Err(error.into()),
        };
        let _ = std::fs::remove_file(&staged);
        let (info, staging, staging_name) = match step.finish(unpacked) {
            Ok(done) => done,
            Err(error) => {
                if let Some(recorded) = recorded {
                    journal.forget(recorded);
                }
                return Err(error);
            }
        };
        job.did(format!("unpacked {info} next to the live data"));
        let outcome = self
            .with_services_stopped(&plan.manifest, users, job.actions, progress, async {
                if let Some(recorded) = &recorded {
                    journal.mark_swapping(recorded);
                }
                swap_contents(&staging, &target)?;
                Ok(format!("replaced the contents of {}", dir.display()))
            })
            .await;
        if parent.remove_any(&staging_name).is_ok()
            && let Some(recorded) = recorded
        {
            journal.forget(recorded);
        }
        outcome
    }

    /// Stops the running containers of `services`, runs `change`, then brings the services
    /// back (accessories restarted, services replaced through the health gate), whatever
    /// `change` returned.
    pub(crate) async fn with_services_stopped<F>(
        &self,
        manifest: &Manifest,
        services: &[String],
        actions: &mut Actions,
        progress: &Progress,
        change: F,
    ) -> Result<(), OpError>
    where
        F: std::future::Future<Output = Result<String, OpError>>,
    {
        let mut stopped = Vec::new();
        for service in services {
            let containers = self.running_containers(manifest, service).await?;
            if containers.is_empty() {
                continue;
            }
            let timeout = manifest
                .services
                .get(service)
                .or_else(|| manifest.accessories.get(service))
                .map(|s| s.stop_timeout)
                .unwrap_or(Duration::from_secs(10));
            let step = progress.step(format!("stop {service}"));
            for (id, _) in &containers {
                if let Err(e) = self.runtime().stop_container(id, timeout).await {
                    step.fail(&e.to_string());
                    // The stop failed, so that is the error to report; what could not be
                    // brought back is listed in the actions.
                    let _ = self.bring_back(&stopped, actions, progress).await;
                    return Err(e.into());
                }
            }
            step.done(Some(berth_core::progress::counted(
                containers.len(),
                "container",
            )));
            actions.push(progress, format!("stopped {service}"));
            stopped.push(service.clone());
        }
        let changed = change.await;
        if let Ok(what) = &changed {
            actions.push(progress, what.clone());
        }
        let restarted = self.bring_back(&stopped, actions, progress).await;
        changed?;
        restarted
    }

    pub(super) async fn bring_back(
        &self,
        services: &[String],
        actions: &mut Actions,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let mut first_error = None;
        for service in services {
            let app = progress.app().to_owned();
            match self.restart_steps(&app, service, progress).await {
                Ok(()) => actions.push(progress, format!("started {service} again")),
                Err(error) => {
                    actions.push(
                        progress,
                        format!("could not start {service} again: {}", error.message),
                    );
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
