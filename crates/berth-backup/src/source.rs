//! Where the plaintext of a backup comes from, and how a restored copy is checked.
//!
//! Sources that need Docker (dumps run inside a container) live in the agent; this module has
//! the ones that only need the server: a SQLite file, a directory, and a dump program run on
//! the server. [`judge_dump`] holds the rules every dump, wherever it runs, must pass.

use crate::archive;
use crate::error::{BackupError, Result};
use crate::meta::ContentKind;
use crate::pipeline::{ChannelReader, ChannelWriter};
use crate::sqlite;
use async_trait::async_trait;
use bytes::Bytes;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Plaintext arriving in chunks; an `Err` item means the producer failed.
pub type PlainReceiver = mpsc::Receiver<io::Result<Bytes>>;
pub type PlainSender = mpsc::Sender<io::Result<Bytes>>;

#[async_trait]
pub trait Source: Send {
    fn kind(&self) -> ContentKind;
    /// What is backed up, for people and the backup's record.
    fn describe(&self) -> String;
    /// Sends the whole plaintext into `out`, then returns a summary (`1200 pages`). An error
    /// means the backup must not be kept, whatever was sent.
    async fn produce(&mut self, out: PlainSender) -> Result<String>;
}

/// Reads plaintext to its end: a content check, or a restore writing it somewhere.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Returns what it found or did, or why it failed.
    async fn consume(&self, input: PlainReceiver) -> std::result::Result<String, String>;
}

/// Runs a sync producer on a blocking thread, writing into `out`.
pub async fn produce_blocking<F>(out: PlainSender, produce: F) -> Result<String>
where
    F: FnOnce(&mut ChannelWriter) -> Result<String> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter::new(out);
        let result = produce(&mut writer).and_then(|summary| {
            io::Write::flush(&mut writer)
                .map_err(|e| BackupError::io("cannot pass the data on", e))?;
            Ok(summary)
        });
        if let Err(error) = &result {
            writer.fail(io::Error::other(error.to_string()));
        }
        result
    })
    .await
    .map_err(|e| BackupError::Source(format!("the reader stopped: {e}")))?
}

/// A SQLite database file on the server (for a service, the file inside its volume).
pub struct SqliteFile {
    pub path: PathBuf,
    /// How the file is named for people (`/data/app.db in service web`).
    pub label: String,
}

#[async_trait]
impl Source for SqliteFile {
    fn kind(&self) -> ContentKind {
        ContentKind::Sqlite
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.label)
    }

    async fn produce(&mut self, out: PlainSender) -> Result<String> {
        let path = self.path.clone();
        produce_blocking(out, move |writer| {
            let info = sqlite::snapshot(&path, writer)?;
            Ok(format!(
                "{} pages of {} bytes, {} journal",
                info.pages, info.page_size, info.journal_mode
            ))
        })
        .await
    }
}

/// A directory on the server (for a named volume, its mount point), as a tar stream.
pub struct Directory {
    pub path: PathBuf,
    pub label: String,
    pub kind: ContentKind,
}

#[async_trait]
impl Source for Directory {
    fn kind(&self) -> ContentKind {
        self.kind
    }

    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn produce(&mut self, out: PlainSender) -> Result<String> {
        let path = self.path.clone();
        produce_blocking(out, move |writer| {
            archive::write_dir(&path, writer).map(|info| info.to_string())
        })
        .await
    }
}

/// What a dump program did, wherever it ran.
#[derive(Debug, Default)]
pub struct DumpOutcome {
    pub exit_code: Option<i64>,
    /// The end of its error output (at most [`STDERR_KEEP`] bytes).
    pub stderr: String,
    pub bytes: u64,
    /// The last bytes of its output, for format trailers.
    pub tail: Vec<u8>,
}

pub const STDERR_KEEP: usize = 16 * 1024;
pub const TAIL_KEEP: usize = 512;

impl DumpOutcome {
    /// Remembers the end of the output as it passes.
    pub fn saw(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > TAIL_KEEP {
            let cut = self.tail.len() - TAIL_KEEP;
            self.tail.drain(..cut);
        }
    }

