//! The agent's API, as types. The agent serves JSON (and newline-delimited JSON for long
//! operations) under `/v1`; the CLI and tests speak it through these types.
//!
//! | method + path | body | answer |
//! |---|---|---|
//! | `GET /v1/info` | | [`AgentInfo`] |
//! | `GET /v1/status[?app=A]` | | [`Status`] |
//! | `POST /v1/uploads` | a tar archive | [`Upload`] |
//! | `POST /v1/deploy` | [`DeployRequest`] | NDJSON [`OperationEvent`]s |
//! | `POST /v1/apps/A/rollback` | [`RollbackRequest`] | NDJSON [`OperationEvent`]s |
//! | `GET /v1/apps/A/rollback/plan[?release=N]` | | [`RollbackPlan`] |
//! | `GET /v1/apps/A/releases/compare?from=N&to=M` | | [`RollbackPlan`] (release M's manifest against N's) |
//! | `GET /v1/workers` | | `Vec<`[`WorkerInfo`]`>` |
//! | `GET /v1/alerts[?app=A&limit=N]` | | [`AlertsAnswer`] |
//! | `GET /v1/top[?app=A]` | | [`TopAnswer`] |
//! | `GET /v1/uptime[?app=A]` | | [`UptimeAnswer`] |
//! | `GET /v1/resources?window=24h[&app=A]` | | [`ResourceHistory`] |
//! | `POST /v1/apps/A/alerts/test` | [`AlertTestRequest`] | [`DeliveryInfo`] |
//! | `POST /v1/alerts/mutes` | [`MuteRequest`] | [`MuteInfo`] |
//! | `DELETE /v1/alerts/mutes/N` | | |
//! | `POST /v1/apps/A/services/S/restart` | [`RestartRequest`] | NDJSON [`OperationEvent`]s |
//! | `GET /v1/apps/A/releases[?limit=N]` | | `Vec<`[`ReleaseInfo`]`>` |
//! | `GET /v1/apps/A/services/S/logs?tail=&follow=&since=` | | NDJSON [`LogLine`]s |
//! | `POST /v1/apps/A/services/S/exec` | [`ExecRequest`] | NDJSON [`ExecEvent`]s |
//! | `GET /v1/apps/A/secrets` | | `Vec<`[`SecretInfo`]`>` |
//! | `PUT /v1/apps/A/secrets/N` | [`SecretValue`] | [`SecretInfo`] |
//! | `GET /v1/apps/A/secrets/N` | | [`SecretValue`] |
//! | `DELETE /v1/apps/A/secrets/N` | | 204 |
//! | `POST /v1/apps/A/secrets/N/generate` | | [`SecretInfo`] |
//! | `GET /v1/audit[?limit=N&offset=N&app=A&actor=X&action=X&result=X]` | | `Vec<`[`AuditEntry`]`>` (newest first; `actor` matches a part) |
//! | `POST /v1/apps/A/maintenance` | [`MaintenanceRequest`] | [`AppStatus`] |
//! | `POST /v1/certificates/D/renew` | | 202 (the renewal runs in the background; [`Status`]'s certificates show it) |
//! | `GET /v1/metrics` | | Prometheus text |
//! | `POST /v1/apps/A/backups/run` | [`BackupRunRequest`] | NDJSON [`OperationEvent`]s |
//! | `POST /v1/apps/A/backups/list` | [`BackupListRequest`] | [`BackupList`] |
//! | `POST /v1/apps/A/backups/verify` | [`BackupVerifyRequest`] | NDJSON [`OperationEvent`]s |
//! | `POST /v1/apps/A/backups/prune` | [`BackupPruneRequest`] | NDJSON [`OperationEvent`]s |
//! | `POST /v1/apps/A/restore` | [`RestoreRequest`] | NDJSON [`OperationEvent`]s |
//! | `GET /v1/apps/A/services/S/attach?spec=HEX` (`Upgrade: berth-exec`) | | 101, then [`ExecFrame`]s both ways |
//! | `POST /v1/apps/A/stop` | [`RestartRequest`] | NDJSON [`OperationEvent`]s |
//! | `POST /v1/apps/A/start` | [`RestartRequest`] | NDJSON [`OperationEvent`]s |
//! | `POST /v1/apps/A/destroy` | [`DestroyRequest`] | NDJSON [`OperationEvent`]s |
//! | `POST /v1/agent/upgrade` | [`UpgradeRequest`] | NDJSON [`OperationEvent`]s |
//! | `POST /v1/agent/stop` | | [`StopAnswer`] |
//! | `GET /v1/tokens` | | `Vec<`[`TokenInfo`]`>` |
//! | `POST /v1/tokens` | [`TokenRequest`] | [`TokenIssued`] |
//! | `DELETE /v1/tokens/N` (N: its name) | | 204 |
//! | `GET /v1/users` | | `Vec<`[`UserInfo`]`>` |
//! | `POST /v1/users` | [`UserRequest`] | [`UserLink`] (a setup link, shown once) |
//! | `POST /v1/users/N/reset` | | [`UserLink`] (a reset link, shown once) |
//! | `POST /v1/users/N/disable` | | [`UserInfo`] (its sessions end) |
//! | `POST /v1/users/N/enable` | | [`UserInfo`] |
//! | `POST /v1/users/N/role` | [`UserRoleRequest`] | [`UserInfo`] (its sessions end) |
//! | `DELETE /v1/users/N/sessions` | | [`SessionsEnded`] |
//! | `POST /v1/users/N/approve` | | [`UserInfo`] (a sign-up request becomes an account) |
//! | `POST /v1/users/N/deny` | | [`UserInfo`] (the request, now removed) |
//! | `GET /v1/console/sign-up` | | [`SignUpPolicy`] |
//! | `POST /v1/console/sign-up` | [`SignUpPolicy`] | [`SignUpPolicy`] |
//! | `GET /v1/console/two-factor` | | [`TwoFactorPolicy`] |
//! | `POST /v1/console/two-factor` | [`TwoFactorPolicy`] | [`TwoFactorPolicy`] |
//!
//! Errors are a non-2xx status with an [`ApiError`] body. Requests carry the caller's
//! identity in the `x-berth-actor` header for the audit log; over TCP they need
//! `Authorization: Bearer TOKEN`: the agent's own token (admin) or one of `/v1/tokens`,
//! whose scope (read < deploy < admin) and app decide what it may call (401 for a missing,
//! wrong, revoked or expired token; 403 for one that may not).

