//! What a backup or restore needs before it runs: the manifest, the storage, the running
//! containers, the host paths of volumes, database access, the prepared source.

use super::*;

impl Backups {
    /// The manifest backup commands act on: the one the caller sent (it must name this
    /// app), else the live release's.
    pub fn backup_manifest(&self, app: &str, sent: Option<Manifest>) -> Result<Manifest, OpError> {
        if let Some(manifest) = sent {
            if manifest.app != app {
                return Err(OpError::invalid(format!(
                    "the manifest is for app {}, not {app}",
                    manifest.app
                )));
            }
            return Ok(manifest);
        }
        let release = self.store().live_release(app)?.ok_or_else(|| {
            OpError::not_found(format!(
                "app {app} has no live release and no manifest was given"
            ))
            .hint("run the command where berth.toml is, or pass --file")
        })?;
        release_manifest(&release)
    }

    pub fn backup_named<'m>(manifest: &'m Manifest, name: &str) -> Result<&'m Backup, OpError> {
        manifest.backup.backups.get(name).ok_or_else(|| {
            let known: Vec<&str> = manifest
                .backup
                .backups
                .keys()
                .map(String::as_str)
                .collect();
            OpError::not_found(format!("app {} has no backup named {name}", manifest.app)).hint(
                if known.is_empty() {
                    "define one in berth.toml, such as [backups.db] with source = { sqlite = { service = \"web\", path = \"/data/app.db\" } }".to_owned()
                } else {
                    format!("its backups: {}", known.join(", "))
                },
            )
        })
    }

    /// The names a command is about: the given ones (each must exist), or all.
    pub fn backup_names(manifest: &Manifest, names: &[String]) -> Result<Vec<String>, OpError> {
        if names.is_empty() {
            if manifest.backup.backups.is_empty() {
                return Err(OpError::not_found(format!(
                    "app {} defines no backups",
                    manifest.app
                ))
                .hint("add one to berth.toml, such as [backups.db] with source = { sqlite = { service = \"web\", path = \"/data/app.db\" } }"));
            }
            return Ok(manifest.backup.backups.keys().cloned().collect());
        }
        for name in names {
            Self::backup_named(manifest, name)?;
        }
        Ok(names.to_vec())
    }

    /// The agent's own backup key, created on first use.
    pub(crate) fn backup_key(&self) -> Result<Identities, OpError> {
        Ok(berth_backup::keys::load_or_create_agent_key(
            &self.data_dir.join("backup.key"),
        )?)
    }

    pub(super) fn secret_value(&self, app: &str, name: &str) -> Result<String, OpError> {
        let ciphertext = self.store().secret_ciphertext(app, name)?.ok_or_else(|| {
            OpError::invalid(format!("secret {name} is not set for app {app}"))
                .hint(format!("berth secrets set {name} --app {app}"))
        })?;
        Ok(self.secrets().open_value(name, &ciphertext)?)
    }

    pub(crate) fn destination(
        &self,
        manifest: &Manifest,
        storage: &str,
    ) -> Result<Destination, OpError> {
        let resolved = match manifest.backup.storage.get(storage) {
            Some(s) => s.clone(),
            None if storage == LOCAL_STORAGE => Storage::Directory(None),
            None => {
                return Err(OpError::invalid(format!(
                    "app {} has no storage named {storage}",
                    manifest.app
                )));
            }
        };
        match resolved {
            Storage::Directory(None) => {
                Ok(Destination::local(storage, self.data_dir.join("backups")))
            }
            Storage::Directory(Some(path)) => Ok(Destination::local(storage, path)),
            Storage::S3(s3) => {
                let key = self.secret_value(&manifest.app, &s3.access_key_id_secret)?;
                let secret = self.secret_value(&manifest.app, &s3.secret_access_key_secret)?;
                let settings = S3Settings {
                    bucket: s3.bucket,
                    endpoint: s3.endpoint,
                    region: s3.region,
                    path_style: s3.path_style,
                    prefix: s3.prefix,
                    access_key_id: key,
                    secret_access_key: secret,
                    key_secret_names: (s3.access_key_id_secret, s3.secret_access_key_secret),
                    part_size: usize::try_from(s3.part_size).unwrap_or(16 << 20),
                    concurrency: 4,
                    unfinished_uploads: Some(self.data_dir.join("unfinished-uploads")),
                };
                Ok(Destination::s3(storage, settings)?)
            }
        }
    }

    /// A runner writing to `storages`, encrypting to the agent's key and the manifest's
    /// recipients, reporting into `progress` under `step`.
    pub(crate) fn runner(
        &self,
        manifest: &Manifest,
        storages: &[String],
        extra_identity: Option<&Identities>,
        events: EventSink,
    ) -> Result<Runner, OpError> {
        let key = self.backup_key()?;
        let mut recipients = key.recipients();
        for text in &manifest.backup.recipients {
            recipients.push(Recipient::parse(text)?);
        }
        let mut identities = key;
        if let Some(extra) = extra_identity {
            identities.extend(extra);
        }
        let mut destinations = Vec::new();
        for storage in storages {
            destinations.push(Arc::new(self.destination(manifest, storage)?));
        }
        Ok(Runner {
            destinations,
            recipients,
            identities,
            compression: Compression::default(),
            clock: self.clock.clone(),
            time_zone: jiff::tz::TimeZone::system(),
            events,
        })
    }

    /// Running containers of a service or accessory: (id, name).
    pub(crate) async fn running_containers(
        &self,
        manifest: &Manifest,
        service: &str,
    ) -> Result<Vec<(String, String)>, OpError> {
        let accessory = manifest.accessories.contains_key(service);
        self.service_containers(&manifest.app, service, accessory)
            .await
    }

    pub(super) async fn place_in(
        &self,
        manifest: &Manifest,
        service: &str,
    ) -> Result<Place, OpError> {
        let containers = self.running_containers(manifest, service).await?;
        let (id, name) = containers.into_iter().next().ok_or_else(|| {
            OpError::failed(format!(
                "{service} has no running container to run the backup in"
            ))
            .hint("deploy the app first (berth deploy), or check `berth status`")
        })?;
        Ok(Place::Container {
            runtime: self.runtime().clone(),
            id,
            name,
        })
    }

    /// Where a path inside a service's container lives on the host: the mount's host
    /// directory (its volume's data, created if it does not exist yet, as on a new server),
    /// canonical, since berth trusts it as the operator or Docker named it; and the path below
    /// it, which the container shapes and so is never followed through a link.
    pub(crate) async fn host_path(
        &self,
        manifest: &Manifest,
        service: &str,
        path: &str,
        create: bool,
    ) -> Result<(PathBuf, PathBuf), OpError> {
        let found = manifest
            .services
            .get(service)
            .or_else(|| manifest.accessories.get(service))
            .ok_or_else(|| OpError::invalid(format!("no service or accessory {service}")))?;
        let mount = found
            .volumes
            .iter()
            .filter(|v| Path::new(path).starts_with(&v.target))
            .max_by_key(|v| v.target.len())
            .ok_or_else(|| OpError::invalid(format!("{path} is not on a volume of {service}")))?;
        let base = match &mount.source {
            VolumeSource::Bind(host) => host.clone(),
            VolumeSource::Named(name) => self.volume_dir(&manifest.app, name, create).await?,
        };
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        let relative = Path::new(path)
            .strip_prefix(&mount.target)
            .unwrap_or(Path::new(""));
        Ok((base, relative.to_owned()))
    }

    pub(crate) async fn volume_dir(
        &self,
        app: &str,
        name: &str,
        create: bool,
    ) -> Result<PathBuf, OpError> {
        let docker_name = names::volume(app, name);
        if let Some(dir) = self.runtime().volume_mountpoint(&docker_name).await? {
            return Ok(dir);
        }
        if !create {
            return Err(OpError::failed(format!(
                "volume {docker_name} does not exist: there is nothing to back up yet"
            ))
            .hint("deploy the app first (berth deploy)"));
        }
        let labels = names::base_labels(&self.agent_id, app);
        self.runtime().ensure_volume(&docker_name, &labels).await?;
        self.runtime()
            .volume_mountpoint(&docker_name)
            .await?
            .ok_or_else(|| OpError::failed(format!("volume {docker_name} vanished")))
    }

    /// Where a database's tools run, with their environment.
    pub(crate) async fn database_access(
        &self,
        manifest: &Manifest,
        db: &Database,
        postgres: bool,
    ) -> Result<DatabaseAccess, OpError> {
        let password = match &db.password_secret {
            Some(name) => Some(self.secret_value(&manifest.app, name)?),
            None => None,
        };
        let mut env = Vec::new();
        let mut host_args = Vec::new();
        let place = match &db.location {
            DatabaseLocation::Service(service) => self.place_in(manifest, service).await?,
            DatabaseLocation::Host { host, port } => {
                if postgres {
                    env.push(("PGHOST".to_owned(), host.clone()));
                    env.push(("PGPORT".to_owned(), port.to_string()));
                    for (key, var) in [
                        ("sslmode", "PGSSLMODE"),
                        ("sslrootcert", "PGSSLROOTCERT"),
                        ("connect_timeout", "PGCONNECT_TIMEOUT"),
                        ("application_name", "PGAPPNAME"),
                    ] {
                        if let Some(value) = db.options.get(key) {
                            env.push((var.to_owned(), value.clone()));
                        }
                    }
                } else {
                    host_args = vec![
                        "--host".to_owned(),
                        host.clone(),
                        "--port".to_owned(),
                        port.to_string(),
                        "--protocol=tcp".to_owned(),
                    ];
                }
                Place::Host
            }
        };
        if let Some(password) = password {
            env.push((
                if postgres { "PGPASSWORD" } else { "MYSQL_PWD" }.to_owned(),
                password,
            ));
        }
        Ok(DatabaseAccess {
            place,
            env,
            host_args,
        })
    }

    /// The built-in check of a kind of content, unpacking into the agent's scratch directory.
    pub(crate) fn builtin_check(&self, kind: ContentKind) -> Box<dyn Consumer> {
        Box::new(BuiltinCheck {
            kind,
            scratch: self.data_dir.join("tmp"),
        })
    }
}

/// A database source resolved: where its tools run and with which environment.
pub(crate) struct DatabaseAccess {
    pub place: Place,
    pub env: Vec<(String, String)>,
    pub host_args: Vec<String>,
}