    pub fn saw_stderr(&mut self, chunk: &[u8]) {
        self.stderr.push_str(&String::from_utf8_lossy(chunk));
        if self.stderr.len() > STDERR_KEEP {
            let mut cut = self.stderr.len() - STDERR_KEEP;
            while !self.stderr.is_char_boundary(cut) {
                cut += 1;
            }
            self.stderr.drain(..cut);
        }
    }
}

/// The rules a dump must pass to be kept: it exited 0, printed no error, printed something,
/// and (for formats with a trailer) was not cut short.
pub fn judge_dump(what: &str, kind: ContentKind, outcome: &DumpOutcome) -> Result<String> {
    let stderr_lines: Vec<&str> = outcome
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let last_lines = || {
        let start = stderr_lines.len().saturating_sub(5);
        stderr_lines[start..].join(" | ")
    };
    match outcome.exit_code {
        Some(0) => {}
        Some(code) => {
            let said = if stderr_lines.is_empty() {
                "it printed no error".to_owned()
            } else {
                format!("it said: {}", last_lines())
            };
            return Err(BackupError::Source(format!(
                "{what} exited with status {code}; {said}"
            )));
        }
        None => {
            return Err(BackupError::Source(format!(
                "{what} did not report an exit status (it was killed or the container stopped)"
            )));
        }
    }
    let errors: Vec<&&str> = stderr_lines
        .iter()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            lower.contains("error") || lower.contains("fatal") || lower.contains("panic")
        })
        .collect();
    if let Some(first) = errors.first() {
        return Err(BackupError::Source(format!(
            "{what} exited 0 but reported an error: {first}"
        )));
    }
    if outcome.bytes == 0 {
        return Err(BackupError::Source(format!(
            "{what} printed nothing; an empty dump is not a backup"
        )));
    }
    if kind == ContentKind::MysqlDump && !mysql_dump_complete(&outcome.tail) {
        return Err(BackupError::Source(format!(
            "{what} output ends without its `-- Dump completed` line: the dump was cut short"
        )));
    }
    if kind == ContentKind::PostgresDump && outcome.bytes < 5 {
        return Err(BackupError::Source(format!(
            "{what} printed {} bytes, too few for a dump",
            outcome.bytes
        )));
    }
    let mut summary = format!("{what} printed {} bytes", outcome.bytes);
    if !stderr_lines.is_empty() {
        summary.push_str(&format!(" (and said: {})", last_lines()));
    }
    Ok(summary)
}

/// mysqldump and mariadb-dump end a complete dump with `-- Dump completed on …`.
fn mysql_dump_complete(tail: &[u8]) -> bool {
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.starts_with("-- Dump completed"))
}

/// What a command printed on standard output, when it was not streamed elsewhere (at most
/// [`STDOUT_KEEP`] bytes).
pub const STDOUT_KEEP: usize = 64 * 1024;