mod health;
pub use health::{HEALTH_JSON, HealthCheck, HealthReport, Verdict, disk_verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ACTOR_HEADER: &str = "x-berth-actor";

/// A byte count for people: `512 B`, `1.6 MiB` (the agent's messages and the CLI agree).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What kind of error an answer carries: what the client did wrong, or what failed.
/// Serialized as kebab-case strings (`not-found`); a kind a newer agent adds reads as `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request itself is wrong (manifest, missing secret, unknown release): exit code 2.
    Invalid,
    /// Another operation holds the app's lock (or the agent's, during an upgrade).
    Locked,
    /// What the request would create already exists.
    Conflict,
    NotFound,
    /// No credentials, or wrong ones.
    Unauthorized,
    /// The credentials are good but do not allow this.
    Forbidden,
    /// The operation was attempted and failed.
    #[serde(other)]
    Failed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Locked => "locked",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Failed => "failed",
        }
    }

    /// Whether the request was at fault (the CLI exits 2), not the operation (exit 1).
    pub fn is_request_error(self) -> bool {
        matches!(
            self,
            ErrorKind::Invalid | ErrorKind::NotFound | ErrorKind::Unauthorized
        )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// A stable machine-readable kind: `invalid`, `locked`, `not-found`, ...
    pub kind: ErrorKind,
    /// Manifest diagnostics, already rendered with file:line:column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// What failed underneath, when a library classified it: `docker-unreachable`,
    /// `disk-full`, `credentials-refused`, `image-unavailable`, ... (stable, for scripts
    /// and the dashboard; the message and hint say it for people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    pub version: String,
    pub data_dir: String,
    pub pid: u32,
    /// Where the proxy listens for HTTP, if it does.
    pub http: Option<String>,
    /// Where the proxy serves HTTPS, if it does.
    #[serde(default)]
    pub https: Option<String>,
    pub docker: DockerStatus,
    /// The console's address (`http://127.0.0.1:9000`), when it is served.
    #[serde(default)]
    pub dashboard: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DockerStatus {
    pub endpoint: String,
    pub version: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeployRequest {
    /// The manifest's text.
    pub manifest: String,
    /// The manifest's path as the user named it, for messages.
    pub manifest_path: String,
    /// The manifest's directory, against which relative paths resolve.
    pub base_dir: String,
    pub environment: Option<String>,
    pub version: Option<String>,
    /// Uploaded build context per service that builds.
    #[serde(default)]
    pub contexts: BTreeMap<String, String>,
    /// Uploaded `docker save` archives to load before images are resolved.
    #[serde(default)]
    pub image_archives: Vec<String>,
    /// Images built by the client (`berth deploy --build local`) and sent in
    /// `image_archives`, by service: used instead of building on the server.
    #[serde(default)]
    pub prebuilt: BTreeMap<String, String>,
    /// Wait for a deploy in progress instead of failing at once.
    #[serde(default)]
    pub wait_for_lock: bool,
    /// Return only once the old release has drained (else it drains in the background).
    #[serde(default)]
    pub wait_drain: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RollbackRequest {
    /// The release to return to; the one before the live release when absent.
    pub release: Option<i64>,
    #[serde(default)]
    pub wait_for_lock: bool,
    /// Return only once the old release has drained.
    #[serde(default)]
    pub wait_drain: bool,
}

/// `GET /v1/workers`: the agent's background work.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerInfo {
    pub name: String,
    /// `running`, `idle` (waiting for its next run), `retrying`, `failed` or `finished`.
    pub state: String,
    /// What it is doing or waiting for, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Milliseconds since the epoch.
    pub started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Completed runs.
    pub runs: u64,
}

/// `GET /v1/apps/{app}/rollback/plan[?release=N]`: where a rollback would go and what it
/// would change besides the code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackPlan {
    pub app: String,
    /// The live release now.
    pub from: i64,
    pub from_version: String,
    /// The release the rollback returns to.
    pub to: i64,
    pub to_version: String,
    /// The manifest's differences, one line each (`+ path`, `- path`, `~ path: old → new`);
    /// empty when only the code changes.
    pub changes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RestartRequest {
    #[serde(default)]
    pub wait_for_lock: bool,
}

/// `POST /v1/apps/{app}/destroy`: remove an app's containers, network, routes and release
/// images, and forget its releases.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct DestroyRequest {
    /// Remove the app's named volumes too (their data is gone for good).
    #[serde(default)]
    pub volumes: bool,
    /// Remove the app's secrets too.
    #[serde(default)]
    pub secrets: bool,
    /// Take every backup the live release defines first; destroy nothing if one fails.
    #[serde(default)]
    pub final_backup: bool,
    #[serde(default)]
    pub wait_for_lock: bool,
}

/// `POST /v1/agent/upgrade`: replace the running agent with a new process of `binary` (an
/// absolute path on the server; default: the agent's own binary as it is on disk now).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct UpgradeRequest {
    #[serde(default)]
    pub binary: Option<String>,
}

