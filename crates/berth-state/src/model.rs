//! Rows of the state file as Rust values.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct App {
    pub name: String,
    pub created_at: i64,
    pub live_release: Option<i64>,
    /// The maintenance page's message while maintenance mode is on.
    pub maintenance: Option<String>,
    /// Stopped by `berth stop`: containers stay stopped, routes answer 503.
    pub stopped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

    pub(crate) fn parse(text: &str) -> Self {
        if text == "rollback" {
            ReleaseKind::Rollback
        } else {
            ReleaseKind::Deploy
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseStatus {
    Deploying,
    Live,
    Retired,
    Failed,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Deploying => "deploying",
            ReleaseStatus::Live => "live",
            ReleaseStatus::Retired => "retired",
            ReleaseStatus::Failed => "failed",
        }
    }

    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "live" => ReleaseStatus::Live,
            "retired" => ReleaseStatus::Retired,
            "failed" => ReleaseStatus::Failed,
            _ => ReleaseStatus::Deploying,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelease {
    pub app: String,
    pub version: String,
    pub kind: ReleaseKind,
    pub rollback_of: Option<i64>,
    pub manifest_toml: String,
    pub manifest_json: String,
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub app: String,
    pub number: i64,
    pub version: String,
    pub kind: ReleaseKind,
    pub rollback_of: Option<i64>,
    pub status: ReleaseStatus,
    #[serde(skip)]
    pub manifest_toml: String,
    #[serde(skip)]
    pub manifest_json: String,
    /// Image ID per service.
    pub images: BTreeMap<String, String>,
    pub actor: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Created by a deploy that has not switched yet.
    Pending,
    /// Serving (or, for a worker, working) for the live release.
    Current,
    /// Replaced; being drained and stopped.
    Retiring,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Current => "current",
            InstanceState::Retiring => "retiring",
        }
    }

    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "current" => InstanceState::Current,
            "retiring" => InstanceState::Retiring,
            _ => InstanceState::Pending,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub container_id: String,
    pub name: String,
    pub app: String,
    pub service: String,
    pub release: i64,
    pub replica: i64,
    pub state: InstanceState,
    pub created_at: i64,
}

/// What [`crate::Store::commit_switch`] changes in one transaction.
#[derive(Debug, Clone, Copy)]
pub struct Switch<'a> {
    pub app: &'a str,
    /// For a deploy or rollback: the release that becomes live.
    pub new_live_release: Option<i64>,
    pub now_current: &'a [String],
    pub retiring: &'a [String],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at: i64,
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One good copy of a backup on one storage. `meta_json` is the backup's record as stored
/// beside it (this crate does not interpret it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupCopy {
    pub app: String,
    pub name: String,
    pub id: String,
    pub destination: String,
    pub created_at: i64,
    pub verified_at: i64,
    pub verify_error: Option<String>,
    pub meta_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupRun {
    pub id: i64,
    pub app: String,
    pub name: String,
    pub operation: String,
    pub actor: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub status: String,
    pub backup_id: Option<String>,
    pub cause: Option<String>,
    pub error: Option<String>,
}

/// How a backup run ended.
#[derive(Debug, Clone, Copy)]
pub struct RunFinish<'a> {
    /// `ok`, `partial` (some copies failed) or `failed`.
    pub status: &'a str,
    pub backup_id: Option<&'a str>,
    pub cause: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// An alert to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert<'a> {
    pub key: &'a str,
    pub rule: &'a str,
    pub severity: &'a str,
    pub app: Option<&'a str>,
    pub subject: &'a str,
    pub summary: &'a str,
    /// A one-off event (resolved when recorded) rather than a state that fires and resolves.
    pub event: bool,
    pub at: i64,
}

/// A recorded alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRecord {
    pub id: i64,
    pub key: String,
    pub rule: String,
    pub severity: String,
    pub app: Option<String>,
    pub subject: String,
    pub summary: String,
    pub event: bool,
    pub started_at: i64,
    pub resolved_at: Option<i64>,
}

/// One delivery of an alert (or a test message) to a channel, after its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertDelivery {
    pub alert_id: Option<i64>,
    pub channel: String,
    pub app: Option<String>,
    pub what: String,
    pub at: i64,
    pub ok: bool,
    pub attempts: u32,
    pub error: Option<String>,
}

/// One probe or check: up or not, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UptimeSample {
    /// `APP/SERVICE` or `APP/monitor NAME`.
    pub subject: String,
    pub at: i64,
    pub up: bool,
    pub latency_ms: i64,
}

/// A subject's record over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UptimeWindow {
    pub checks: i64,
    pub ups: i64,
    /// Latency percentiles of the passed checks (within 48 hours only).
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

/// `berth alerts mute`: alerts matching it are recorded but not sent until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertMute {
    pub id: i64,
    /// `None` matches every app and the host.
    pub app: Option<String>,
    pub rule: Option<String>,
    pub subject: Option<String>,
    pub until: i64,
    pub actor: String,
    pub created_at: i64,
}

impl AlertMute {
    /// Whether an alert falls under this mute.
    pub fn covers(&self, alert: &AlertRecord) -> bool {
        self.app
            .as_ref()
            .is_none_or(|a| alert.app.as_ref() == Some(a))
            && self.rule.as_ref().is_none_or(|r| *r == alert.rule)
            && self.subject.as_ref().is_none_or(|s| *s == alert.subject)
    }
}
