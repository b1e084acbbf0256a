//! Runtime-neutral descriptions of containers, images and their state. Nothing here is a
//! Docker API type, so callers and fakes never depend on bollard.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeInfo {
    pub version: String,
    pub api_version: String,
    /// Where the engine keeps images, containers and volumes (`/var/lib/docker`), when it
    /// says.
    pub data_root: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    pub labels: Labels,
    pub network: Option<NetworkAttachment>,
    pub mounts: Vec<MountSpec>,
    /// Docker restart policy name; `None` for one-off containers.
    pub restart: Option<String>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub log: LogSpec,
    pub gpus: Option<GpuRequest>,
    pub init: bool,
    pub stop_timeout: Option<Duration>,
    pub publish: Vec<PublishedPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAttachment {
    pub network: String,
    /// Host names other containers on the network resolve to this one.
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountKind,
    /// Volume name, or host path for a bind mount.
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Volume,
    Bind,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSpec {
    pub driver: String,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuRequest {
    All,
    Count(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerState {
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
    Removing,
    Unknown,
}

impl ContainerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Restarting => "restarting",
            ContainerState::Paused => "paused",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Removing => "removing",
            ContainerState::Unknown => "unknown",
        }
    }
}

/// What `list_containers` reports about each container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    pub state: ContainerState,
}

/// What happened to a container, from the runtime's event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerAction {
    Start,
    /// Its main process ended (the exit code says how).
    Die,
    /// The kernel killed a process of it for exceeding its memory limit.
    Oom,
}

/// One container event: which container, what happened, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    pub name: String,
    pub action: ContainerAction,
    /// The container's labels (Docker sends them with each event).
    pub labels: Labels,
    /// For `Die`: the exit code.
    pub exit_code: Option<i64>,
    /// Unix time of the event, in milliseconds.
    pub time_ms: i64,
}

/// What `inspect_container` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image_id: String,
    pub labels: Labels,
    pub state: ContainerState,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub restart_count: i64,
    /// The host's process id of its main process, while it runs.
    pub pid: Option<i64>,
    /// RFC 3339 start time as Docker reports it.
    pub started_at: Option<String>,
    /// IP address on each network the container is attached to.
    pub addresses: BTreeMap<String, IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    /// `repository@sha256:...` for each registry the image was pulled from or pushed to;
    /// empty for an image built or loaded on this host.
    pub digests: Vec<String>,
    /// The user the image runs as (`Config.User`: empty for root, `1000`, `app:app`); empty
    /// when the listing did not say.
    pub user: String,
    pub size: u64,
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildRequest {
    /// A tar archive of the build context.
    pub context_tar: PathBuf,
    pub dockerfile: String,
    /// `repository:tag` to give the built image.
    pub tag: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only the last N lines (all when `None`).
    pub tail: Option<usize>,
    pub follow: bool,
    /// Only lines since this Unix time (seconds).
    pub since: Option<i64>,
    pub timestamps: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: LogStream,
    pub data: bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// Combined stdout and stderr, truncated to the limit asked for.
    pub output: String,
}

/// Credentials for one registry, for pulls.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// `host[:port]` as references name it (`ghcr.io`, `registry.example.com:5000`).
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The registry a reference pulls from: `ghcr.io` for `ghcr.io/o/i:t`, `docker.io` for
/// `redis:7` or `library/redis`.
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// Whether a reference names one image for good (`name@sha256:...`), so a local copy never
/// needs to be checked against the registry.
pub fn is_pinned(reference: &str) -> bool {
    reference.contains("@sha256:")
}
