//! Backups as the agent runs them: it turns a manifest's `[backups.NAME]` into a source (a
//! SQLite file inside a volume, a dump run in a database's container or on the server, a
//! volume, berth's own data directory), a content check, and the storage to write to, then
//! lets `berth-backup` stream, store, read back and check. Every run, verification and prune
//! is recorded in the state (`backup_runs`, the catalog) and the audit log.
//!
//! Invariants:
//! - A backup is reported good only when `berth-backup` read each copy back and checked it;
//!   the catalog only ever holds such copies.
//! - Containers paused for a backup are unpaused whatever happens to the backup.
//! - One backup operation per app at a time (`backup_locks`); restores also take the app's
//!   deploy lock, so nothing replaces containers under them.

use crate::engine::{Engine, release_manifest};
use crate::error::{ErrorKind, OpError};
use crate::names;
use crate::progress::Progress;
use async_trait::async_trait;
use berth_api::RunStatus;
use berth_api::{
    BackupInfo, BackupResult, BackupsOutcome, CopyInfo, CopyResult, Outcome, PruneResult,
    VerifyResult, human_bytes,
};
use berth_backup::destination::S3Settings;
use berth_backup::meta::{BackupMeta, ContentKind, Reason};
use berth_backup::pipeline::Compression;
use berth_backup::runner::{self, Event, EventSink, Runner, SystemClock};
use berth_backup::source::{
    BuiltinCheck, Consumer, Directory, DumpOutcome, PlainReceiver, PlainSender, SqliteFile,
    judge_dump, run_host,
};
use berth_backup::{BackupError, Destination, Identities, Keep, Recipient, Source};
use berth_manifest::{
    Backup, BackupSource, Database, DatabaseLocation, LOCAL_STORAGE, Manifest, Storage,
    VolumeSource,
};
use berth_runtime::{ContainerRuntime, ExecOptions, LogStream};
use berth_state::{BackupCopy, RunFinish};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

impl From<BackupError> for OpError {
    fn from(error: BackupError) -> Self {
        let kind = match error {
            BackupError::Invalid(_) => ErrorKind::Invalid,
            BackupError::NotFound { .. } => ErrorKind::NotFound,
            _ => ErrorKind::Failed,
        };
        OpError::new(kind, error.to_string())
    }
}

/// Where a command of a backup runs: in a container of the app, or on the server.
#[derive(Clone)]
pub(crate) enum Place {
    Container {
        runtime: Arc<dyn ContainerRuntime>,
        id: String,
        name: String,
    },
    Host,
}

impl Place {
    pub(crate) fn describe(&self) -> String {
        match self {
            Place::Container { name, .. } => format!("container {name}"),
            Place::Host => "this server".to_owned(),
        }
    }

    /// Runs `command` here: `input` is fed to its standard input, its output goes to `out`
    /// or is collected (and returned).
    pub(crate) async fn run(
        &self,
        command: &[String],
        env: &[(String, String)],
        input: Option<PlainReceiver>,
        out: Option<&PlainSender>,
    ) -> Result<(DumpOutcome, String), BackupError> {
        let Some(program) = command.first() else {
            return Err(BackupError::Invalid("an empty command".to_owned()));
        };
        match self {
            Place::Host => run_host(program, &command[1..], env, input, out).await,
            Place::Container { runtime, id, name } => {
                run_in_container(runtime.as_ref(), id, name, command, env, input, out).await
            }
        }
    }

    /// Runs a command that only answers; fails unless it exits 0.
    pub(crate) async fn query(
        &self,
        command: &[String],
        env: &[(String, String)],
    ) -> Result<String, BackupError> {
        let (outcome, stdout) = self.run(command, env, None, None).await?;
        if outcome.exit_code != Some(0) {
            return Err(BackupError::Source(format!(
                "`{}` in {} exited with status {}: {}",
                command.join(" "),
                self.describe(),
                outcome
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                last_lines(&outcome.stderr)
            )));
        }
        Ok(stdout)
    }
}

pub(crate) fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(4);
    if lines.is_empty() {
        "it printed no error".to_owned()
    } else {
        lines[start..].join(" | ")
    }
}

