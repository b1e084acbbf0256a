//! Where a command of a backup or restore runs.

use crate::*;

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

pub(crate) fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
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