/// `POST /v1/agent/stop`: what the agent does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopAnswer {
    pub pid: u32,
    /// How long open requests may take to finish, in seconds.
    pub grace_seconds: u64,
}

/// One line of a deploy, rollback or restart stream. The last line is always `Finished`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum OperationEvent {
    /// A step began.
    Started { step: String },
    /// A step ended well.
    Done {
        step: String,
        elapsed_ms: u64,
        detail: Option<String>,
    },
    /// A step failed (the operation fails with it).
    Failed {
        step: String,
        elapsed_ms: u64,
        message: String,
    },
    /// Output worth showing (build output, waiting for a lock).
    Log { message: String },
    /// Bytes moved so far by a step (a backup read, a restore written).
    Transfer {
        step: String,
        bytes: u64,
        total: Option<u64>,
    },
    /// The outcome.
    Finished(Box<Outcome>),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub app: String,
    pub operation: String,
    pub release: Option<i64>,
    pub version: Option<String>,
    /// The release serving traffic now.
    pub live_release: Option<i64>,
    pub elapsed_ms: u64,
    /// URLs the app is served at through the proxy.
    #[serde(default)]
    pub urls: Vec<String>,
    pub error: Option<OperationError>,
    /// What a backup, verify, prune or restore did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupsOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperationError {
    /// `invalid` (the request was wrong: exit code 2), `locked`, `not-found`, `failed`, ...
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
    /// What failed underneath, as in [`ApiError::cause`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Whose log the tail is from.
    pub log_source: Option<String>,
    #[serde(default)]
    pub log_tail: Vec<String>,
}

/// How a release came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseKind {
    Deploy,
    Rollback,
}

impl ReleaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseKind::Deploy => "deploy",
            ReleaseKind::Rollback => "rollback",
        }
    }
}

/// Where a release is in its life: `deploying` until the switch, then `live`, later
/// `retired`; `failed` if it never went live. A state a newer agent adds reads as `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseState {
    Deploying,
    Live,
    Retired,
    Failed,
    #[serde(other)]
    Unknown,
}

impl ReleaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Deploying => "deploying",
            ReleaseState::Live => "live",
            ReleaseState::Retired => "retired",
            ReleaseState::Failed => "failed",
            ReleaseState::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub number: i64,
    pub version: String,
    pub kind: ReleaseKind,
    pub rollback_of: Option<i64>,
    pub status: ReleaseState,
    pub actor: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// Image ID per service.
    pub images: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub agent: AgentInfo,
    pub apps: Vec<AppStatus>,
    /// Certificates the agent serves (from ACME or from files).
    #[serde(default)]
    pub certificates: Vec<CertificateInfo>,
    /// What needs looking at, one line each ([`Status::find_problems`]); empty when all is
    /// well. `berth status` exits 1 when there is any.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Alerts firing now.
    #[serde(default)]
    pub firing_alerts: Vec<AlertInfo>,
    /// Alert channels whose last delivery failed: an alert that could not be sent.
    #[serde(default)]
    pub failing_channels: Vec<DeliveryInfo>,
    /// `[monitors.NAME]` of the live releases and their last check.
    #[serde(default)]
    pub monitors: Vec<MonitorInfo>,
}

/// A `[monitors.NAME]` check and how its last run went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MonitorInfo {
    pub app: String,
    pub name: String,
    /// What it checks (`GET https://shop.example/health`).
    pub check: String,
    /// Unix ms of the last check.
    pub checked_at: i64,
    /// Why the last check failed; `None` when it passed.
    pub failure: Option<String>,
    pub latency_ms: u64,
    pub failures_in_row: u32,
    /// Its alert fires (failure_threshold reached, success_threshold not yet).
    pub firing: bool,
}

/// An alert, firing or past.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlertInfo {
    pub id: i64,
    /// `service_down`, `crash_loop`, `oom_killed`, `container_died`, `replica_replaced`,
    /// `disk_full`, `memory_high`.
    pub rule: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// `None` for the host's alerts.
    pub app: Option<String>,
    pub subject: String,
    pub summary: String,
    /// A one-off event rather than a state that fires and resolves.
    pub event: bool,
    pub started_at: i64,
    pub resolved_at: Option<i64>,
}

