//! How each kind of backup source is taken and checked inside containers: dump commands, the
//! guard that unpauses, berth's own state, PostgreSQL's scratch check.

use super::*;

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

pub(super) async fn run_in_container(
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
pub(super) struct CommandDump {
    pub(super) place: Place,
    pub(super) command: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) kind: ContentKind,
    pub(super) label: String,
    /// How the program is named in messages.
    pub(super) what: String,
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
pub(super) struct Guarded {
    pub(super) inner: Box<dyn Source>,
    pub(super) runtime: Arc<dyn ContainerRuntime>,
    pub(super) pause: Vec<(String, String)>,
    pub(super) before: Option<(Place, Vec<String>)>,
    pub(super) after: Option<(Place, Vec<String>)>,
    pub(super) warnings: Arc<Mutex<Vec<String>>>,
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
pub(super) struct BerthState {
    pub(super) data_dir: PathBuf,
}

/// What a state backup holds besides `state.db`.
pub(super) const STATE_FILES: &[&str] =
    &["secrets.key", "backup.key", "agent-id", "api-token", "tls"];

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
pub(super) struct PostgresCheck {
    pub(super) place: Place,
    pub(super) env: Vec<(String, String)>,
    pub(super) user: String,
    pub(super) by_restore: bool,
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
