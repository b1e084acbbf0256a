//! The container runtime berth drives.
//!
//! [`ContainerRuntime`] is the seam between berth's deploy logic and the outside world: the
//! agent's logic is unit-tested against fakes of it, and [`DockerRuntime`] implements it with
//! the Docker Engine API through bollard (never the `docker` CLI). Errors are classified into
//! [`RuntimeError`] variants that tell the operator the cause and the fix.

pub mod archive;
mod docker;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
mod types;

pub use docker::DockerRuntime;
pub use error::{Result, RuntimeError};
pub use types::*;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use std::path::Path;
use std::time::Duration;

/// Receives output lines (build steps, pull progress) as they happen.
pub type OutputSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A command running inside a container.
pub struct ExecSession {
    pub id: String,
    pub output: BoxStream<'static, Result<LogChunk>>,
    /// The command's standard input, when asked for: shut it down to send end-of-file.
    pub input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
}

/// How to run a command in a container beyond its words.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// `NAME=value` pairs added to the container's environment.
    pub env: Vec<String>,
    /// Run as this user (`postgres`, `1000:1000`) instead of the container's.
    pub user: Option<String>,
    /// Attach standard input ([`ExecSession::input`]).
    pub stdin: bool,
    /// Give the command a terminal: its output arrives as one stream, and
    /// [`ContainerRuntime::resize_exec`] sets its size.
    pub tty: bool,
}

#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Where the runtime is, for messages (`unix:///var/run/docker.sock`).
    fn endpoint(&self) -> String;
    async fn info(&self) -> Result<RuntimeInfo>;

    /// Makes sure the network `name` exists; a new one gets `subnet` (CIDR) when given, else
    /// one of the runtime's default pools. Returns whether it was created now.
    async fn ensure_network(
        &self,
        name: &str,
        labels: &Labels,
        subnet: Option<&str>,
    ) -> Result<bool>;
    /// Whether the network `name` exists.
    async fn network_exists(&self, name: &str) -> Result<bool>;
    /// Every IPv4 subnet the runtime's networks use (CIDR).
    async fn network_subnets(&self) -> Result<Vec<String>>;
    async fn remove_network(&self, name: &str) -> Result<()>;
    async fn ensure_volume(&self, name: &str, labels: &Labels) -> Result<()>;
    async fn remove_volume(&self, name: &str) -> Result<()>;

    /// Builds an image from a context archive and returns it once tagged.
    async fn build_image(
        &self,
        request: &BuildRequest,
        output: OutputSink<'_>,
    ) -> Result<ImageInfo>;
    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>>;
    /// Pulls `reference` (with `auth` for its registry when given) and returns the image
    /// the reference names afterwards.
    async fn pull_image(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        output: OutputSink<'_>,
    ) -> Result<ImageInfo>;
    /// Loads images from a `docker save` archive; returns the references loaded.
    async fn load_image(&self, archive: &Path) -> Result<Vec<String>>;
    async fn tag_image(&self, image: &str, repository: &str, tag: &str) -> Result<()>;
    /// Removes one reference (a tag); the image goes when no tag or container uses it.
    async fn remove_image(&self, reference: &str) -> Result<()>;
    async fn list_images(&self, label_filters: &[(&str, &str)]) -> Result<Vec<ImageInfo>>;
    /// Images whose reference matches a pattern such as `berth/app/*`.
    async fn images_matching(&self, reference: &str) -> Result<Vec<ImageInfo>>;
    /// Names of volumes carrying all the given labels.
    async fn list_volumes(&self, label_filters: &[(&str, &str)]) -> Result<Vec<String>>;
    /// Where a volume's data lives on the host, or `None` when there is no such volume.
    async fn volume_mountpoint(&self, name: &str) -> Result<Option<std::path::PathBuf>>;
    /// Names of networks carrying all the given labels.
    async fn list_networks(&self, label_filters: &[(&str, &str)]) -> Result<Vec<String>>;

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String>;
    async fn start_container(&self, id: &str) -> Result<()>;
    /// SIGTERM, then SIGKILL after `timeout`. Stopping a stopped container is not an error.
    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()>;
    /// Removes a container, stopping it first if needed. Removing a missing one is not an error.
    async fn remove_container(&self, id: &str) -> Result<()>;
    async fn restart_container(&self, id: &str, timeout: Duration) -> Result<()>;
    /// Freezes every process of a running container (writes stop, connections stay open).
    async fn pause_container(&self, id: &str) -> Result<()>;
    async fn unpause_container(&self, id: &str) -> Result<()>;
    async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInfo>>;
    /// Every container (running or not) carrying all the given labels.
    async fn list_containers(
        &self,
        label_filters: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>>;
    /// Starts, deaths and OOM kills of containers carrying all the given labels, as they
    /// happen, until the stream is dropped. The stream ends (or yields an error) when the
    /// runtime goes away; the caller subscribes again.
    fn container_events(
        &self,
        label_filters: &[(&str, &str)],
    ) -> BoxStream<'static, Result<ContainerEvent>>;
    /// Waits for a container to exit and returns its exit code.
    async fn wait_container(&self, id: &str) -> Result<i64>;
    fn logs(&self, id: &str, query: &LogQuery) -> BoxStream<'static, Result<LogChunk>>;

    async fn exec(&self, id: &str, command: &[String]) -> Result<ExecSession> {
        self.exec_with(id, command, &ExecOptions::default()).await
    }
    async fn exec_with(
        &self,
        id: &str,
        command: &[String],
        options: &ExecOptions,
    ) -> Result<ExecSession>;
    /// A regular file of an image (`/etc/passwd`), at most `limit` bytes; `None` when the
    /// image has no such file.
    async fn read_image_file(
        &self,
        image: &str,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>>;
    /// The host process id of a running exec (to hang it up when its terminal goes away).
    async fn exec_pid(&self, exec_id: &str) -> Result<Option<i64>>;
    /// Sets the terminal size of a command started with `tty`.
    async fn resize_exec(&self, exec_id: &str, rows: u16, cols: u16) -> Result<()>;
    /// The exit code of a finished exec, or `None` while it runs.
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>>;

    /// Runs a command to completion, keeping at most `limit` bytes of its output.
    async fn exec_collect(
        &self,
        id: &str,
        command: &[String],
        limit: usize,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let session = self.exec(id, command).await?;
        let mut output = Vec::new();
        let collect = async {
            let mut stream = session.output;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let room = limit.saturating_sub(output.len());
                output.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
            }
            Ok::<_, RuntimeError>(())
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(RuntimeError::Timeout {
                    action: format!("run `{}` in {id}", command.join(" ")),
                    timeout,
                });
            }
        }
        // The output stream ends just before Docker records the exit code.
        let mut exit_code = None;
        for _ in 0..50 {
            exit_code = self.exec_exit_code(&session.id).await?;
            if exit_code.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(ExecOutput {
            exit_code: exit_code.unwrap_or(-1),
            output: String::from_utf8_lossy(&output).into_owned(),
        })
    }

    /// The last `lines` lines of a container's output, for error messages.
    async fn log_tail(&self, id: &str, lines: usize) -> Vec<String> {
        let query = LogQuery {
            tail: Some(lines),
            ..LogQuery::default()
        };
        let mut stream = self.logs(id, &query);
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.data));
        }
        text.lines().map(str::to_owned).collect()
    }
}