async fn run_in_container(
    runtime: &dyn ContainerRuntime,
    id: &str,
    name: &str,
    command: &[String],
    env: &[(String, String)],
    input: Option<PlainReceiver>,
    out: Option<&PlainSender>,
) -> Result<(DumpOutcome, String), BackupError> {
    let options = ExecOptions {
        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        user: None,
        stdin: input.is_some(),
        tty: false,
    };
    let session = runtime
        .exec_with(id, command, &options)
        .await
        .map_err(|e| {
            BackupError::Source(format!(
                "cannot run `{}` in container {name}: {e}",
                command[0]
            ))
        })?;
    let feeder = match (input, session.input) {
        (Some(mut input), Some(mut stdin)) => Some(tokio::spawn(async move {
            let mut clean = true;
            while let Some(chunk) = input.recv().await {
                match chunk {
                    Ok(bytes) => {
                        if stdin.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => {
                        clean = false;
                        break;
                    }
                }
            }
            // End of input either way: a process reading its input to the end would wait
            // forever otherwise. A broken input is reported as a failure below.
            let _ = stdin.shutdown().await;
            clean
        })),
        _ => None,
    };
    let mut outcome = DumpOutcome::default();
    let mut collected = Vec::new();
    let mut output = session.output;
    while let Some(chunk) = output.next().await {
        let chunk = chunk.map_err(|e| {
            BackupError::Source(format!(
                "lost the output of `{}` in container {name}: {e}",
                command[0]
            ))
        })?;
        match chunk.stream {
            LogStream::Stdout => {
                outcome.saw(&chunk.data);
                match out {
                    Some(out) => {
                        if out.send(Ok(chunk.data)).await.is_err() {
                            return Err(BackupError::Source(format!(
                                "the backup was abandoned while `{}` ran",
                                command[0]
                            )));
                        }
                    }
                    None => {
                        let room =
                            berth_backup::source::STDOUT_KEEP.saturating_sub(collected.len());
                        collected.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
                    }
                }
            }
            LogStream::Stderr => outcome.saw_stderr(&chunk.data),
        }
    }
    let fed_cleanly = match feeder {
        Some(task) => task.await.unwrap_or(false),
        None => true,
    };
    // The output ends just before Docker records the exit code.
    for _ in 0..100 {
        match runtime.exec_exit_code(&session.id).await {
            Ok(Some(code)) => {
                outcome.exit_code = Some(code);
                break;
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    if !fed_cleanly {
        outcome.exit_code = None;
    }
    if matches!(outcome.exit_code, Some(126 | 127)) && outcome.stderr.contains("not found") {
        outcome.stderr.push_str(&format!(
            "\n(`{}` is not installed in container {name})",
            command[0]
        ));
    }
    Ok((outcome, String::from_utf8_lossy(&collected).into_owned()))
}

/// A dump printed by a command, wherever it runs.
struct CommandDump {
    place: Place,
    command: Vec<String>,
    env: Vec<(String, String)>,
    kind: ContentKind,
    label: String,
    /// How the program is named in messages.
    what: String,
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

/// A source with things to do around it: containers to pause, commands before and after.
struct Guarded {
    inner: Box<dyn Source>,
    runtime: Arc<dyn ContainerRuntime>,
    pause: Vec<(String, String)>,
    before: Option<(Place, Vec<String>)>,
    after: Option<(Place, Vec<String>)>,
    warnings: Arc<Mutex<Vec<String>>>,
}

impl Guarded {
    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }
}

#[async_trait]
impl Source for Guarded {
    fn kind(&self) -> ContentKind {
        self.inner.kind()
    }

    fn describe(&self) -> String {
        let mut text = self.inner.describe();
        if !self.pause.is_empty() {
            let names: Vec<&str> = self.pause.iter().map(|(_, n)| n.as_str()).collect();
            text.push_str(&format!(" (with {} paused)", names.join(", ")));
        }
        text
    }

    async fn produce(&mut self, out: PlainSender) -> Result<String, BackupError> {
        if let Some((place, command)) = &self.before {
            place
                .query(command, &[])
                .await
                .map_err(|e| BackupError::Source(format!("the `before` command failed: {e}")))?;
        }
        let mut paused = Vec::new();
        for (id, name) in &self.pause {
            match self.runtime.pause_container(id).await {
                Ok(()) => paused.push((id.clone(), name.clone())),
                Err(error) => {
                    for (id, name) in &paused {
                        if let Err(e) = self.runtime.unpause_container(id).await {
                            self.warn(format!("cannot unpause {name}: {e}"));
                        }
                    }
                    return Err(BackupError::Source(format!(
                        "cannot pause {name} for the backup: {error}"
                    )));
                }
            }
        }
        let result = self.inner.produce(out).await;
        for (id, name) in &paused {
            // Retried: a container left paused is an outage.
            let mut last = None;
            for attempt in 0..5 {
                match self.runtime.unpause_container(id).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
            if let Some(e) = last {
                self.warn(format!(
                    "cannot unpause {name} after the backup: {e}; run `docker unpause {name}`"
                ));
            }
        }
        if let Some((place, command)) = &self.after
            && let Err(e) = place.query(command, &[]).await
        {
            self.warn(format!("the `after` command failed: {e}"));
        }
        result
    }
}

/// berth's own data directory: a consistent copy of the state file, the keys, and the
/// certificates, as one tar archive. Logs, uploads and local backups are left out.
struct BerthState {
    data_dir: PathBuf,
}

/// What a state backup holds besides `state.db`.
const STATE_FILES: &[&str] = &["secrets.key", "backup.key", "agent-id", "api-token", "tls"];

#[async_trait]
impl Source for BerthState {
    fn kind(&self) -> ContentKind {
        ContentKind::BerthState
    }

    fn describe(&self) -> String {
        format!("berth state in {}", self.data_dir.display())
    }

    async fn produce(&mut self, out: PlainSender) -> Result<String, BackupError> {
        let data_dir = self.data_dir.clone();
        berth_backup::source::produce_blocking(out, move |writer| {
            let scratch = data_dir.join("tmp");
            std::fs::create_dir_all(&scratch)
                .map_err(|e| BackupError::io(format!("cannot create {}", scratch.display()), e))?;
            let snapshot = tempfile::NamedTempFile::new_in(&scratch)
                .map_err(|e| BackupError::io("cannot create a scratch file", e))?;
            let info = {
                let mut file = std::io::BufWriter::new(snapshot.as_file());
                // SQLite refuses a link anywhere in the path; the data directory may be one.
                let state = std::fs::canonicalize(&data_dir)
                    .unwrap_or_else(|_| data_dir.clone())
                    .join("state.db");
                let info = berth_backup::sqlite::snapshot(&state, &mut file)?;
                std::io::Write::flush(&mut file)
                    .map_err(|e| BackupError::io("cannot write the state snapshot", e))?;
                info
            };
            let mut builder = tar::Builder::new(writer);
            builder.follow_symlinks(false);
            builder
                .append_path_with_name(snapshot.path(), "state.db")
                .map_err(|e| BackupError::io("cannot archive the state", e))?;
            let mut files = 1;
            for name in STATE_FILES {
                let path = data_dir.join(name);
                if path.is_dir() {
                    builder
                        .append_dir_all(name, &path)
                        .map_err(|e| BackupError::io(format!("cannot archive {name}"), e))?;
                    files += walkdir::WalkDir::new(&path).into_iter().count();
                } else if path.is_file() {
                    builder
                        .append_path_with_name(&path, name)
                        .map_err(|e| BackupError::io(format!("cannot archive {name}"), e))?;
                    files += 1;
                }
            }
            builder
                .into_inner()
                .map_err(|e| BackupError::io("cannot finish the archive", e))?;
            Ok(format!(
                "state.db ({} pages) and {} more files",
                info.pages,
                files - 1
            ))
        })
        .await
    }
}

/// Restores a pg_dump archive into a scratch database (or lists it), then drops it.
struct PostgresCheck {
    place: Place,
    env: Vec<(String, String)>,
    user: String,
    by_restore: bool,
}

#[async_trait]
impl Consumer for PostgresCheck {
    async fn consume(&self, input: PlainReceiver) -> Result<String, String> {
        let user = self.user.clone();
        if !self.by_restore {
            let command = strings(&["pg_restore", "--list"]);
            let (outcome, stdout) = self
                .place
                .run(&command, &self.env, Some(input), None)
                .await
                .map_err(|e| e.to_string())?;
            if outcome.exit_code != Some(0) {
                return Err(format!(
                    "pg_restore --list failed: {}",
                    last_lines(&outcome.stderr)
                ));
            }
            let entries = stdout
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
                .count();
            return Ok(format!("pg_restore --list reads {entries} entries"));
        }
        let scratch = format!("berth_verify_{:08x}", rand::random::<u32>());
        self.place
            .query(
                &strings(&["createdb", "--no-password", "--username", &user, &scratch]),
                &self.env,
            )
            .await
            .map_err(|e| format!("cannot create a scratch database to restore into: {e}"))?;
        let restored = async {
            let command = strings(&[
                "pg_restore",
                "--no-password",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--username",
                &user,
                "--dbname",
                &scratch,
            ]);
            let (outcome, _) = self
                .place
                .run(&command, &self.env, Some(input), None)
                .await
                .map_err(|e| e.to_string())?;
            if outcome.exit_code != Some(0) {
                return Err(format!(
                    "it does not restore into a scratch database: {}",
                    last_lines(&outcome.stderr)
                ));
            }
            let tables = self
                .place
                .query(&psql(&user, &scratch, USER_TABLES_SQL), &self.env)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "restored into a scratch database: {} tables",
                tables.trim()
            ))
        }
        .await;
        if let Err(e) = self
            .place
            .query(
                &strings(&[
                    "dropdb",
                    "--no-password",
                    "--if-exists",
                    "--username",
                    &user,
                    &scratch,
                ]),
                &self.env,
            )
            .await
        {
            tracing::warn!(error = %e, scratch, "cannot drop the scratch database");
        }
        restored
    }
}

pub(crate) const USER_TABLES_SQL: &str = "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";

pub(crate) fn psql(user: &str, database: &str, sql: &str) -> Vec<String> {
    strings(&[
        "psql",
        "--no-password",
        "--no-psqlrc",
        "--tuples-only",
        "--no-align",
        "--username",
        user,
        "--dbname",
        database,
        "--command",
        sql,
    ])
}

pub(crate) fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// A backup's source with its check, and notes for the result.
pub(crate) struct Prepared {
    pub source: Box<dyn Source>,
    pub checker: Box<dyn Consumer>,
    pub warnings: Arc<Mutex<Vec<String>>>,
}

/// A database source resolved: where its tools run and with which environment.
pub(crate) struct DatabaseAccess {
    pub place: Place,
    pub env: Vec<(String, String)>,
    pub host_args: Vec<String>,
}

impl Engine {
    /// The manifest backup commands act on: the one the caller sent (it must name this
    /// app), else the live release's.
    pub(crate) fn backup_manifest(
        &self,
        app: &str,
        sent: Option<Manifest>,
    ) -> Result<Manifest, OpError> {
        if let Some(manifest) = sent {
            if manifest.app != app {
                return Err(OpError::invalid(format!(
                    "the manifest is for app {}, not {app}",
                    manifest.app
                )));
            }
            return Ok(manifest);
        }
        let release = self.store.live_release(app)?.ok_or_else(|| {
            OpError::not_found(format!(
                "app {app} has no live release and no manifest was given"
            ))
            .hint("run the command where berth.toml is, or pass --file")
        })?;
        release_manifest(&release)
    }

    pub(crate) fn backup_named<'m>(
        manifest: &'m Manifest,
        name: &str,
    ) -> Result<&'m Backup, OpError> {
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
    pub(crate) fn backup_names(
        manifest: &Manifest,
        names: &[String],
    ) -> Result<Vec<String>, OpError> {
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

    fn secret_value(&self, app: &str, name: &str) -> Result<String, OpError> {
        let ciphertext = self.store.secret_ciphertext(app, name)?.ok_or_else(|| {
            OpError::invalid(format!("secret {name} is not set for app {app}"))
                .hint(format!("berth secrets set {name} --app {app}"))
        })?;
        Ok(self.secrets.open_value(name, &ciphertext)?)
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
            clock: Arc::new(SystemClock),
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

    async fn place_in(&self, manifest: &Manifest, service: &str) -> Result<Place, OpError> {
        let containers = self.running_containers(manifest, service).await?;
        let (id, name) = containers.into_iter().next().ok_or_else(|| {
            OpError::failed(format!(
                "{service} has no running container to run the backup in"
            ))
            .hint("deploy the app first (berth deploy), or check `berth status`")
        })?;
        Ok(Place::Container {
            runtime: self.runtime.clone(),
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
        if let Some(dir) = self.runtime.volume_mountpoint(&docker_name).await? {
            return Ok(dir);
        }
        if !create {
            return Err(OpError::failed(format!(
                "volume {docker_name} does not exist: there is nothing to back up yet"
            ))
            .hint("deploy the app first (berth deploy)"));
        }
        let labels = names::base_labels(&self.agent_id, app);
        self.runtime.ensure_volume(&docker_name, &labels).await?;
        self.runtime
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

    /// Turns a backup's source into something to read and a way to check what was stored.
    pub(crate) async fn prepare_source(
        &self,
        manifest: &Manifest,
        backup: &Backup,
    ) -> Result<Prepared, OpError> {
        let scratch = self.data_dir.join("tmp");
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let builtin = |kind| -> Box<dyn Consumer> {
            Box::new(BuiltinCheck {
                kind,
                scratch: scratch.clone(),
            })
        };
        let prepared = match &backup.source {
            BackupSource::Sqlite { service, path } => {
                let (host, label) = match service {
                    Some(service) => {
                        let (base, relative) =
                            self.host_path(manifest, service, path, false).await?;
                        (base.join(relative), format!("{path} in service {service}"))
                    }
                    // The operator's own host path: trusted as named.
                    None => (
                        std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path)),
                        path.clone(),
                    ),
                };
                Prepared {
                    source: Box::new(SqliteFile { path: host, label }),
                    checker: builtin(ContentKind::Sqlite),
                    warnings,
                }
            }
            BackupSource::Postgres(db) => {
                let access = self.database_access(manifest, db, true).await?;
                let command = strings(&[
                    "pg_dump",
                    "--format=custom",
                    "-Z0",
                    "--no-password",
                    "--username",
                    &db.user,
                    "--dbname",
                    &db.database,
                ]);
                let label = format!(
                    "postgres database {} in {}",
                    db.database,
                    access.place.describe()
                );
                Prepared {
                    source: Box::new(CommandDump {
                        place: access.place.clone(),
                        command,
                        env: access.env.clone(),
                        kind: ContentKind::PostgresDump,
                        label,
                        what: "pg_dump".to_owned(),
                    }),
                    checker: Box::new(PostgresCheck {
                        place: access.place,
                        env: access.env,
                        user: db.user.clone(),
                        by_restore: db.verify_by_restore,
                    }),
                    warnings,
                }
            }
            BackupSource::Mysql(db) => {
                let access = self.database_access(manifest, db, false).await?;
                let mut args = strings(&[
                    "--single-transaction",
                    "--routines",
                    "--triggers",
                    "--events",
                    "--hex-blob",
                    "--user",
                    &db.user,
                ]);
                args.extend(access.host_args.clone());
                args.push(db.database.clone());
                let command = mysql_tool(&access.place, "mariadb-dump", "mysqldump", args);
                let label = format!(
                    "mysql database {} in {}",
                    db.database,
                    access.place.describe()
                );
                Prepared {
                    source: Box::new(CommandDump {
                        place: access.place,
                        command,
                        env: access.env,
                        kind: ContentKind::MysqlDump,
                        label,
                        what: "mariadb-dump".to_owned(),
                    }),
                    checker: builtin(ContentKind::MysqlDump),
                    warnings,
                }
            }
            BackupSource::Volume {
                volume,
                pause,
                service,
                before,
                after,
            } => {
                let dir = self.volume_dir(&manifest.app, volume, false).await?;
                let mut paused = Vec::new();
                if *pause {
                    for user in volume_users(manifest, volume) {
                        paused.extend(self.running_containers(manifest, &user).await?);
                    }
                }
                let place = match service {
                    Some(service) if before.is_some() || after.is_some() => {
                        Some(self.place_in(manifest, service).await?)
                    }
                    _ => None,
                };
                let inner = Box::new(Directory {
                    path: dir,
                    label: format!("volume {}", names::volume(&manifest.app, volume)),
                    kind: ContentKind::Tar,
                });
                Prepared {
                    source: Box::new(Guarded {
                        inner,
                        runtime: self.runtime.clone(),
                        pause: paused,
                        before: place.clone().zip(before.clone()),
                        after: place.zip(after.clone()),
                        warnings: warnings.clone(),
                    }),
                    checker: builtin(ContentKind::Tar),
                    warnings,
                }
            }
            BackupSource::Directory { path } => Prepared {
                source: Box::new(Directory {
                    path: path.clone(),
                    label: format!("directory {}", path.display()),
                    kind: ContentKind::Tar,
                }),
                checker: builtin(ContentKind::Tar),
                warnings,
            },
            BackupSource::Command { service, dump, .. } => {
                let place = self.place_in(manifest, service).await?;
                Prepared {
                    source: Box::new(CommandDump {
                        label: format!("`{}` in {}", dump.join(" "), place.describe()),
                        place,
                        command: dump.clone(),
                        env: Vec::new(),
                        kind: ContentKind::Stream,
                        what: format!("`{}`", dump.join(" ")),
                    }),
                    checker: builtin(ContentKind::Stream),
                    warnings,
                }
            }
            BackupSource::Berth => Prepared {
                source: Box::new(BerthState {
                    data_dir: self.data_dir.clone(),
                }),
                checker: builtin(ContentKind::BerthState),
                warnings,
            },
        };
        Ok(prepared)
    }

    // ---- operations ------------------------------------------------------------------------

    /// `berth backup run`: each named backup (or all), then retention on each storage that
    /// holds the new backup.
    pub async fn run_backups(
        self: Arc<Self>,
        manifest: Manifest,
        names: Vec<String>,
        reason: Reason,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let app = manifest.app.clone();
        let mut outcome = BackupsOutcome::default();
        let mut error = None;
        for name in &names {
            let Ok(backup) = Self::backup_named(&manifest, name) else {
                continue;
            };
            let result = self
                .backup_once(&manifest, backup, reason, &backup.to, &actor, &progress)
                .await;
            if matches!(result.status, RunStatus::Ok | RunStatus::Partial) {
                let good: Vec<String> = result
                    .copies
                    .iter()
                    .filter(|c| c.ok)
                    .map(|c| c.storage.clone())
                    .collect();
                if !to_keep(&backup.keep).keeps_everything() {
                    let pruned = self
                        .prune_storages(&manifest, backup, &good, false, &actor, &progress)
                        .await;
                    outcome.pruned.extend(pruned);
                }
            }
            if result.status != RunStatus::Ok && error.is_none() {
                error = Some(OpError::failed(format!(
                    "backup {name} {}: {}",
                    if result.status == RunStatus::Partial {
                        "was stored only in part"
                    } else {
                        "failed"
                    },
                    result.error.clone().unwrap_or_default()
                )));
            }
            outcome.runs.push(result);
        }
        finish_outcome(&app, "backup", started, error, outcome)
    }

    /// One backup of one name to `storages`, recorded in the state and the audit log.
    pub(crate) async fn backup_once(
        &self,
        manifest: &Manifest,
        backup: &Backup,
        reason: Reason,
        storages: &[String],
        actor: &str,
        progress: &Progress,
    ) -> BackupResult {
        let app = &manifest.app;
        let name = &backup.name;
        let run = self
            .store
            .start_backup_run(app, name, "backup", actor)
            .unwrap_or_default();
        let step_name = if reason == Reason::Safety {
            format!("safety backup of {name}")
        } else {
            format!("back up {name}")
        };
        let step = progress.step(step_name.clone());
        let mut result = BackupResult {
            name: name.clone(),
            id: None,
            status: RunStatus::Failed,
            source: String::new(),
            source_summary: None,
            content_size: None,
            size: None,
            copies: Vec::new(),
            write_ms: None,
            verify_ms: None,
            error: None,
            cause: None,
            warnings: Vec::new(),
        };
        if manifest.backup.recipients.is_empty() && reason != Reason::Safety {
            result.warnings.push(
                "backups are encrypted only to this server's key (DATA_DIR/backup.key): if the \
                 server is lost, so are they. Add your own age recipient under [encryption] \
                 recipients, or keep a copy of the key elsewhere"
                    .to_owned(),
            );
        }
        let events = transfer_events(progress, &step_name);
        let attempt = async {
            let runner = self.runner(manifest, storages, None, events)?;
            for destination in &runner.destinations {
                for key in destination.abort_unfinished().await {
                    progress.log(format!(
                        "aborted the unfinished upload of {key} on {}, left by an earlier failure",
                        destination.name()
                    ));
                }
            }
            let mut prepared = self.prepare_source(manifest, backup).await?;
            result.source = prepared.source.describe();
            let outcome = runner
                .run(
                    app,
                    name,
                    reason,
                    prepared.source.as_mut(),
                    prepared.checker.as_ref(),
                )
                .await;
            result.warnings.extend(
                prepared
                    .warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain(..),
            );
            Ok::<_, OpError>(outcome)
        };
        match attempt.await {
            Err(error) => {
                result.error = Some(match &error.hint {
                    Some(hint) => format!("{} ({hint})", error.message),
                    None => error.message.clone(),
                });
                result.cause = Some(if error.kind == ErrorKind::Invalid {
                    "invalid".to_owned()
                } else {
                    "setup".to_owned()
                });
            }
            Ok(Err(error)) => {
                result.cause = Some(error.cause().to_owned());
                result.error = Some(error.to_string());
            }
            Ok(Ok(run_outcome)) => {
                result.id = Some(run_outcome.id.clone());
                result.source_summary = Some(run_outcome.source_summary.clone());
                result.content_size = run_outcome.encoded.as_ref().map(|e| e.content_size);
                result.size = run_outcome.encoded.as_ref().map(|e| e.size);
                result.write_ms = Some(run_outcome.stored_in.as_millis() as u64);
                result.verify_ms = Some(run_outcome.verified_in.as_millis() as u64);
                let mut errors = Vec::new();
                for copy in &run_outcome.copies {
                    match &copy.result {
                        Ok(meta) => {
                            self.catalog_put(meta, &copy.destination, None);
                            result.copies.push(CopyResult {
                                storage: copy.destination.clone(),
                                ok: true,
                                check: Some(meta.check.clone()),
                                error: None,
                                cause: None,
                            });
                        }
                        Err(error) => {
                            errors.push(error.to_string());
                            if result.cause.is_none() {
                                result.cause = Some(error.cause().to_owned());
                            }
                            result.copies.push(CopyResult {
                                storage: copy.destination.clone(),
                                ok: false,
                                check: None,
                                error: Some(error.to_string()),
                                cause: Some(error.cause().to_owned()),
                            });
                        }
                    }
                }
                let good = result.copies.iter().filter(|c| c.ok).count();
                result.status = if good == result.copies.len() && good > 0 {
                    RunStatus::Ok
                } else if good > 0 {
                    RunStatus::Partial
                } else {
                    RunStatus::Failed
                };
                if !errors.is_empty() {
                    result.error = Some(errors.join("; "));
                }
            }
        }
        let detail = match result.status.as_str() {
            "ok" | "partial" => {
                let stored: Vec<&str> = result
                    .copies
                    .iter()
                    .filter(|c| c.ok)
                    .map(|c| c.storage.as_str())
                    .collect();
                let check = result
                    .copies
                    .iter()
                    .find_map(|c| c.check.clone())
                    .unwrap_or_default();
                format!(
                    "{}: {} read, {} stored on {}, verified ({check})",
                    result.id.as_deref().unwrap_or("?"),
                    human_bytes(result.content_size.unwrap_or(0)),
                    human_bytes(result.size.unwrap_or(0)),
                    stored.join(" and ")
                )
            }
            _ => String::new(),
        };
        match result.status.as_str() {
            "ok" => step.done(Some(detail.clone())),
            _ => step.fail(result.error.as_deref().unwrap_or("failed")),
        }
        for warning in &result.warnings {
            progress.log(format!("warning: {warning}"));
        }
        if run > 0
            && let Err(e) = self.store.finish_backup_run(
                run,
                &RunFinish {
                    status: result.status.as_str(),
                    backup_id: result.id.as_deref(),
                    cause: result.cause.as_deref(),
                    error: result.error.as_deref(),
                },
            )
        {
            tracing::error!(error = %e, "cannot record a backup run");
        }
        self.audit(
            actor,
            if reason == Reason::Safety {
                "safety-backup"
            } else {
                "backup"
            },
            &format!("{app}/{name}"),
            result.status.as_str(),
            result.error.as_deref().unwrap_or(&detail),
        );
        if reason != Reason::Safety {
            self.backup_metrics
                .record(app, name, result.status.as_str());
        }
        result
    }

    pub(crate) fn catalog_put(&self, meta: &BackupMeta, storage: &str, error: Option<&str>) {
        let copy = BackupCopy {
            app: meta.app.clone(),
            name: meta.name.clone(),
            id: meta.id.clone(),
            destination: storage.to_owned(),
            created_at: meta.created_at.as_millisecond(),
            verified_at: meta.verified_at.as_millisecond(),
            verify_error: error.map(str::to_owned),
            meta_json: String::from_utf8_lossy(&meta.to_json()).into_owned(),
        };
        if let Err(e) = self.store.put_backup_copy(&copy) {
            tracing::error!(error = %e, "cannot record a backup in the catalog");
        }
    }

    /// Applies the backup's retention on each of `storages`.
    pub(crate) async fn prune_storages(
        &self,
        manifest: &Manifest,
        backup: &Backup,
        storages: &[String],
        dry_run: bool,
        actor: &str,
        progress: &Progress,
    ) -> Vec<PruneResult> {
        let mut results = Vec::new();
        let keep = to_keep(&backup.keep);
        for storage in storages {
            let step = progress.step(format!("prune {} on {storage}", backup.name));
            let attempt = async {
                let runner = self.runner(
                    manifest,
                    std::slice::from_ref(storage),
                    None,
                    runner::no_events(),
                )?;
                let destination = &runner.destinations[0];
                Ok::<_, OpError>(
                    runner
                        .prune(destination, &manifest.app, &backup.name, &keep, dry_run)
                        .await?,
                )
            };
            let result = match attempt.await {
                Ok(report) => {
                    if !dry_run {
                        for id in &report.removed {
                            if let Err(e) = self.store.remove_backup_copy(
                                &manifest.app,
                                &backup.name,
                                id,
                                storage,
                            ) {
                                tracing::error!(error = %e, "cannot update the backup catalog");
                            }
                        }
                    }
                    step.done(Some(format!(
                        "{} {}, {} kept ({})",
                        if dry_run { "would remove" } else { "removed" },
                        report.removed.len(),
                        report.kept.len(),
                        backup_keep_text(&backup.keep)
                    )));
                    PruneResult {
                        name: backup.name.clone(),
                        storage: storage.clone(),
                        kept: report.kept.into_iter().map(|k| k.id).collect(),
                        removed: report.removed,
                        untrusted: report.untrusted,
                        dry_run,
                        error: None,
                    }
                }
                Err(error) => {
                    step.fail(&error.message);
                    PruneResult {
                        name: backup.name.clone(),
                        storage: storage.clone(),
                        kept: Vec::new(),
                        removed: Vec::new(),
                        untrusted: Vec::new(),
                        dry_run,
                        error: Some(error.message.clone()),
                    }
                }
            };
            if !dry_run {
                self.audit(
                    actor,
                    "backup-prune",
                    &format!("{}/{} on {storage}", manifest.app, backup.name),
                    if result.error.is_none() {
                        "ok"
                    } else {
                        "failed"
                    },
                    &result
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("removed {}", result.removed.join(", "))),
                );
            }
            results.push(result);
        }
        results
    }

    /// `berth backup prune`: retention on every storage of each named backup.
    pub async fn prune_backups(
        self: Arc<Self>,
        manifest: Manifest,
        names: Vec<String>,
        dry_run: bool,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let mut outcome = BackupsOutcome::default();
        let mut error = None;
        for name in &names {
            let Ok(backup) = Self::backup_named(&manifest, name) else {
                continue;
            };
            if to_keep(&backup.keep).keeps_everything() {
                progress.log(format!(
                    "{name} has no `keep` rule, so every backup is kept"
                ));
                continue;
            }
            // A storage whose newest backup failed its last verification is left alone:
            // pruning it could keep only the bad one.
            let copies = match self.store.backup_copies(&manifest.app, Some(name)) {
                Ok(copies) => copies,
                // Without the catalogue berth cannot tell which storage's newest backup
                // failed verification: pruning blind could keep only a bad copy.
                Err(state_error) => {
                    let message = format!(
                        "not pruning {name}: the backup catalogue could not be read ({state_error}), so berth cannot tell whether the newest backups verified"
                    );
                    progress.log(message.clone());
                    if error.is_none() {
                        error = Some(OpError::failed(message).hint(
                            "check the agent's state file (`berth status` and the agent's log say more), then prune again",
                        ));
                    }
                    continue;
                }
            };
            let mut storages = Vec::new();
            for storage in &backup.to {
                let newest = copies
                    .iter()
                    .filter(|c| &c.destination == storage)
                    .max_by_key(|c| c.created_at);
                match newest.and_then(|c| c.verify_error.as_ref().map(|e| (c, e))) {
                    Some((copy, problem)) => {
                        let message = format!(
                            "not pruning {name} on {storage}: its newest backup {} failed verification ({problem}); take a new backup first",
                            copy.id
                        );
                        progress.log(message.clone());
                        if error.is_none() {
                            error = Some(OpError::failed(message));
                        }
                    }
                    None => storages.push(storage.clone()),
                }
            }
            let results = self
                .prune_storages(&manifest, backup, &storages, dry_run, &actor, &progress)
                .await;
            for result in &results {
                if let Some(message) = &result.error
                    && error.is_none()
                {
                    error = Some(OpError::failed(format!(
                        "pruning {name} on {} failed: {message}",
                        result.storage
                    )));
                }
            }
            outcome.pruned.extend(results);
        }
        finish_outcome(&manifest.app, "prune", started, error, outcome)
    }

    /// `berth backup verify`: reads every copy (or one backup's) back and checks it again.
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
                .store
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
                && let Err(e) = self.store.finish_backup_run(
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

    async fn verify_name(
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
                        && let Err(e) = self.store.fail_backup_copy(
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
    async fn prepare_checker(
        &self,
        manifest: &Manifest,
        backup: &Backup,
    ) -> Result<Box<dyn Consumer>, OpError> {
        let scratch = self.data_dir.join("tmp");
        let kind = match &backup.source {
            BackupSource::Postgres(db) => {
                let access = self.database_access(manifest, db, true).await?;
                return Ok(Box::new(PostgresCheck {
                    place: access.place,
                    env: access.env,
                    user: db.user.clone(),
                    by_restore: db.verify_by_restore,
                }));
            }
            BackupSource::Sqlite { .. } => ContentKind::Sqlite,
            BackupSource::Mysql(_) => ContentKind::MysqlDump,
            BackupSource::Volume { .. } | BackupSource::Directory { .. } => ContentKind::Tar,
            BackupSource::Command { .. } => ContentKind::Stream,
            BackupSource::Berth => ContentKind::BerthState,
        };
        Ok(Box::new(BuiltinCheck { kind, scratch }))
    }

    /// Every good copy of a backup name, from the catalog, read from the storage itself
    /// when asked or when the catalog knows none (a new server). Returns warnings for
    /// storage that could not be read.
    pub(crate) async fn catalog_for(
        &self,
        manifest: &Manifest,
        backup: &Backup,
        refresh: bool,
    ) -> (Vec<(BackupMeta, String)>, Vec<String>) {
        let app = &manifest.app;
        let mut warnings = Vec::new();
        let cached = self
            .store
            .backup_copies(app, Some(&backup.name))
            .unwrap_or_default();
        if refresh || cached.is_empty() {
            for storage in &backup.to {
                let listed = async {
                    let destination = self.destination(manifest, storage)?;
                    Ok::<_, OpError>(runner::list(&destination, app, &backup.name).await?)
                };
                match listed.await {
                    Ok(metas) => {
                        let copies: Vec<BackupCopy> = metas
                            .iter()
                            .map(|meta| BackupCopy {
                                app: app.clone(),
                                name: backup.name.clone(),
                                id: meta.id.clone(),
                                destination: storage.clone(),
                                created_at: meta.created_at.as_millisecond(),
                                verified_at: meta.verified_at.as_millisecond(),
                                verify_error: None,
                                meta_json: String::from_utf8_lossy(&meta.to_json()).into_owned(),
                            })
                            .collect();
                        if let Err(e) =
                            self.store
                                .replace_backup_copies(app, &backup.name, storage, &copies)
                        {
                            warnings.push(format!("cannot update the catalog: {e}"));
                        }
                    }
                    Err(error) => warnings.push(format!(
                        "storage {storage} could not be read: {}",
                        error.message
                    )),
                }
            }
        }
        let copies = self
            .store
            .backup_copies(app, Some(&backup.name))
            .unwrap_or_default();
        let list = copies
            .into_iter()
            .filter_map(|copy| {
                serde_json::from_str::<BackupMeta>(&copy.meta_json)
                    .ok()
                    .filter(|meta| meta.check_shape().is_ok())
                    .map(|meta| (meta, copy.destination))
            })
            .collect();
        (list, warnings)
    }

    /// `berth backup list`.
    pub async fn list_backups(
        &self,
        manifest: &Manifest,
        name: Option<&str>,
        refresh: bool,
    ) -> Result<berth_api::BackupList, OpError> {
        let names = match name {
            Some(name) => vec![name.to_owned()],
            None => manifest.backup.backups.keys().cloned().collect(),
        };
        let mut list = berth_api::BackupList::default();
        let keys = self.backup_key()?.record_keys();
        for name in names {
            let backup = Self::backup_named(manifest, &name)?;
            let (copies, warnings) = self.catalog_for(manifest, backup, refresh).await;
            list.warnings.extend(warnings);
            let flagged = self
                .store
                .backup_copies(&manifest.app, Some(&name))
                .unwrap_or_default();
            for (meta, storage) in copies {
                let verify_error = flagged
                    .iter()
                    .find(|c| c.id == meta.id && c.destination == storage)
                    .and_then(|c| c.verify_error.clone());
                let trust = meta.trust(&keys);
                let copy = CopyInfo {
                    storage,
                    verified_at: meta.verified_at.as_millisecond(),
                    check: meta.check.clone(),
                    verify_error,
                    untrusted: (!trust.is_trusted()).then(|| trust.as_str().to_owned()),
                };
                match list
                    .backups
                    .iter_mut()
                    .find(|b| b.name == name && b.id == meta.id)
                {
                    Some(existing) => existing.copies.push(copy),
                    None => list.backups.push(BackupInfo {
                        name: name.clone(),
                        id: meta.id.clone(),
                        kind: meta.kind.as_str().to_owned(),
                        reason: meta.reason.as_str().to_owned(),
                        created_at: meta.created_at.as_millisecond(),
                        size: meta.size,
                        content_size: meta.content_size,
                        source: meta.source.clone(),
                        copies: vec![copy],
                    }),
                }
            }
        }
        list.backups
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.created_at.cmp(&b.created_at)));
        Ok(list)
    }
}

/// The MySQL tool named `preferred`, or `fallback` where it is missing (older images and
/// servers have only `mysqldump`/`mysql`).
pub(crate) fn mysql_tool(
    place: &Place,
    preferred: &str,
    fallback: &str,
    args: Vec<String>,
) -> Vec<String> {
    match place {
        Place::Container { .. } => {
            let mut command = strings(&[
                "sh",
                "-c",
                &format!(
                    "if command -v {preferred} >/dev/null 2>&1; then exec {preferred} \"$@\"; else exec {fallback} \"$@\"; fi"
                ),
                preferred,
            ]);
            command.extend(args);
            command
        }
        Place::Host => {
            let found = std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(preferred).is_file())
            });
            let mut command = vec![if found { preferred } else { fallback }.to_owned()];
            command.extend(args);
            command
        }
    }
}

/// Services and accessories that mount a named volume.
/// What `berth backup verify` was asked.
pub struct VerifyOptions {
    /// One backup only.
    pub id: Option<String>,
    /// Sign an older berth's unsigned record once it passes every check.
    pub adopt_unsigned: bool,
    /// Keys given for this verification only (another server's backups).
    pub identity: Option<Identities>,
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

pub(crate) fn to_keep(keep: &berth_manifest::Keep) -> Keep {
    Keep {
        last: keep.last,
        hourly: keep.hourly,
        daily: keep.daily,
        weekly: keep.weekly,
        monthly: keep.monthly,
        yearly: keep.yearly,
    }
}

fn backup_keep_text(keep: &berth_manifest::Keep) -> String {
    to_keep(keep).to_string()
}

/// Runner events as progress: bytes read become a transfer bar, the rest log lines.
pub(crate) fn transfer_events(progress: &Progress, step: &str) -> EventSink {
    let progress = progress.clone();
    let step = step.to_owned();
    Arc::new(move |event| match event {
        Event::Read { bytes } => progress.transfer(&step, bytes, None),
        Event::ReadBack { bytes, total } => progress.transfer(&step, bytes, Some(total)),
        Event::Stored { destination, bytes } => {
            progress.log(format!("stored {} on {destination}", human_bytes(bytes)))
        }
        Event::CopyFailed { destination, error } => progress.log(format!("{destination}: {error}")),
        Event::Started { .. } | Event::Verified { .. } => {}
    })
}

pub(crate) fn finish_outcome(
    app: &str,
    operation: &str,
    started: Instant,
    error: Option<OpError>,
    backups: BackupsOutcome,
) -> Outcome {
    Outcome {
        ok: error.is_none(),
        app: app.to_owned(),
        operation: operation.to_owned(),
        release: None,
        version: None,
        live_release: None,
        elapsed_ms: started.elapsed().as_millis() as u64,
        urls: Vec::new(),
        error: error.map(|e| e.to_operation()),
        backups: Some(backups),
    }
}

/// Sends a file's bytes down a plaintext channel (restores feed staged files to tools).
pub(crate) fn feed_file(path: PathBuf) -> PlainReceiver {
    let (sender, receiver) = tokio::sync::mpsc::channel(berth_backup::pipeline::CHANNEL_DEPTH);
    tokio::spawn(async move {
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) => {
                let _ = sender.send(Err(e)).await;
                return;
            }
        };
        let mut stream =
            tokio_util::io::ReaderStream::with_capacity(file, berth_backup::pipeline::CHUNK);
        while let Some(chunk) = stream.next().await {
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    receiver
}

// ---- metrics -------------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BackupLabels {
    pub app: String,
    pub backup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BackupRunLabels {
    pub app: String,
    pub backup: String,
    /// `ok`, `partial` or `failed`.
    pub status: String,
}

/// `berth_backup_runs_total{app,backup,status}` and
/// `berth_backup_last_success_timestamp_seconds{app,backup}`: enough to alert on a backup
/// that failed or has not succeeded for too long.
#[derive(Default, Clone)]
pub struct BackupMetrics {
    runs: prometheus_client::metrics::family::Family<
        BackupRunLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    last_success: prometheus_client::metrics::family::Family<
        BackupLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

impl BackupMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "berth_backup_runs",
            "Backup runs by outcome",
            self.runs.clone(),
        );
        registry.register(
            "berth_backup_last_success_timestamp_seconds",
            "When each backup last succeeded on every storage (Unix time)",
            self.last_success.clone(),
        );
    }

    pub(crate) fn record(&self, app: &str, backup: &str, status: &str) {
        self.runs
            .get_or_create(&BackupRunLabels {
                app: app.to_owned(),
                backup: backup.to_owned(),
                status: status.to_owned(),
            })
            .inc();
        if status == "ok" {
            self.last_success
                .get_or_create(&BackupLabels {
                    app: app.to_owned(),
                    backup: backup.to_owned(),
                })
                .set(jiff::Timestamp::now().as_second());
        }
    }
}

// ---- schedule and status -----------------------------------------------------------------

/// What the scheduler plans, for `berth status`: (app, backup, operation) -> next run (ms).
pub type PlannedRuns = Mutex<std::collections::HashMap<(String, String, &'static str), i64>>;

impl Engine {
    /// Every app with a live release, with its manifest.
    fn live_manifests(&self) -> Vec<Manifest> {
        let Ok(apps) = self.store.apps() else {
            return Vec::new();
        };
        apps.into_iter()
            .filter_map(|app| self.store.live_release(&app.name).ok().flatten())
            .filter_map(|release| release_manifest(&release).ok())
            .collect()
    }

    /// `berth status`'s view of an app's backups.
    pub(crate) fn backup_status(&self, manifest: &Manifest) -> Vec<berth_api::BackupStatus> {
        let app = &manifest.app;
        let runs = self.store.latest_backup_runs(app).unwrap_or_default();
        let copies = self.store.backup_copies(app, None).unwrap_or_default();
        let planned = self
            .planned_backups
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
                        .store
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
    fn first_due(
        &self,
        app: &str,
        name: &str,
        operation: &str,
        schedule: &berth_backup::schedule::Schedule,
        now: jiff::Timestamp,
        tz: &jiff::tz::TimeZone,
    ) -> jiff::Timestamp {
        let last = self
            .store
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
    engine: Arc<Engine>,
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
        let now = jiff::Timestamp::now();
        let mut wanted = std::collections::HashSet::new();
        for manifest in engine.live_manifests() {
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
                        engine.first_due(
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
                        engine.clone(),
                        manifest.clone(),
                        backup.name.clone(),
                        operation,
                    );
                }
            }
        }
        due.retain(|key, _| wanted.contains(key));
        {
            let mut planned = engine
                .planned_backups
                .lock()
                .unwrap_or_else(|p| p.into_inner());
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
            .map(|at| at.duration_since(jiff::Timestamp::now()).unsigned_abs())
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_millis(200), Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = engine.schedules_changed.notified() => {}
            _ = &mut stop => return,
        }
    }
}

fn spawn_scheduled(engine: Arc<Engine>, manifest: Manifest, name: String, operation: &'static str) {
    let job = format!("scheduled {operation} of {}/{name}", manifest.app);
    let workers = engine.workers().clone();
    workers.spawn_job(job, move |report, _stop| async move {
        let app = manifest.app.clone();
        report.running(format!("{operation} {app}/{name}"));
        let _lock = engine
            .backup_locks
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
                engine
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
                engine
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
