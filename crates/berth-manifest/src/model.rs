//! The resolved, validated manifest: what the agent acts on and stores with each release.
//! Every value has been checked and every default filled in.

use crate::backups::BackupSettings;
use crate::units::duration_ms;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The app's instance name on the agent (`app`, or `app-ENV` for an environment overlay
    /// that does not name the app itself).
    pub app: String,
    /// The environment overlay applied, if any.
    pub environment: Option<String>,
    /// Services replaced on every deploy, by name.
    pub services: BTreeMap<String, Service>,
    /// Long-lived accessories, by name.
    pub accessories: BTreeMap<String, Service>,
    pub deploy: DeploySettings,
    /// Backups, their storage and encryption. Absent in manifests stored before backups
    /// existed.
    #[serde(default)]
    pub backup: BackupSettings,
    /// The private registry images are pulled from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<Registry>,
    /// Where alerts go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<crate::alerts::AlertChannel>,
    /// Checks from outside the containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<crate::alerts::Monitor>,
    /// Alerts on measurements past a limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<crate::thresholds::Threshold>,
    /// Where every line the app logs is also sent (`[logging] syslog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_forward: Option<LogForward>,
    /// The public status page (`[status_page]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_page: Option<StatusPage>,
}

/// `[status_page]`: a public, read-only page of the services' state and 90 days of uptime,
/// served by the proxy itself. It shows what is listed here and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusPage {
    /// Lower-case host names; empty serves it on every host at `path`.
    pub domains: Vec<String>,
    /// `/` or a prefix without a trailing slash.
    pub path: String,
    pub title: String,
    /// Services and accessories shown, in order (by default those with a route).
    pub services: Vec<String>,
}

/// `[logging] syslog`: a log host that gets every line as an RFC 5424 message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogForward {
    /// `udp` or `tcp`.
    pub transport: String,
    pub host: String,
    pub port: u16,
    /// The syslog facility's number (`user` 1, `daemon` 3, `local0` 16 ... `local7` 23).
    pub facility: u8,
}

/// A registry and the credentials berth pulls from it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// `host[:port]`, as image references name it.
    pub server: String,
    pub username: String,
    /// The berth secret holding the password or token.
    pub password_secret: String,
}

impl Manifest {
    /// Services that receive HTTP traffic through berth's proxy or on the app network.
    pub fn web_services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().filter(|s| s.role() == Role::Web)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Service> {
        self.services.values().filter(|s| s.role() == Role::Worker)
    }