/// Runs a program on the server: `input` (if any) is fed to its standard input, its standard
/// output goes to `out` (if any) or is collected, and its error output is kept for messages.
/// Returns what it did and the collected output.
pub async fn run_host(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    input: Option<PlainReceiver>,
    out: Option<&PlainSender>,
) -> Result<(DumpOutcome, String)> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                BackupError::Source(format!(
                    "{program} is not installed on this server; install it (for PostgreSQL the \
                     postgresql-client package of the server's major version, for MariaDB \
                     mariadb-client) or run it in the database's container \
                     (source = {{ … service = \"NAME\" }})"
                ))
            } else {
                BackupError::Source(format!("cannot start {program}: {e}"))
            }
        })?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(BackupError::Source(format!(
            "{program} started without its output pipes"
        )));
    };
    let feeder = match (input, child.stdin.take()) {
        (Some(mut input), Some(mut stdin)) => Some(tokio::spawn(async move {
            while let Some(chunk) = input.recv().await {
                match chunk {
                    Ok(bytes) => {
                        if stdin.write_all(&bytes).await.is_err() {
                            // The program stopped reading; its exit status tells why.
                            return true;
                        }
                    }
                    // The input failed: leave without closing cleanly, so the program sees
                    // a broken stream rather than a complete one.
                    Err(_) => return false,
                }
            }
            stdin.shutdown().await.is_ok()
        })),
        _ => None,
    };
    let stderr_task = tokio::spawn(async move {
        let mut text = Vec::new();
        let mut buffer = vec![0u8; 4096];
        loop {
            match stderr.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    text.extend_from_slice(&buffer[..n]);
                    if text.len() > STDERR_KEEP * 2 {
                        text.drain(..text.len() - STDERR_KEEP);
                    }
                }
            }
        }
        text
    });
    let mut outcome = DumpOutcome::default();
    let mut collected = Vec::new();
    let mut buffer = vec![0u8; crate::pipeline::CHUNK];
    loop {
        let n = stdout
            .read(&mut buffer)
            .await
            .map_err(|e| BackupError::Source(format!("cannot read {program}'s output: {e}")))?;
        if n == 0 {
            break;
        }
        outcome.saw(&buffer[..n]);
        match out {
            Some(out) => {
                if out
                    .send(Ok(Bytes::copy_from_slice(&buffer[..n])))
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                    return Err(BackupError::Source(format!(
                        "the backup was abandoned while {program} ran"
                    )));
                }
            }
            None => {
                let room = STDOUT_KEEP.saturating_sub(collected.len());
                collected.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
    let fed_cleanly = match feeder {
        Some(task) => task.await.unwrap_or(false),
        None => true,
    };
    if !fed_cleanly {
        let _ = child.kill().await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| BackupError::Source(format!("cannot wait for {program}: {e}")))?;
    outcome.exit_code = status.code().map(i64::from);
    outcome.saw_stderr(&stderr_task.await.unwrap_or_default());
    if !fed_cleanly && outcome.exit_code == Some(0) {
        outcome.exit_code = None;
    }
    Ok((outcome, String::from_utf8_lossy(&collected).into_owned()))
}

/// A dump program run on the server itself (`pg_dump` against a URL, `mariadb-dump` against
/// a host), its output streamed.
pub struct Process {
    pub program: String,
    pub args: Vec<String>,
    /// Environment for the program (passwords go here, never in arguments).
    pub env: Vec<(String, String)>,
    pub kind: ContentKind,
    pub label: String,
}

#[async_trait]
impl Source for Process {
    fn kind(&self) -> ContentKind {
        self.kind
    }

    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn produce(&mut self, out: PlainSender) -> Result<String> {
        let (outcome, _) = run_host(&self.program, &self.args, &self.env, None, Some(&out)).await?;
        let result = judge_dump(&self.program, self.kind, &outcome);
        if let Err(error) = &result {
            let _ = out.send(Err(io::Error::other(error.to_string()))).await;
        }
        result
    }
}

/// The checks berth can run on a restored plaintext by itself.
pub struct BuiltinCheck {
    pub kind: ContentKind,
    /// Where a restored SQLite database is written to be checked.
    pub scratch: PathBuf,
}

#[async_trait]
impl Consumer for BuiltinCheck {
    async fn consume(&self, input: PlainReceiver) -> std::result::Result<String, String> {
        let kind = self.kind;
        let scratch = self.scratch.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader::new(input);
            match kind {
                ContentKind::Sqlite => check_sqlite(&mut reader, &scratch),
                ContentKind::Tar => archive::check(&mut reader)
                    .map(|info| format!("the archive lists cleanly: {info}")),
                ContentKind::BerthState => check_state(&mut reader),
                ContentKind::MysqlDump => check_mysql(&mut reader),
                ContentKind::PostgresDump => check_pg_header(&mut reader),
                ContentKind::Stream => {
                    let n = io::copy(&mut reader, &mut io::sink())
                        .map_err(|e| format!("reading it failed: {e}"))?;
                    if n == 0 {
                        Err("it is empty".to_owned())
                    } else {
                        Ok(format!("{n} bytes read back"))
                    }
                }
            }
        })
        .await
        .map_err(|e| format!("the check stopped: {e}"))?
    }
}

