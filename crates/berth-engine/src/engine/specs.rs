//! What a container of a service looks like: labels, environment, mounts, secret files.

use super::*;

impl Engine {
    // ---- container specs ---------------------------------------------------------------

    pub(crate) fn container_spec(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
        name: &str,
        replica: u32,
        secret_owner: Option<u32>,
    ) -> Result<ContainerSpec, OpError> {
        let mut labels = names::base_labels(&self.agent_id, ctx.app);
        labels.insert(names::SERVICE.into(), service.name.clone());
        labels.insert(names::ROLE.into(), service.role().as_str().into());
        let mut env: Vec<String> = service
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("BERTH_APP={}", ctx.app));
        env.push(format!("BERTH_SERVICE={}", service.name));
        if !service.accessory {
            labels.insert(names::RELEASE.into(), ctx.release.to_string());
            labels.insert(names::REPLICA.into(), replica.to_string());
            env.push(format!("BERTH_RELEASE={}", ctx.release));
            env.push(format!("BERTH_VERSION={}", ctx.version));
        }
        let mut mounts: Vec<MountSpec> = service
            .volumes
            .iter()
            .map(|v| match &v.source {
                VolumeSource::Named(volume) => MountSpec {
                    kind: MountKind::Volume,
                    source: names::volume(ctx.app, volume),
                    target: v.target.clone(),
                    read_only: v.read_only,
                },
                VolumeSource::Bind(path) => MountSpec {
                    kind: MountKind::Bind,
                    source: path.display().to_string(),
                    target: v.target.clone(),
                    read_only: v.read_only,
                },
            })
            .collect();
        for secret in &service.secrets {
            let value = ctx
                .secret_values
                .get(&secret.name)
                .ok_or_else(|| OpError::invalid(format!("secret {} is not set", secret.name)))?;
            match secret.delivery {
                SecretDelivery::Env => env.push(format!("{}={value}", secret.name)),
                SecretDelivery::File => {
                    let path =
                        self.write_secret_file(ctx, service, &secret.name, value, secret_owner)?;
                    mounts.push(MountSpec {
                        kind: MountKind::Bind,
                        source: path.display().to_string(),
                        target: format!("/run/secrets/{}", secret.name),
                        read_only: true,
                    });
                }
            }
        }
        let log_options = if matches!(service.logging.driver.as_str(), "json-file" | "local") {
            BTreeMap::from([
                ("max-size".to_owned(), service.logging.max_size.to_string()),
                ("max-file".to_owned(), service.logging.max_files.to_string()),
            ])
        } else {
            BTreeMap::new()
        };
        Ok(ContainerSpec {
            name: name.to_owned(),
            image: image.to_owned(),
            command: service.command.clone(),
            env,
            labels,
            network: Some(NetworkAttachment {
                network: names::network(ctx.app),
                aliases: vec![service.name.clone()],
            }),
            mounts,
            restart: Some(service.restart.as_docker().to_owned()),
            memory: service.memory,
            cpus: service.cpus,
            log: LogSpec {
                driver: service.logging.driver.clone(),
                options: log_options,
            },
            gpus: service.gpus.map(|g| match g {
                berth_manifest::Gpus::All => GpuRequest::All,
                berth_manifest::Gpus::Count(n) => GpuRequest::Count(n),
            }),
            init: service.init,
            stop_timeout: Some(service.stop_timeout),
            publish: service
                .publish
                .iter()
                .map(|p| PublishedPort {
                    host_ip: p.host_ip.clone(),
                    host_port: p.host_port,
                    container_port: p.container_port,
                })
                .collect(),
        })
    }

    pub(crate) fn secret_files_dir(&self, app: &str) -> PathBuf {
        self.secret_files_root.join(app)
    }

    /// The directory of one release's (or an accessory's) secret files.
    pub(crate) fn secret_scope_dir(&self, ctx: &ReleaseContext<'_>, service: &Service) -> PathBuf {
        let scope = if service.accessory {
            format!("accessory-{}", service.name)
        } else {
            format!("r{}-{}", ctx.release, service.name)
        };
        self.secret_files_dir(ctx.app).join(scope)
    }

    /// Writes a file secret for a read-only bind mount at `/run/secrets/NAME`: mode 0400,
    /// owned by `owner` (the user the image runs as), in a directory only the agent can
    /// enter. An agent that is not root cannot give a file away: the file is then its own,
    /// 0400 when the container runs as the agent's user and 0444 otherwise.
    pub(crate) fn write_secret_file(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        name: &str,
        value: &str,
        owner: Option<u32>,
    ) -> Result<PathBuf, OpError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.secret_scope_dir(ctx, service);
        let io = |e: std::io::Error| {
            OpError::failed(format!(
                "cannot write secret file {name} under {}: {e}",
                dir.display()
            ))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        let path = dir.join(name);
        let me = rustix::process::geteuid().as_raw();
        let owner = owner.unwrap_or(0);
        let (chown, mode) = if me == 0 {
            (Some((owner, 0)), 0o400)
        } else if owner == me {
            (None, 0o400)
        } else {
            (None, 0o444)
        };
        // A new file renamed into place: a reader never sees half a value, and the old file
        // being read-only is no obstacle.
        berth_fs::Dir::open(&dir)
            .and_then(|d| {
                d.replace(std::ffi::OsStr::new(name), chown, mode, |file| {
                    std::io::Write::write_all(file, value.as_bytes())
                })
            })
            .map_err(|e| OpError::failed(format!("cannot write secret file {name}: {e}")))?;
        Ok(path)
    }

    /// Removes secret files of releases that no longer have containers.
    pub(crate) fn prune_secret_files(&self, app: &str) {
        let Ok(instances) = self.store.instances(app) else {
            return;
        };
        let in_use: Vec<String> = instances
            .iter()
            .map(|i| format!("r{}-{}", i.release, i.service))
            .collect();
        let Ok(entries) = std::fs::read_dir(self.secret_files_dir(app)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('r') && !in_use.contains(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// The release context for an existing release (restart, reconcile).
    pub(crate) fn context_for<'a>(
        &self,
        release: &'a Release,
        manifest: &'a Manifest,
    ) -> Result<ReleaseContext<'a>, OpError> {
        Ok(ReleaseContext {
            app: &release.app,
            release: release.number,
            version: &release.version,
            manifest,
            secret_values: self.secret_values(manifest)?,
            wait_drain: false,
        })
    }
}