    /// Every secret name a deploy needs: the services' and accessories', and the registry
    /// password's.
    pub fn secret_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .services
            .values()
            .chain(self.accessories.values())
            .flat_map(|s| s.secrets.iter().map(|r| r.name.as_str()))
            .chain(self.registry.iter().map(|r| r.password_secret.as_str()))
            .chain(self.alerts.iter().flat_map(|c| c.secret_names()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Each secret the services and accessories use, with the names of those that use it.
    pub fn secret_users(&self) -> BTreeMap<String, Vec<String>> {
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for service in self.services.values().chain(self.accessories.values()) {
            for secret in &service.secrets {
                users
                    .entry(secret.name.clone())
                    .or_default()
                    .push(service.name.clone());
            }
        }
        users
    }

    /// Names of the services in an order that respects `depends_on` among services.
    pub fn service_start_order(&self) -> Vec<&str> {
        topological_order(&self.services)
    }

    /// Names of the accessories in an order that respects `depends_on` among accessories.
    pub fn accessory_start_order(&self) -> Vec<&str> {
        topological_order(&self.accessories)
    }
}

fn topological_order(services: &BTreeMap<String, Service>) -> Vec<&str> {
    let mut ordered: Vec<&str> = Vec::new();
    // Validation has refused cycles, so repeatedly taking every service whose in-group
    // dependencies are already placed terminates.
    while ordered.len() < services.len() {
        let before = ordered.len();
        for (name, service) in services {
            if ordered.contains(&name.as_str()) {
                continue;
            }
            let ready = service
                .depends_on
                .iter()
                .filter(|d| services.contains_key(*d))
                .all(|d| ordered.contains(&d.as_str()));
            if ready {
                ordered.push(name);
            }
        }
        if ordered.len() == before {
            // Unreachable for validated manifests; keep the rest in name order.
            for name in services.keys() {
                if !ordered.contains(&name.as_str()) {
                    ordered.push(name);
                }
            }
        }
    }
    ordered
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Listens on a port; gated by an HTTP or TCP check; may be routed.
    Web,
    /// No port; replaced after the web services are live.
    Worker,
    /// Long-lived; not replaced by deploys.
    Accessory,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Web => "web",
            Role::Worker => "worker",
            Role::Accessory => "accessory",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploySettings {
    pub keep_releases: u32,
    #[serde(with = "duration_ms")]
    pub drain_timeout: Duration,
    /// How long the old release's WebSockets and event streams may stay open after a
    /// deploy before berth closes them properly (the client reconnects to the new release).
    #[serde(with = "duration_ms", default = "default_websocket_drain")]
    pub websocket_drain: Duration,
    #[serde(with = "duration_ms")]
    pub release_timeout: Duration,
}

/// One hour: an old container holding WebSockets only costs memory, and a client that is
/// cut has to reconnect (a chat loses its place); a deploy does not wait for them.
pub const DEFAULT_WEBSOCKET_DRAIN: Duration = Duration::from_secs(3600);

fn default_websocket_drain() -> Duration {
    DEFAULT_WEBSOCKET_DRAIN
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub accessory: bool,
    pub source: ImageSource,
    pub port: Option<u16>,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<SecretRef>,
    pub volumes: Vec<VolumeMount>,
    pub healthcheck: Healthcheck,
    pub release_command: Option<Vec<String>>,
    pub replicas: u32,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    #[serde(with = "duration_ms")]
    pub stop_timeout: Duration,
    pub depends_on: Vec<String>,
    pub gpus: Option<Gpus>,
    pub route: Option<Route>,
    pub publish: Vec<PortBinding>,
    pub restart: RestartPolicy,
    pub init: bool,
    pub logging: Logging,
}

impl Service {
    pub fn role(&self) -> Role {
        if self.accessory {
            Role::Accessory
        } else if self.port.is_some() {
            Role::Web
        } else {
            Role::Worker
        }
    }

    /// A stable fingerprint of everything that shapes this service's containers. Accessories
    /// are recreated only when it changes. Secret values are mixed in by the caller.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    /// Use an existing image, pulled as `pull` says.
    Image {
        reference: String,
        /// Absent: the role's default ([`PullPolicy::default_for`]). Left out of the stored
        /// form when absent, so manifests written before it fingerprint the same.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pull: Option<PullPolicy>,
    },
    /// Build from a context directory on the machine running the CLI.
    Build(BuildSpec),
}

/// When an image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// On every deploy: a tag that moved (`:latest`, `:main`) is deployed as what it names
    /// now. An image built or loaded on the server, or pinned by digest, is used as it is.
    Always,
    /// Only when the image is not on the server.
    Missing,
}

impl PullPolicy {
    /// Services follow their tag; accessories (databases) keep their image until the
    /// reference changes, so a deploy never restarts a database for an upstream rebuild.
    pub fn default_for(accessory: bool) -> Self {
        if accessory {
            PullPolicy::Missing
        } else {
            PullPolicy::Always
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// Absolute path of the context directory (resolved against the manifest's directory).
    pub context: PathBuf,
    /// Dockerfile path relative to the context.
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub name: String,
    pub delivery: SecretDelivery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretDelivery {
    /// An environment variable named like the secret.
    Env,
    /// A read-only file at `/run/secrets/NAME`.
    File,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub source: VolumeSource,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeSource {
    /// A Docker named volume, created as `APP_NAME` so apps never share one by accident.
    Named(String),
    /// A directory on the agent's host.
    Bind(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Healthcheck {
    pub probe: Probe,
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    #[serde(with = "duration_ms")]
    pub start_timeout: Duration,
    /// Failed checks in a row after which a running replica counts as unhealthy.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long a replica may stay unhealthy before berth replaces it; zero never does.
    #[serde(with = "duration_ms", default = "default_restart_after")]
    pub restart_after: Duration,
}

pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
pub const DEFAULT_RESTART_AFTER: Duration = Duration::from_secs(60);

fn default_failure_threshold() -> u32 {
    DEFAULT_FAILURE_THRESHOLD
}

fn default_restart_after() -> Duration {
    DEFAULT_RESTART_AFTER
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Probe {
    /// GET `path` on the service's port; healthy when the status is in range.
    Http { path: String, status: StatusRange },
    /// Healthy when the port accepts a connection.
    Tcp,
    /// Healthy when the command exits 0 inside the container.
    Command(Vec<String>),
    /// Healthy when the container is still running after the start period (workers and
    /// accessories without a check).
    Running,
}

impl Probe {
    pub fn describe(&self, port: Option<u16>) -> String {
        match self {
            Probe::Http { path, status } => format!(
                "GET {path} on port {} expecting {status}",
                port.unwrap_or_default()
            ),
            Probe::Tcp => format!("TCP connect to port {}", port.unwrap_or_default()),
            Probe::Command(cmd) => format!("command `{}` exits 0", cmd.join(" ")),
            Probe::Running => "container keeps running".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRange {
    pub min: u16,
    pub max: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.min..=self.max).contains(&status)
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "status {}", self.min)
        } else if self.min.is_multiple_of(100) && self.max == self.min + 99 {
            write!(f, "status {}xx", self.min / 100)
        } else {
            write!(f, "status {}-{}", self.min, self.max)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gpus {
    All,
    Count(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Lower-case host names; empty routes every host.
    pub domains: Vec<String>,
    /// Path prefix, starting with `/`, without a trailing slash unless it is `/`.
    pub path: String,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default = "yes")]
    pub redirect_http: bool,
    #[serde(default = "yes")]
    pub hsts: bool,
    #[serde(default = "default_max_body")]
    pub max_body: u64,
    #[serde(with = "duration_ms", default = "default_response_timeout")]
    pub response_timeout: Duration,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Requests served at once (WebSockets and streams count until they end).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub balance: Balance,
    /// Requests must come from a logged-in console user (checked by the proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RouteAuth>,
}

/// Who may open a route's pages: console users with at least `role`, and a second factor
/// when `two_factor` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteAuth {
    pub role: AuthRole,
    #[serde(default)]
    pub two_factor: bool,
    /// HTTP basic auth instead of a console login: the secret whose value holds one
    /// `name:$argon2id$...` line per user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_users_secret: Option<String>,
}

/// A console role, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthRole {
    #[default]
    Viewer,
    Deployer,
    Admin,
}

impl AuthRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthRole::Viewer => "viewer",
            AuthRole::Deployer => "deployer",
            AuthRole::Admin => "admin",
        }
    }
}

fn yes() -> bool {
    true
}

pub const DEFAULT_MAX_BODY: u64 = 10 << 20;

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tls {
    /// Certificates from the agent's ACME directory for every domain (when the agent serves
    /// HTTPS); plain HTTP for a route without domains.
    #[default]
    Auto,
    Off,
    /// Certificate and key files on the server.
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests: u32,
    #[serde(with = "duration_ms")]
    pub per: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    UnlessStopped,
    Always,
    OnFailure,
    No,
}

impl RestartPolicy {
    pub fn as_docker(self) -> &'static str {
        match self {
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::No => "no",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logging {
    pub driver: String,
    pub max_size: u64,
    pub max_files: u32,
}
