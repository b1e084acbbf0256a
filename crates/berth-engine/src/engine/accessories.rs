//! Accessories (recreated only when their configuration changes) and release commands.

use super::*;

impl Engine {
    // ---- accessories -------------------------------------------------------------------

    pub(super) async fn ensure_accessory(
        &self,
        ctx: &ReleaseContext<'_>,
        accessory: &Service,
        inputs: &BuildInputs,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let image = match &accessory.source {
            ImageSource::Image { reference, pull } => {
                self.ensure_image(ctx, accessory, reference, *pull, progress)
                    .await?
            }
            ImageSource::Build(_) => self.build(ctx, accessory, inputs, progress).await?,
        };
        // What the accessory is made of, secret values included: keyed with a secret of the
        // agent's, because labels are public to whoever can `docker inspect`, and a plain hash
        // of a weak password could be guessed offline.
        let material = {
            let mut material = accessory.fingerprint().into_bytes();
            material.extend_from_slice(image.as_bytes());
            for secret in &accessory.secrets {
                for part in [
                    secret.name.as_bytes(),
                    ctx.secret_values
                        .get(&secret.name)
                        .map(String::as_bytes)
                        .unwrap_or_default(),
                ] {
                    material.extend_from_slice(&(part.len() as u64).to_be_bytes());
                    material.extend_from_slice(part);
                }
            }
            material
        };
        let fingerprint = self.secrets.label_digest(&material);
        // Accessories labelled by an older berth (a plain SHA-256) are unchanged too: they are
        // not recreated just for a new way of labelling.
        let legacy = {
            use sha2::{Digest, Sha256};
            let mut hasher = Sha256::new();
            hasher.update(accessory.fingerprint());
            hasher.update(&image);
            for secret in &accessory.secrets {
                hasher.update(secret.name.as_bytes());
                hasher.update(
                    ctx.secret_values
                        .get(&secret.name)
                        .map(String::as_bytes)
                        .unwrap_or_default(),
                );
            }
            hex::encode(&hasher.finalize()[..12])
        };
        let existing = self
            .runtime
            .list_containers(&[
                (names::AGENT, &self.agent_id),
                (names::APP, ctx.app),
                (names::ROLE, "accessory"),
                (names::SERVICE, &accessory.name),
            ])
            .await?;
        let current = existing.iter().find(|c| {
            c.labels
                .get(names::CONFIG)
                .is_some_and(|label| *label == fingerprint || *label == legacy)
        });
        if let Some(current) = current {
            if current.state == berth_runtime::ContainerState::Running {
                progress.log(format!("accessory {} is unchanged", accessory.name));
                return Ok(());
            }
            let step = progress.step(format!("start accessory {}", accessory.name));
            self.runtime.start_container(&current.id).await?;
            return self.gate_accessory(ctx, accessory, &current.id, step).await;
        }
        let verb = if existing.is_empty() {
            "start"
        } else {
            "recreate"
        };
        let step = progress.step(format!("{verb} accessory {}", accessory.name));
        for old in &existing {
            // Accessories own their data volumes: the old container must stop before the new
            // one opens the same files.
            self.runtime
                .stop_container(&old.id, accessory.stop_timeout)
                .await?;
            self.runtime.remove_container(&old.id).await?;
        }
        let name = names::accessory_container(ctx.app, &accessory.name);
        // A container with this name that berth does not track (left by a crash) is in the way.
        self.runtime.remove_container(&name).await?;
        let owner = self.secret_owner(accessory, &image).await?;
        let mut spec = self.container_spec(ctx, accessory, &image, &name, 0, owner)?;
        spec.labels.insert(names::CONFIG.into(), fingerprint);
        let id = match self.runtime.create_container(&spec).await {
            Ok(id) => id,
            Err(e) => {
                let error = OpError::from(e);
                step.fail(&error.message);
                return Err(error);
            }
        };
        self.runtime.start_container(&id).await?;
        self.gate_accessory(ctx, accessory, &id, step).await
    }

    /// Accessories hold data, so a deploy never removes one that left the manifest; it says
    /// so instead, so the container is not forgotten running.
    pub(super) async fn note_removed_accessories(
        &self,
        ctx: &ReleaseContext<'_>,
        manifest: &Manifest,
        progress: &Progress,
    ) {
        let Ok(containers) = self
            .runtime
            .list_containers(&[
                (names::AGENT, &self.agent_id),
                (names::APP, ctx.app),
                (names::ROLE, "accessory"),
            ])
            .await
        else {
            return;
        };
        for container in containers {
            if let Some(service) = container.labels.get(names::SERVICE)
                && !manifest.accessories.contains_key(service)
            {
                progress.log(format!(
                    "accessory {service} is no longer in the manifest: berth leaves its \
                     container {} and its volumes alone; remove them once their data is safe",
                    container.name
                ));
            }
        }
    }