/// One delivery to an alert channel, after its retries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryInfo {
    pub channel: String,
    pub app: Option<String>,
    /// `firing`, `resolved`, `reminder`, `event` or `test`.
    pub what: String,
    pub at: i64,
    pub ok: bool,
    pub attempts: u32,
    pub error: Option<String>,
}

/// `berth alerts`: what fires now, what fired recently, and how each channel's last
/// delivery went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlertsAnswer {
    pub firing: Vec<AlertInfo>,
    pub recent: Vec<AlertInfo>,
    pub deliveries: Vec<DeliveryInfo>,
    /// Mutes in force.
    #[serde(default)]
    pub mutes: Vec<MuteInfo>,
}

/// `berth alerts mute`: alerts that match are recorded, not sent, until it ends. A field
/// left out matches everything.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MuteRequest {
    pub app: Option<String>,
    pub rule: Option<String>,
    pub subject: Option<String>,
    pub seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MuteInfo {
    pub id: i64,
    pub app: Option<String>,
    pub rule: Option<String>,
    pub subject: Option<String>,
    /// Unix ms.
    pub until: i64,
    pub actor: String,
}

/// `berth top`: the host's and every watched container's resources, as rates over the last
/// two samples (15 s apart).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopAnswer {
    /// When the newest sample was taken (Unix ms); `None` before the first.
    pub sampled_at: Option<i64>,
    pub host: HostTop,
    pub containers: Vec<ContainerTop>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostTop {
    pub cpus: usize,
    /// Busy share of all CPUs, 0 to 100.
    pub cpu_percent: Option<f64>,
    pub load: [f64; 3],
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub filesystems: Vec<FilesystemTop>,
    /// NVIDIA GPUs (`nvidia-smi`); empty where there are none.
    #[serde(default)]
    pub gpus: Vec<GpuTop>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuTop {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// Busy share over the last sample period, 0 to 100, when the driver says.
    pub utilization_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FilesystemTop {
    /// `berth` (its data directory) or `docker` (Docker's data root).
    pub purpose: String,
    pub mountpoint: String,
    pub used_percent: f64,
    pub avail_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerTop {
    pub app: String,
    pub service: String,
    pub container: String,
    /// CPU used, in percent of one core (200 = two cores busy).
    pub cpu_percent: Option<f64>,
    /// CPU used, in percent of its `cpus` limit.
    pub cpu_limit_percent: Option<f64>,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub memory_limit_percent: Option<f64>,
    /// Bytes per second.
    pub net_rx_rate: Option<f64>,
    pub net_tx_rate: Option<f64>,
    pub disk_read_rate: Option<f64>,
    pub disk_write_rate: Option<f64>,
    pub oom_kills: Option<u64>,
    /// Times Docker restarted it (its restart policy).
    #[serde(default)]
    pub restarts: u64,
}

/// `berth top --history`: the host's and each service's resources over a window, in points
/// of `step_seconds` (from the state file's minute buckets for the last 48 hours, hour
/// buckets beyond).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceHistory {
    pub since: i64,
    pub until: i64,
    pub step_seconds: u64,
    pub series: Vec<ResourceSeries>,
}

/// One subject's metric: `host` or `APP/SERVICE`; `cpu_percent` (the host's of all cores, a
/// service's of one core, its replicas together), `memory_bytes`, `swap_bytes`, `load1`,
/// `disk_percent PURPOSE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceSeries {
    pub subject: String,
    pub metric: String,
    pub points: Vec<ResourcePoint>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ResourcePoint {
    /// The point's start, Unix ms.
    pub at: i64,
    pub mean: f64,
    pub peak: f64,
}

/// `berth uptime`: availability and latency of each service and monitor, and the incidents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UptimeAnswer {
    pub subjects: Vec<SubjectUptime>,
    /// The last 30 days' outages (a service down, a monitor failing, a crash loop), newest
    /// first.
    pub incidents: Vec<Incident>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubjectUptime {
    /// `APP/SERVICE` or `APP/monitor NAME`.
    pub subject: String,
    /// Share of checks that found it up, in percent; `None` without checks in the window.
    pub day_percent: Option<f64>,
    pub week_percent: Option<f64>,
    pub month_percent: Option<f64>,
    pub checks_day: i64,
    /// Latency of the passed checks over 24 hours.
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Incident {
    pub subject: String,
    pub rule: String,
    pub started_at: i64,
    /// `None` while it lasts.
    pub ended_at: Option<i64>,
    pub cause: String,
}

/// `berth alerts test CHANNEL`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlertTestRequest {
    pub channel: String,
}

impl Status {
    /// The one rule for "is anything wrong" that `berth status`'s exit code, the dashboard
    /// and alerts share: a service with fewer healthy replicas than it should have (unless
    /// its app was stopped on purpose), a backup whose last run did not succeed or whose
    /// copies failed verification, an alert firing (other than a service down, named by its
    /// replicas), an alert channel that cannot be delivered to, a certificate failing or
    /// expired.
    pub fn find_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for app in &self.apps {
            if !app.stopped {
                for service in &app.services {
                    let healthy = service.healthy_replicas();
                    if healthy < service.desired_replicas as usize {
                        problems.push(format!(
                            "{}: {} has {healthy} of {} replicas healthy",
                            app.name, service.name, service.desired_replicas
                        ));
                    }
                }
            }
            for backup in &app.backups {
                if let Some(run) = &backup.last_run
                    && !run.status.is_good()
                {
                    problems.push(format!(
                        "{}: backup {}'s last {} was {}",
                        app.name, backup.name, run.operation, run.status
                    ));
                }
                if !backup.failing_copies.is_empty() {
                    problems.push(format!(
                        "{}: {} copies of backup {} failed verification",
                        app.name,
                        backup.failing_copies.len(),
                        backup.name
                    ));
                }
            }
        }
        for alert in &self.firing_alerts {
            // A service down is already named by its replicas above.
            if alert.rule != "service_down" {
                problems.push(alert.summary.clone());
            }
        }
        for delivery in &self.failing_channels {
            problems.push(format!(
                "alerts cannot be delivered to channel {}{}: {}",
                delivery.channel,
                delivery
                    .app
                    .as_ref()
                    .map(|a| format!(" of {a}"))
                    .unwrap_or_default(),
                delivery.error.as_deref().unwrap_or("it failed")
            ));
        }
        for certificate in &self.certificates {
            if certificate.state == "failing" || certificate.state == "expired" {
                problems.push(format!(
                    "the certificate of {} is {}",
                    certificate.domain, certificate.state
                ));
            }
        }
        problems
    }
}

/// A replica's health as `berth status` sees it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    /// Its app was stopped by `berth stop`: down on purpose.
    Stopped,
    /// Docker could not be asked.
    Unknown,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Stopped => "stopped",
            Health::Unknown => "unknown",
        })
    }
}

