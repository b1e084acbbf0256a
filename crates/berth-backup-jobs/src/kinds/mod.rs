//! One implementation per kind of backup source, each in its own file: how to take it, how to
//! check what was stored, which services use its live data, and how to put it back. Adding a
//! kind (MongoDB, Redis) is one new file here, one arm in [`kind_of`], and its manifest syntax.

use crate::*;

mod berth_state;
mod command;
mod directory;
mod mysql;
mod postgres;
mod sqlite;
mod volume;

pub(crate) use sqlite::check_sqlite;

/// What every kind of backup source knows about itself.
#[async_trait]
pub(crate) trait SourceKind: Send + Sync {
    /// What the stored content is; it picks the built-in check.
    fn content(&self) -> ContentKind;

    /// The services and accessories using the live data, stopped while it is put back.
    fn users(&self, _manifest: &Manifest) -> Vec<String> {
        Vec::new()
    }

    /// What to read for a backup, and how to check what was stored.
    async fn prepare(&self, backups: &Backups, manifest: &Manifest) -> Result<Prepared, OpError>;

    /// The check of stored content alone, for verification (which needs less than a backup:
    /// a volume need not exist, a paused service need not run).
    async fn checker(
        &self,
        backups: &Backups,
        _manifest: &Manifest,
    ) -> Result<Box<dyn Consumer>, OpError> {
        Ok(backups.builtin_check(self.content()))
    }

    /// Puts a backup back over the live data: finds it, refuses over live data without
    /// `--force` (taking the safety backup with it), stops and starts its users around the
    /// change.
    async fn restore(&self, backups: &Backups, job: &mut dyn Restoring) -> Result<(), OpError>;
}

/// What a kind's `restore` asks of the restore that runs it (`restore::LiveRestore`), so the
/// kinds depend on this interface and not on the restore that calls them.
#[async_trait]
pub(crate) trait Restoring: Send {
    fn manifest(&self) -> &Manifest;
    fn progress(&self) -> &Progress;
    /// The name of the backup being restored.
    fn backup_name(&self) -> &str;
    /// The id of the backup being restored.
    fn backup_id(&self) -> &str;
    /// The safety backup taken of the live data, once `guard` took one.
    fn safety_backup(&self) -> Option<&str>;
    /// What is restored into, for the result.
    fn set_target(&mut self, target: String);
    /// Records what was done, for the result and the client.
    fn did(&mut self, text: String);
    /// Refuses to go on over live data without `--force`; with it, takes the safety backup.
    async fn guard(&mut self, live: Option<String>) -> Result<(), OpError>;
    /// Reads the backup back whole into a scratch file only the agent writes; returns it.
    async fn stage(&mut self) -> Result<PathBuf, OpError>;
    /// Stops the running containers of `services`, runs `change`, then starts them again
    /// (accessories restarted, services replaced through the health gate) whatever it returned.
    async fn with_services_stopped(
        &mut self,
        services: &[String],
        change: Change<'_>,
    ) -> Result<(), OpError>;
    /// Replaces a directory's contents with the backup's archive, its users stopped meanwhile.
    async fn restore_directory(&mut self, dir: &Path, users: &[String]) -> Result<(), OpError>;
}

/// A change made while services are stopped; it says what it did.
pub(crate) type Change<'a> = Pin<Box<dyn Future<Output = Result<String, OpError>> + Send + 'a>>;

/// The one place that maps a manifest's source to its implementation.
pub(crate) fn kind_of(backup: &Backup) -> Box<dyn SourceKind + '_> {
    match &backup.source {
        BackupSource::Sqlite { service, path } => Box::new(sqlite::SqliteDatabase {
            service: service.as_deref(),
            path,
        }),
        BackupSource::Postgres(db) => Box::new(postgres::PostgresDatabase { db }),
        BackupSource::Mysql(db) => Box::new(mysql::MysqlDatabase { db }),
        BackupSource::Volume {
            volume,
            pause,
            service,
            before,
            after,
        } => Box::new(volume::NamedVolume {
            volume,
            pause: *pause,
            service: service.as_deref(),
            before: before.as_deref(),
            after: after.as_deref(),
        }),
        BackupSource::Directory { path } => Box::new(directory::HostDirectory { path }),
        BackupSource::Command {
            service,
            dump,
            restore,
        } => Box::new(command::DumpCommand {
            service,
            dump,
            restore: restore.as_deref(),
        }),
        BackupSource::Berth => Box::new(berth_state::BerthData),
    }
}

/// A backup's source with its check, and notes for the result.
pub(crate) struct Prepared {
    pub source: Box<dyn Source>,
    pub checker: Box<dyn Consumer>,
    pub warnings: Arc<Mutex<Vec<String>>>,
}