    pub(super) async fn gate_accessory(
        &self,
        ctx: &ReleaseContext<'_>,
        accessory: &Service,
        id: &str,
        step: crate::progress::Step,
    ) -> Result<(), OpError> {
        match health::gate(
            self.runtime.as_ref(),
            id,
            &names::network(ctx.app),
            accessory,
            "localhost",
        )
        .await
        {
            Ok(_) => {
                step.done(None);
                Ok(())
            }
            Err(failure) => {
                let tail = self.runtime.log_tail(id, LOG_TAIL).await;
                let error = OpError::failed(format!(
                    "accessory {} did not become healthy: {}",
                    accessory.name,
                    failure.describe()
                ))
                .logs(format!("accessory {}", accessory.name), tail);
                step.fail(&error.message);
                Err(error)
            }
        }
    }

    // ---- release command ---------------------------------------------------------------

    pub(super) async fn run_release_command(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let Some(command) = &service.release_command else {
            return Ok(());
        };
        let step = progress.step(format!(
            "release command ({}): {}",
            service.name,
            command.join(" ")
        ));
        let name = names::release_command_container(ctx.app, &service.name, ctx.release);
        self.runtime.remove_container(&name).await?;
        let owner = self.secret_owner(service, image).await?;
        let mut spec = self.container_spec(ctx, service, image, &name, 0, owner)?;
        spec.command = Some(command.clone());
        spec.restart = None;
        spec.labels
            .insert(names::ROLE.into(), names::ROLE_RELEASE_COMMAND.into());
        if let Some(network) = &mut spec.network {
            network.aliases.clear();
        }
        let id = self.runtime.create_container(&spec).await?;
        let result = async {
            self.runtime.start_container(&id).await?;
            let timeout = ctx.manifest.deploy.release_timeout;
            match tokio::time::timeout(timeout, self.runtime.wait_container(&id)).await {
                Ok(Ok(0)) => Ok(()),
                Ok(Ok(code)) => Err(OpError::failed(format!(
                    "the release command `{}` of service {} exited with status {code}",
                    command.join(" "),
                    service.name
                ))
                .hint("fix the command (often a migration) and deploy again")
                .logs(
                    "the release command",
                    self.runtime.log_tail(&id, LOG_TAIL).await,
                )),
                Ok(Err(e)) => Err(OpError::from(e)),
                Err(_) => Err(OpError::failed(format!(
                    "the release command `{}` did not finish within {}",
                    command.join(" "),
                    berth_manifest::units::format_duration(timeout)
                ))
                .hint("raise `deploy.release_timeout` if it needs longer")
                .logs(
                    "the release command",
                    self.runtime.log_tail(&id, LOG_TAIL).await,
                )),
            }
        }
        .await;
        if let Err(e) = self.runtime.remove_container(&id).await {
            tracing::warn!(error = %e, container = %name, "cannot remove the release command's container");
        }
        match result {
            Ok(()) => {
                step.done(None);
                Ok(())
            }
            Err(error) => {
                step.fail(&error.message);
                Err(error)
            }
        }
    }

    /// The app's network, made with a /24 of the range berth manages (see `subnets`): a
    /// stock engine's own pools hold only 31 networks.
    pub(super) async fn ensure_app_network(
        &self,
        network: &str,
        labels: &berth_runtime::Labels,
    ) -> Result<(), OpError> {
        if self.runtime.network_exists(network).await? {
            return Ok(());
        }
        // This agent's deploys choose one at a time; other agents on the engine may still
        // race for the same subnet, so a refused one is retried at a random free place.
        let _choosing = self.choosing_subnet.lock().await;
        let mut attempts = 0;
        loop {
            let mut taken = crate::subnets::host_routes();
            taken.extend(
                self.runtime
                    .network_subnets()
                    .await?
                    .iter()
                    .filter_map(|s| s.parse::<crate::subnets::Ipv4Net>().ok()),
            );
            let pick = (attempts > 0).then(rand::random::<u16>).map(usize::from);
            let Some(subnet) = crate::subnets::choose(self.app_subnets, &taken, pick) else {
                return Err(OpError::failed(format!(
                    "every /24 of {} is in use by a Docker network or a host route",
                    self.app_subnets
                ))
                .hint("start the agent with a larger or another free range: --app-subnets 10.214.0.0/16"));
            };
            match self
                .runtime
                .ensure_network(network, labels, Some(&subnet.to_string()))
                .await
            {
                Ok(_) => return Ok(()),
                // Another app took the same subnet a moment ago: look again.
                Err(berth_runtime::RuntimeError::Api { message, .. })
                    if message.contains("overlap") && attempts < 20 =>
                {
                    attempts += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}