/// How a backup, verify, prune or restore run went.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    /// Every copy stored and verified.
    Ok,
    /// Some copies.
    Partial,
    Failed,
    /// Refused before it began (no `--force`, a target in the way): not a failure.
    Refused,
}

impl RunStatus {
    /// As the state file stores it; anything else reads as failed.
    pub fn parse(text: &str) -> Self {
        match text {
            "running" => RunStatus::Running,
            "ok" => RunStatus::Ok,
            "partial" => RunStatus::Partial,
            "refused" => RunStatus::Refused,
            _ => RunStatus::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Refused => "refused",
        }
    }

    /// Nothing to look at: it went well, or has not ended yet.
    pub fn is_good(self) -> bool {
        matches!(self, RunStatus::Ok | RunStatus::Running)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateInfo {
    pub domain: String,
    /// `acme` or `files`.
    pub source: String,
    /// `valid`, `pending`, `failing` or `expired`.
    pub state: String,
    /// Unix seconds.
    pub not_after: Option<i64>,
    pub issuer: Option<String>,
    pub last_error: Option<String>,
    /// Unix seconds: the next attempt after a failure, or the planned renewal.
    pub next_attempt: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MaintenanceRequest {
    pub enabled: bool,
    /// What visitors read on the maintenance page.
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppStatus {
    pub name: String,
    pub live_release: Option<ReleaseInfo>,
    /// The newest release when it failed (the live one kept serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed: Option<ReleaseInfo>,
    /// Old releases still draining after a deploy returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainingInfo>,
    /// The deploy, rollback or restart in progress, if any.
    pub operation: Option<LockInfo>,
    pub services: Vec<ServiceStatus>,
    pub urls: Vec<String>,
    /// The maintenance page's message while maintenance mode is on.
    #[serde(default)]
    pub maintenance: Option<String>,
    /// Stopped by `berth stop`: its containers are stopped and its routes answer 503.
    #[serde(default)]
    pub stopped: bool,
    /// Each backup's schedule, last run and failures.
    #[serde(default)]
    pub backups: Vec<BackupStatus>,
}

/// An old release draining in the background.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrainingInfo {
    pub release: i64,
    /// Milliseconds since the epoch.
    pub since: i64,
    /// Ordinary requests still in flight.
    pub requests: u64,
    /// WebSockets and event streams still open.
    pub long_lived: u64,
    /// When the WebSockets and event streams left will be closed, milliseconds since the
    /// epoch.
    pub closes_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub operation: String,
    pub holder: String,
    pub since: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    /// `web`, `worker` or `accessory`.
    pub role: String,
    pub release: Option<i64>,
    pub desired_replicas: u32,
    pub replicas: Vec<ReplicaStatus>,
}

impl ServiceStatus {
    pub fn healthy_replicas(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.health == Health::Healthy)
            .count()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub container: String,
    pub state: String,
    pub health: Health,
    pub health_detail: Option<String>,
    pub started_at: Option<String>,
    pub uptime_seconds: Option<u64>,
    pub restarts: i64,
    /// What the continuous health checks found; `None` until they first probed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<ReplicaWatch>,
}

/// The continuous health checks' view of a replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaWatch {
    /// Since when it has been healthy (or unhealthy), Unix milliseconds.
    pub since: i64,
    pub failures_in_row: u32,
    /// The last failed check: Unix milliseconds and the reason.
    pub last_failure_at: Option<i64>,
    pub last_failure: Option<String>,
    /// Whether the proxy sends it requests.
    pub in_rotation: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLine {
    pub container: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
    /// When it was written (Unix ms): lines berth kept carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    /// The release of the container that wrote it, for kept lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
}

/// `GET /v1/apps/{app}/services/{service}/attach?spec=HEX(JSON)` with `Upgrade:
/// berth-exec`: an interactive command (`berth exec -it`). After the 101 answer both sides
/// speak [`ExecFrame`]s on the connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachSpec {
    pub command: Vec<String>,
    /// Give the command a terminal (its output is then one stream).
    pub tty: bool,
    /// The terminal's size, rows and columns, when `tty`.
    #[serde(default)]
    pub size: Option<(u16, u16)>,
}

/// The `Upgrade` protocol name of an attached command.
pub const EXEC_PROTOCOL: &str = "berth-exec";

/// One frame of an attached command: a kind byte, a 4-byte big-endian length, the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecFrame {
    /// Client to agent: bytes for the command's standard input.
    Stdin(Vec<u8>),
    /// Client to agent: standard input has ended.
    StdinClosed,
    /// Client to agent: the terminal is now this many rows and columns.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Agent to client: output.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Agent to client, last: the command's exit code.
    Exit(i64),
    /// Agent to client, last: why the command could not run on.
    Error(String),
}

/// The largest payload a frame may carry; more is a protocol error, not a reason to allocate.
pub const MAX_EXEC_FRAME: usize = 1 << 20;

impl ExecFrame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            ExecFrame::Stdin(data) => (0, data.into()),
            ExecFrame::StdinClosed => (1, Vec::new().into()),
            ExecFrame::Resize { rows, cols } => {
                let mut payload = rows.to_be_bytes().to_vec();
                payload.extend_from_slice(&cols.to_be_bytes());
                (2, payload.into())
            }
            ExecFrame::Stdout(data) => (3, data.into()),
            ExecFrame::Stderr(data) => (4, data.into()),
            ExecFrame::Exit(code) => (5, code.to_be_bytes().to_vec().into()),
            ExecFrame::Error(message) => (6, message.as_bytes().into()),
        };
        let mut frame = Vec::with_capacity(5 + payload.len());
        frame.push(kind);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame
    }

    /// Takes one whole frame off the front of `buffer`; `Ok(None)` until one has arrived.
    pub fn decode(buffer: &mut Vec<u8>) -> Result<Option<ExecFrame>, String> {
        if buffer.len() < 5 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
        if length > MAX_EXEC_FRAME {
            return Err(format!("a frame of {length} bytes is over the limit"));
        }
        if buffer.len() < 5 + length {
            return Ok(None);
        }
        let kind = buffer[0];
        let payload: Vec<u8> = buffer.drain(..5 + length).skip(5).collect();
        let frame = match kind {
            0 => ExecFrame::Stdin(payload),
            1 => ExecFrame::StdinClosed,
            2 if payload.len() == 4 => ExecFrame::Resize {
                rows: u16::from_be_bytes([payload[0], payload[1]]),
                cols: u16::from_be_bytes([payload[2], payload[3]]),
            },
            3 => ExecFrame::Stdout(payload),
            4 => ExecFrame::Stderr(payload),
            5 if payload.len() == 8 => {
                let mut code = [0u8; 8];
                code.copy_from_slice(&payload);
                ExecFrame::Exit(i64::from_be_bytes(code))
            }
            6 => ExecFrame::Error(String::from_utf8_lossy(&payload).into_owned()),
            other => return Err(format!("unknown frame kind {other}")),
        };
        Ok(Some(frame))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ExecEvent {
    Output { stream: String, data: String },
    Exit { code: i64, container: String },
    Error { message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretValue {
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Services of the live release that use it (a changed secret reaches them on the next deploy).
    #[serde(default)]
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
}

// ---- console users ----------------------------------------------------------------------

/// A console user, as `GET /v1/users` lists them: never a password or its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    /// `viewer`, `deployer` or `admin`.
    pub role: String,
    /// `active` or `disabled`.
    pub status: String,
    /// Whether a password is set (a new user's setup link sets it).
    pub has_password: bool,
    pub created_at: i64,
    pub created_by: String,
    pub last_login_at: Option<i64>,
    /// Locked after failed logins until then.
    pub locked_until: Option<i64>,
    /// Whether logins ask for a code from an authenticator app.
    #[serde(default)]
    pub two_factor: bool,
}

/// `GET`/`POST /v1/console/sign-up`: whether the login page offers a form to ask for an
/// account (each request waits for an admin's approval).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignUpPolicy {
    pub open: bool,
}

/// `GET`/`POST /v1/console/two-factor`: whether every console user must log in with a
/// second factor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TwoFactorPolicy {
    pub required: bool,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRequest {
    pub name: String,
    pub role: String,
}

/// `POST /v1/users/{name}/role`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRoleRequest {
    pub role: String,
}