impl Prepared {
    /// A source checked by the built-in check of its content.
    fn builtin(backups: &Backups, source: Box<dyn Source>, content: ContentKind) -> Self {
        Prepared {
            source,
            checker: backups.builtin_check(content),
            warnings: Arc::default(),
        }
    }
}

/// A dump printed by a command, wherever it runs (pg_dump, mariadb-dump, a custom command).
pub(crate) struct CommandDump {
    pub(crate) place: Place,
    pub(crate) command: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) kind: ContentKind,
    pub(crate) label: String,
    /// How the program is named in messages.
    pub(crate) what: String,
}

#[async_trait]
impl Source for CommandDump {
    fn kind(&self) -> ContentKind {
        self.kind
    }

    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn produce(&mut self, out: PlainSender) -> Result<String, BackupError> {
        let (outcome, _) = self
            .place
            .run(&self.command, &self.env, None, Some(&out))
            .await?;
        let what = format!("{} in {}", self.what, self.place.describe());
        let result = judge_dump(&what, self.kind, &outcome);
        if let Err(error) = &result {
            let _ = out
                .send(Err(std::io::Error::other(error.to_string())))
                .await;
        }
        result
    }
}

/// Every service and accessory that mounts the data at `path` inside `service` (the same
/// named volume, or a host directory that holds or is held by the same one): all of them are
/// stopped while it is restored, not only the one the backup names.
pub(crate) fn data_users(manifest: &Manifest, service: &str, path: &str) -> Vec<String> {
    let mount = manifest
        .services
        .get(service)
        .or_else(|| manifest.accessories.get(service))
        .and_then(|found| {
            found
                .volumes
                .iter()
                .filter(|v| Path::new(path).starts_with(&v.target))
                .max_by_key(|v| v.target.len())
        });
    match mount.map(|m| &m.source) {
        Some(VolumeSource::Named(volume)) => volume_users(manifest, volume),
        Some(VolumeSource::Bind(host)) => directory_users(manifest, host),
        None => vec![service.to_owned()],
    }
}

/// Every service and accessory that bind-mounts `dir`, a directory inside it, or one that
/// holds it.
pub(crate) fn directory_users(manifest: &Manifest, dir: &Path) -> Vec<String> {
    manifest
        .services
        .values()
        .chain(manifest.accessories.values())
        .filter(|s| {
            s.volumes.iter().any(|v| {
                matches!(&v.source, VolumeSource::Bind(host) if host.starts_with(dir) || dir.starts_with(host))
            })
        })
        .map(|s| s.name.clone())
        .collect()
}

/// Services and accessories that mount a named volume.
pub(crate) fn volume_users(manifest: &Manifest, volume: &str) -> Vec<String> {
    manifest
        .services
        .values()
        .chain(manifest.accessories.values())
        .filter(|s| {
            s.volumes
                .iter()
                .any(|v| matches!(&v.source, VolumeSource::Named(n) if n == volume))
        })
        .map(|s| s.name.clone())
        .collect()
}

/// What a database holds, from a table count a query printed: `None` when empty. Anything
/// unreadable counts as live data.
fn tables_held(count: &str) -> Option<String> {
    match count.trim().parse::<u64>() {
        Ok(0) => None,
        Ok(n) => Some(format!("{n} tables")),
        Err(_) => Some("it could not be counted".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        berth_manifest::load(
            berth_manifest::ManifestSource {
                file: "berth.toml",
                text,
                base_dir: Path::new("/srv/app"),
            },
            None,
        )
        .unwrap()
    }

    #[test]
    fn every_service_using_restored_data_is_found_not_only_the_named_one() {
        let manifest = manifest(
            r#"
app = "shop"

[services.web]
image = "x"
port = 80
volumes = ["data:/data", "/srv/uploads:/uploads"]

[services.worker]
image = "x"
volumes = ["data:/var/lib/app"]

[services.thumbs]
image = "x"
volumes = ["/srv/uploads/thumbs:/thumbs"]

[services.other]
image = "x"
volumes = ["logs:/logs", "/srv/elsewhere:/e"]
"#,
        );
        assert_eq!(
            data_users(&manifest, "web", "/data/app.db"),
            ["web", "worker"],
            "the same named volume, mounted elsewhere by the worker"
        );
        assert_eq!(
            data_users(&manifest, "web", "/uploads/x.db"),
            ["thumbs", "web"],
            "a bind mount, and one inside it"
        );
        assert_eq!(
            directory_users(&manifest, Path::new("/srv/uploads")),
            ["thumbs", "web"]
        );
        assert!(directory_users(&manifest, Path::new("/srv/none")).is_empty());
    }
}