fn check_sqlite(
    reader: &mut dyn io::Read,
    scratch: &std::path::Path,
) -> std::result::Result<String, String> {
    std::fs::create_dir_all(scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let file = tempfile::Builder::new()
        .prefix("verify-")
        .suffix(".db")
        .tempfile_in(scratch)
        .map_err(|e| format!("cannot create a scratch file in {}: {e}", scratch.display()))?;
    let path = file.path().to_owned();
    let started = std::time::Instant::now();
    {
        let mut out = io::BufWriter::with_capacity(crate::pipeline::CHUNK, file.as_file());
        io::copy(reader, &mut out)
            .map_err(|e| format!("cannot restore it to {}: {e}", path.display()))?;
        io::Write::flush(&mut out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let written = started.elapsed();
    let report = sqlite::check(&path)?;
    tracing::debug!(
        written_ms = written.as_millis() as u64,
        checked_ms = (started.elapsed() - written).as_millis() as u64,
        "SQLite copy restored to a scratch file and checked"
    );
    Ok(format!("restored to a scratch file: {report}"))
}

fn check_state(reader: &mut dyn io::Read) -> std::result::Result<String, String> {
    let mut archive = tar::Archive::new(reader);
    let mut names = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the archive is damaged or cut short: {e}"))?;
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        io::copy(&mut entry, &mut io::sink())
            .map_err(|e| format!("the archive is cut short in {name}: {e}"))?;
        names.push(name);
    }
    crate::archive::drain(archive.into_inner())
        .map_err(|e| format!("reading past the archive's end failed: {e}"))?;
    if !names.iter().any(|n| n == "state.db") {
        return Err("it holds no state.db".to_owned());
    }
    Ok(format!("the archive lists cleanly: {} files", names.len()))
}

fn check_mysql(reader: &mut dyn io::Read) -> std::result::Result<String, String> {
    let mut outcome = DumpOutcome::default();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| format!("reading it failed: {e}"))?;
        if n == 0 {
            break;
        }
        outcome.saw(&buffer[..n]);
    }
    if mysql_dump_complete(&outcome.tail) {
        Ok(format!(
            "{} bytes ending with `-- Dump completed`",
            outcome.bytes
        ))
    } else {
        Err("the dump ends without its `-- Dump completed` line: it was cut short".to_owned())
    }
}