/// A one-time link that sets a user's password: shown once, kept only hashed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserLink {
    pub user: String,
    /// `setup` or `reset`.
    pub purpose: String,
    /// The console path (`/link/SECRET`).
    pub path: String,
    /// The whole URL, when the agent serves the console.
    pub url: Option<String>,
    pub expires_at: i64,
}

/// `DELETE /v1/users/{name}/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionsEnded {
    pub ended: usize,
}

// ---- API tokens -------------------------------------------------------------------------

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    pub name: String,
    /// `read`, `deploy` or `admin`.
    pub scope: String,
    /// The one app the token may act on.
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// A token as listed: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub scope: String,
    pub app: Option<String>,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// The answer to `POST /v1/tokens`: the token, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenIssued {
    pub token: String,
    pub info: TokenInfo,
}

// ---- backups ----------------------------------------------------------------------------

/// The manifest a backup command is about, as the CLI read it. Without one the agent uses
/// the live release's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestText {
    pub manifest: String,
    pub manifest_path: String,
    pub base_dir: String,
    pub environment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BackupRunRequest {
    #[serde(default)]
    pub manifest: Option<ManifestText>,
    /// Backup names; empty means every backup in the manifest.
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BackupListRequest {
    #[serde(default)]
    pub manifest: Option<ManifestText>,
    pub name: Option<String>,
    /// Re-read every storage's records instead of the agent's catalog.
    #[serde(default)]
    pub refresh: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BackupVerifyRequest {
    #[serde(default)]
    pub manifest: Option<ManifestText>,
    /// Backup names; empty means every backup in the manifest.
    #[serde(default)]
    pub names: Vec<String>,
    /// One backup only; every kept backup when absent.
    pub id: Option<String>,
    /// Sign unsigned records (an older berth's) once they pass every check.
    #[serde(default)]
    pub adopt_unsigned: bool,
    /// The text of an age identity file, for backups this agent's key cannot open (another
    /// server's). Used for this verification only, never stored.
    #[serde(default)]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BackupPruneRequest {
    #[serde(default)]
    pub manifest: Option<ManifestText>,
    #[serde(default)]
    pub names: Vec<String>,
    /// Say what would go without deleting anything.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RestoreRequest {
    #[serde(default)]
    pub manifest: Option<ManifestText>,
    pub name: String,
    /// The backup; the newest (at or before `at`) when absent.
    pub id: Option<String>,
    /// RFC 3339 time, or `YYYY-MM-DD[ HH:MM]` in the server's time zone.
    pub at: Option<String>,
    /// An absolute path on the agent's machine to restore to instead of the live data.
    pub to: Option<String>,
    /// Replace live data (after a safety backup of it).
    #[serde(default)]
    pub force: bool,
    /// The storage to read from (default: the first that holds the backup).
    pub from: Option<String>,
    /// The text of an age identity file, for backups this agent's key cannot open (a new
    /// server). Used for this restore only, never stored.
    pub identity: Option<String>,
    /// Keep setuid and setgid bits of files in an archive (stripped by default).
    #[serde(default)]
    pub keep_setuid: bool,
    /// Restore a backup whose record berth cannot authenticate (written by someone else, or
    /// by an older berth).
    #[serde(default)]
    pub allow_untrusted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BackupsOutcome {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<BackupResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<VerifyResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<PruneResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<RestoreResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupResult {
    pub name: String,
    pub id: Option<String>,
    pub status: RunStatus,
    pub source: String,
    pub source_summary: Option<String>,
    pub content_size: Option<u64>,
    pub size: Option<u64>,
    pub copies: Vec<CopyResult>,
    /// Reading, compressing, encrypting and storing every copy.
    #[serde(default)]
    pub write_ms: Option<u64>,
    /// Reading every copy back and checking it.
    #[serde(default)]
    pub verify_ms: Option<u64>,
    pub error: Option<String>,
    /// A short machine-readable cause: `source-failed`, `unreachable`, `disk-full`...
    pub cause: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CopyResult {
    pub storage: String,
    pub ok: bool,
    /// What the read-back check found.
    pub check: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyResult {
    pub name: String,
    pub id: String,
    pub storage: String,
    pub ok: bool,
    pub check: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneResult {
    pub name: String,
    pub storage: String,
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    /// Backups whose records berth cannot vouch for: neither counted nor removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untrusted: Vec<String>,
    pub dry_run: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreResult {
    pub name: String,
    pub id: String,
    pub storage: String,
    /// What was replaced or written (`volume shop_data`, `/srv/restore/app.db`...).
    pub target: String,
    /// The safety backup taken of what was replaced, if there was anything.
    pub safety_backup: Option<String>,
    pub bytes: u64,
    /// Each thing done, in order.
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BackupList {
    pub backups: Vec<BackupInfo>,
    /// Storage that could not be read (the list may be incomplete).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupInfo {
    pub name: String,
    pub id: String,
    pub kind: String,
    /// `scheduled`, `manual` or `safety`.
    pub reason: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Stored bytes.
    pub size: u64,
    pub content_size: u64,
    pub source: String,
    pub copies: Vec<CopyInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CopyInfo {
    pub storage: String,
    /// Milliseconds since the epoch.
    pub verified_at: i64,
    pub check: String,
    /// Set when the latest re-verification failed.
    pub verify_error: Option<String>,
    /// Set when berth cannot vouch for this copy's record (`unsigned`, `unknown-key` or
    /// `forged`): it is never restored without `--allow-untrusted`, counted or pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untrusted: Option<String>,
}

/// A backup's health in `berth status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupStatus {
    pub name: String,
    pub schedule: Option<String>,
    /// Milliseconds since the epoch.
    pub next_run: Option<i64>,
    pub last_ok: Option<i64>,
    /// The latest run of any kind: its operation, status and error.
    pub last_run: Option<BackupRunInfo>,
    /// Copies whose latest verification failed.
    pub failing_copies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupRunInfo {
    pub operation: String,
    pub status: RunStatus,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub backup_id: Option<String>,
    pub cause: Option<String>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_states_travel_as_the_strings_they_always_were() {
        assert_eq!(
            serde_json::to_string(&ErrorKind::NotFound).unwrap(),
            "\"not-found\""
        );
        assert_eq!(
            serde_json::to_string(&ErrorKind::Unauthorized).unwrap(),
            "\"unauthorized\""
        );
        assert_eq!(
            serde_json::to_string(&ReleaseState::Retired).unwrap(),
            "\"retired\""
        );
        assert_eq!(
            serde_json::to_string(&ReleaseKind::Rollback).unwrap(),
            "\"rollback\""
        );
        // What a newer agent may add reads as something this CLI can show.
        let kind: ErrorKind = serde_json::from_str("\"rate-limited\"").unwrap();
        assert_eq!(kind, ErrorKind::Failed);
        let state: ReleaseState = serde_json::from_str("\"paused\"").unwrap();
        assert_eq!(state, ReleaseState::Unknown);
        assert!(ErrorKind::Invalid.is_request_error() && !ErrorKind::Locked.is_request_error());
    }

    #[test]
    fn exec_frames_round_trip_and_arrive_in_pieces() {
        let frames = [
            ExecFrame::Stdin(b"ls\n".to_vec()),
            ExecFrame::StdinClosed,
            ExecFrame::Resize {
                rows: 40,
                cols: 132,
            },
            ExecFrame::Stdout(vec![0, 255, 10]),
            ExecFrame::Stderr(Vec::new()),
            ExecFrame::Exit(-3),
            ExecFrame::Error("gone".into()),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(ExecFrame::encode).collect();
        // Fed one byte at a time, as a slow connection might.
        let mut buffer = Vec::new();
        let mut decoded = Vec::new();
        for byte in wire {
            buffer.push(byte);
            while let Some(frame) = ExecFrame::decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
        assert!(buffer.is_empty());
    }

    pub(crate) fn replica(health: &str) -> serde_json::Value {
        serde_json::json!({ "container": "c", "state": "running", "health": health,
            "health_detail": null, "started_at": null, "uptime_seconds": null, "restarts": 0 })
    }

    pub(crate) fn app(
        name: &str,
        stopped: bool,
        health: &str,
        run: Option<&str>,
    ) -> serde_json::Value {
        serde_json::json!({
            "name": name, "live_release": null, "operation": null, "urls": [], "stopped": stopped,
            "services": [{ "name": "web", "role": "web", "release": 1, "desired_replicas": 2,
                "replicas": [replica("healthy"), replica(health)] }],
            "backups": [{ "name": "db", "schedule": null, "next_run": null, "last_ok": null,
                "failing_copies": [],
                "last_run": run.map(|status| serde_json::json!({ "operation": "backup",
                    "status": status, "started_at": 1, "finished_at": 2, "backup_id": null,
                    "cause": null, "error": null })) }]
        })
    }

    #[test]
    fn one_rule_decides_what_is_wrong() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "agent": { "version": "0", "data_dir": "/d", "pid": 1, "http": null, "https": null,
                "docker": { "endpoint": "unix:///x", "version": null, "error": null } },
            "apps": [
                app("fine", false, "healthy", Some("ok")),
                app("paused", true, "stopped", Some("running")),
                app("sick", false, "unhealthy", Some("partial")),
            ],
            "certificates": [{ "domain": "a.example", "source": "acme", "state": "expired",
                "not_after": null, "issuer": null, "last_error": null, "next_attempt": null }]
        }))
        .unwrap();
        let problems = status.find_problems();
        assert_eq!(
            problems,
            [
                "sick: web has 1 of 2 replicas healthy",
                "sick: backup db's last backup was partial",
                "the certificate of a.example is expired",
            ],
            "a stopped app and a running backup are not problems"
        );
        // The wire form is today's strings.
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["apps"][2]["services"][0]["replicas"][1]["health"],
            "unhealthy"
        );
        assert_eq!(
            json["apps"][2]["backups"][0]["last_run"]["status"],
            "partial"
        );
    }

    #[test]
    fn oversized_and_unknown_exec_frames_are_refused() {
        let mut huge = vec![3];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(ExecFrame::decode(&mut huge).is_err());
        let mut unknown = vec![9, 0, 0, 0, 0];
        assert!(ExecFrame::decode(&mut unknown).is_err());
        let mut short_resize = vec![2, 0, 0, 0, 1, 7];
        assert!(ExecFrame::decode(&mut short_resize).is_err());
    }
}