/// Without PostgreSQL's tools at hand, at least the custom format's signature and a full read.
fn check_pg_header(reader: &mut dyn io::Read) -> std::result::Result<String, String> {
    let mut magic = [0u8; 5];
    reader
        .read_exact(&mut magic)
        .map_err(|_| "it is too short to be a pg_dump archive".to_owned())?;
    if &magic != b"PGDMP" {
        return Err("it does not start with pg_dump's PGDMP signature".to_owned());
    }
    let n = io::copy(reader, &mut io::sink()).map_err(|e| format!("reading it failed: {e}"))?;
    Ok(format!("a pg_dump archive of {} bytes", n + 5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(code: i64, stderr: &str, out: &[u8]) -> DumpOutcome {
        let mut o = DumpOutcome {
            exit_code: Some(code),
            ..DumpOutcome::default()
        };
        o.saw(out);
        o.saw_stderr(stderr.as_bytes());
        o
    }

    #[test]
    fn dumps_are_judged_by_status_errors_emptiness_and_trailer() {
        let ok = judge_dump(
            "pg_dump",
            ContentKind::PostgresDump,
            &outcome(0, "", b"PGDMP..."),
        );
        assert!(ok.is_ok());
        let failed = judge_dump(
            "pg_dump",
            ContentKind::PostgresDump,
            &outcome(1, "pg_dump: error: database \"nope\" does not exist\n", b""),
        )
        .unwrap_err()
        .to_string();
        assert!(failed.contains("status 1"), "{failed}");
        assert!(failed.contains("does not exist"), "{failed}");
        let said_error = judge_dump(
            "dump",
            ContentKind::Stream,
            &outcome(0, "ERROR: permission denied for table t\n", b"partial"),
        )
        .unwrap_err()
        .to_string();
        assert!(said_error.contains("reported an error"), "{said_error}");
        let empty = judge_dump("dump", ContentKind::Stream, &outcome(0, "", b""))
            .unwrap_err()
            .to_string();
        assert!(empty.contains("printed nothing"), "{empty}");
        let cut = judge_dump(
            "mariadb-dump",
            ContentKind::MysqlDump,
            &outcome(0, "", b"CREATE TABLE t (x int);\nINSERT INTO t VALUES (1"),
        )
        .unwrap_err()
        .to_string();
        assert!(cut.contains("cut short"), "{cut}");
        let whole = judge_dump(
            "mariadb-dump",
            ContentKind::MysqlDump,
            &outcome(
                0,
                "",
                b"INSERT INTO t VALUES (1);\n-- Dump completed on 2026-11-23 13:07:03\n",
            ),
        );
        assert!(whole.is_ok());
        let warned = judge_dump(
            "mysqldump",
            ContentKind::Stream,
            &outcome(0, "mysqldump: [Warning] Using a password\n", b"x"),
        )
        .unwrap();
        assert!(warned.contains("Warning"), "{warned}");
    }

    #[test]
    fn the_tail_keeps_only_the_end() {
        let mut o = DumpOutcome::default();
        o.saw(&vec![b'a'; 10_000]);
        o.saw(b"\n-- Dump completed on x\n");
        assert_eq!(o.tail.len(), TAIL_KEEP);
        assert!(mysql_dump_complete(&o.tail));
        assert_eq!(o.bytes, 10_000 + 24);
    }

    #[tokio::test]
    async fn a_host_command_reads_its_input_to_the_end_or_sees_it_broken() {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for _ in 0..10 {
                let _ = tx.send(Ok(Bytes::from(vec![b'x'; 100_000]))).await;
            }
        });
        let (outcome, stdout) = run_host("wc", &["-c".to_owned()], &[], Some(rx), None)
            .await
            .unwrap();
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(stdout.trim(), "1000000");

        // A broken input must not look like a complete one, whatever the program says.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Bytes::from_static(b"half"))).await;
            let _ = tx
                .send(Err(io::Error::other("the backup is damaged")))
                .await;
        });
        let (outcome, _) = run_host("cat", &[], &[], Some(rx), None).await.unwrap();
        assert_eq!(outcome.exit_code, None);
    }

    #[tokio::test]
    async fn a_process_dump_streams_its_output_and_fails_on_a_bad_exit() {
        let mut good = Process {
            program: "sh".into(),
            args: vec!["-c".into(), "printf 'hello dump'".into()],
            env: vec![],
            kind: ContentKind::Stream,
            label: "test".into(),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let summary = good.produce(tx).await.unwrap();
        assert!(summary.contains("10 bytes"), "{summary}");
        assert_eq!(rx.recv().await.unwrap().unwrap(), Bytes::from("hello dump"));

        let mut bad = Process {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo partial; echo 'boom: disk error' >&2; exit 3".into(),
            ],
            env: vec![],
            kind: ContentKind::Stream,
            label: "test".into(),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let error = bad.produce(tx).await.unwrap_err().to_string();
        assert!(error.contains("status 3"), "{error}");
        assert!(error.contains("boom"), "{error}");
        // The consumer sees the failure too, not a clean end.
        let mut saw_error = false;
        while let Some(item) = rx.recv().await {
            saw_error |= item.is_err();
        }
        assert!(saw_error);

        let mut missing = Process {
            program: "pg_dump_that_does_not_exist".into(),
            args: vec![],
            env: vec![],
            kind: ContentKind::PostgresDump,
            label: "test".into(),
        };
        let (tx, _rx) = mpsc::channel(4);
        let error = missing.produce(tx).await.unwrap_err().to_string();
        assert!(error.contains("not installed"), "{error}");
    }
}
