//! The agent's HTTP API (see `berth-api` for the contract).
//!
//! Long operations (deploy, rollback, restart) run in their own task: the response streams
//! their progress, and a client that disconnects does not stop them half-way.

use crate::engine::Engine;
use crate::error::{ErrorKind, OpError};
use crate::locks::format_time;
use crate::progress::Progress;
use crate::status::release_info;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_api::*;
use berth_manifest::{ImageSource, ManifestSource};
use berth_runtime::LogQuery;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub info: AgentInfo,
    pub uploads: PathBuf,
    /// The most build contexts may take in `uploads` at once, in bytes.
    pub upload_quota: u64,
    /// Bytes of uploads being received now (all API listeners share it).
    pub uploads_in_progress: Arc<std::sync::atomic::AtomicU64>,
    /// `unix`, `tcp` or `tls`: recorded with the actor in the audit log.
    pub transport: &'static str,
    /// Required as a bearer token when set (TCP listeners).
    pub token: Option<Arc<String>>,
    pub metrics: Arc<Metrics>,
    pub succession: Arc<crate::succession::Succession>,
    /// Every container's output as berth keeps it.
    pub logs: Arc<berth_logs::LogStore>,
}

/// Everything `/metrics` reports.
pub struct Metrics {
    pub registry: prometheus_client::registry::Registry,
    pub edge: Arc<crate::edge::Edge>,
    /// The host's last sample (its filesystems feed the health report's disk checks).
    pub host: Arc<berth_monitor::HostMetrics>,
    /// Each watched container's last two samples (`berth top`).
    pub containers: Arc<berth_monitor::ContainerMetrics>,
    /// The `[monitors]` checks' last results (`berth status`, `/health`).
    pub monitors: Arc<berth_monitor::external::MonitorBoard>,
}

impl Metrics {
    fn render(&self) -> Response {
        self.edge.metrics.update(&self.edge.store);
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        (
            [(
                http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    }
}

/// The router of the optional plain-HTTP metrics listener (`--metrics ADDR`).
mod access;
mod alerts;
mod backups;
mod exec;
mod secret_values;
mod uploads;
mod users;

pub(crate) use access::CONSOLE;
use access::*;
use alerts::*;
use backups::*;
use exec::*;
use secret_values::*;
use uploads::*;
pub(crate) use users::make_link as make_user_link;

/// The plain-HTTP listener for outside monitoring: Prometheus metrics at `/metrics` and the
/// health report at `/health`. Neither needs a token, and neither reveals more than counts and
/// verdicts.
pub fn metrics_router(metrics: Arc<Metrics>, engine: Arc<Engine>, info: AgentInfo) -> Router {
    let health_cache = Arc::new(HealthCache {
        engine,
        info,
        host: metrics.host.clone(),
        monitors: metrics.monitors.clone(),
        last: tokio::sync::Mutex::new(None),
    });
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
        .route("/health", get(move || health(health_cache.clone())))
}

/// `berth agent upgrade`: streams the hand-over; this agent retires once the outcome is out.
async fn upgrade_agent(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(request): Json<berth_api::UpgradeRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    let (sender, receiver) = mpsc::unbounded_channel();
    let progress = Progress::new("agent", Some(sender), None);
    let (engine, succession) = (state.engine.clone(), state.succession.clone());
    tokio::spawn(async move {
        let (outcome, handed_over) = succession
            .clone()
            .upgrade(engine, request.binary, actor, progress.clone())
            .await;
        progress.finish(OperationEvent::Finished(Box::new(outcome)));
        // The stream ends with the last sender, then this agent stops accepting.
        drop(progress);
        if handed_over {
            succession.retire();
        }
    });
    Ok(ndjson(receiver))
}

/// `berth agent stop`: stops like SIGTERM does, once the answer is out.
async fn stop_agent(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Json<berth_api::StopAnswer> {
    let actor = actor(&state, &headers);
    state.engine.audit(&actor, "stop", "agent", "ok", "");
    let succession = state.succession.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        succession.request_stop();
    });
    Json(berth_api::StopAnswer {
        pid: std::process::id(),
        grace_seconds: state.succession.grace.as_secs(),
    })
}

/// `berth top`: read from the samplers' last samples, never from Docker.
async fn top(State(state): State<ApiState>, Query(query): Query<StatusQuery>) -> Json<TopAnswer> {
    Json(berth_monitor::top::top(
        &state.metrics.host,
        &state.metrics.containers,
        query.app.as_deref(),
    ))
}

#[derive(Deserialize)]
struct ResourcesQuery {
    app: Option<String>,
    window: Option<String>,
}

/// `berth top --history`: from the state file's resource buckets, about 60 points a window.
async fn resources(
    State(state): State<ApiState>,
    Query(query): Query<ResourcesQuery>,
) -> ApiResult<Json<berth_api::ResourceHistory>> {
    if let Some(app) = &query.app {
        check_app_name(app)?;
        state.engine.require_app(app)?;
    }
    let window_text = query.window.as_deref().unwrap_or("24h");
    let window = berth_manifest::units::parse_duration(window_text)
        .ok()
        .filter(|w| (60..=90 * 86_400).contains(&w.as_secs()))
        .ok_or_else(|| {
            OpError::invalid(format!("`{window_text}` is not a window berth keeps"))
                .hint("from 1m to 90d, such as 1h, 24h, 7d or 30d")
        })?;
    let until = berth_state::now_ms();
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let since = until - window_ms;
    let step = (window_ms / 60).max(60_000);
    let store = state.engine.store().clone();
    let app = query.app.clone();
    let series = tokio::task::spawn_blocking(move || {
        store.resource_history(app.as_deref(), since, until, step)
    })
    .await
    .map_err(|e| OpError::failed(format!("reading the resource history stopped: {e}")))??;
    let step_seconds = series
        .iter()
        .find_map(|s| {
            let points = &s.points;
            (points.len() >= 2).then(|| points[1].at - points[0].at)
        })
        .unwrap_or(step)
        / 1000;
    Ok(Json(berth_api::ResourceHistory {
        since,
        until,
        step_seconds: u64::try_from(step_seconds).unwrap_or(60),
        series: series
            .into_iter()
            .map(|s| berth_api::ResourceSeries {
                subject: s.subject,
                metric: s.metric,
                points: s
                    .points
                    .into_iter()
                    .map(|p| berth_api::ResourcePoint {
                        at: p.at,
                        mean: p.mean,
                        peak: p.peak,
                    })
                    .collect(),
            })
            .collect(),
    }))
}

/// `berth uptime`: from the state file's history and alert log.
async fn uptime(
    State(state): State<ApiState>,
    Query(query): Query<StatusQuery>,
) -> ApiResult<Json<UptimeAnswer>> {
    if let Some(app) = &query.app {
        check_app_name(app)?;
        state.engine.require_app(app)?;
    }
    let store = state.engine.store().clone();
    let app = query.app.clone();
    let answer = tokio::task::spawn_blocking(move || {
        berth_monitor::uptime::report(&store, app.as_deref(), berth_state::now_ms())
    })
    .await
    .map_err(|e| OpError::failed(format!("the uptime report stopped: {e}")))??;
    Ok(Json(answer))
}

async fn metrics_endpoint(State(state): State<ApiState>) -> Response {
    state.metrics.render()
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/tokens", get(list_tokens).post(add_token))
        .route("/v1/tokens/{name}", axum::routing::delete(revoke_token))
        .route("/v1/users", get(users::list_users).post(users::add_user))
        .route(
            "/v1/console/two-factor",
            get(users::two_factor_policy).post(users::set_two_factor_policy),
        )
        .route(
            "/v1/console/sign-up",
            get(users::sign_up_policy).post(users::set_sign_up_policy),
        )
        .route("/v1/users/{name}/approve", post(users::approve_user))
        .route("/v1/users/{name}/deny", post(users::deny_user))
        .route("/v1/users/{name}/reset", post(users::reset_user))
        .route("/v1/users/{name}/disable", post(users::disable_user))
        .route("/v1/users/{name}/enable", post(users::enable_user))
        .route("/v1/users/{name}/role", post(users::set_role))
        .route(
            "/v1/users/{name}/sessions",
            axum::routing::delete(users::end_sessions),
        )
        .route("/v1/status", get(status))
        .route("/v1/audit", get(audit))
        .route("/v1/alerts", get(alerts))
        .route("/v1/alerts/mutes", post(add_mute))
        .route("/v1/alerts/mutes/{id}", axum::routing::delete(remove_mute))
        .route("/v1/top", get(top))
        .route("/v1/uptime", get(uptime))
        .route("/v1/resources", get(resources))
        .route("/v1/apps/{app}/alerts/test", post(test_alert))
        .route("/v1/metrics", get(metrics_endpoint))
        .route("/v1/agent/upgrade", post(upgrade_agent))
        .route("/v1/agent/stop", post(stop_agent))
        .route("/v1/workers", get(workers))
        .route("/v1/certificates/{domain}/renew", post(renew_certificate))
        .route("/v1/apps/{app}/maintenance", post(maintenance))
        .route(
            "/v1/uploads",
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/deploy", post(deploy))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .route("/v1/apps/{app}/rollback/plan", get(rollback_plan))
        .route("/v1/apps/{app}/releases/compare", get(compare_releases))
        .route("/v1/apps/{app}/stop", post(stop_app))
        .route("/v1/apps/{app}/start", post(start_app))
        .route("/v1/apps/{app}/destroy", post(destroy_app))
        .route("/v1/apps/{app}/releases", get(releases))
        .route("/v1/apps/{app}/services/{service}/restart", post(restart))
        .route("/v1/apps/{app}/services/{service}/logs", get(logs))
        .route("/v1/apps/{app}/services/{service}/exec", post(exec))
        .route("/v1/apps/{app}/services/{service}/attach", get(attach))
        .route("/v1/apps/{app}/backups/run", post(backup_run))
        .route("/v1/apps/{app}/backups/list", post(backup_list))
        .route("/v1/apps/{app}/backups/verify", post(backup_verify))
        .route("/v1/apps/{app}/backups/prune", post(backup_prune))
        .route("/v1/apps/{app}/restore", post(restore))
        .route("/v1/apps/{app}/secrets", get(list_secrets))
        .route(
            "/v1/apps/{app}/secrets/{name}",
            get(get_secret).put(set_secret).delete(delete_secret),
        )
        .route(
            "/v1/apps/{app}/secrets/{name}/generate",
            post(generate_secret),
        )
        // Everything but build contexts (above) is small JSON: manifests, secret values, keys.
        .layer(axum::extract::DefaultBodyLimit::max(JSON_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// An error answer: the operation's error with its HTTP status.
pub(crate) struct ApiFailure(pub(crate) OpError, StatusCode);
// (OpError is a box, so this stays small.)

impl From<OpError> for ApiFailure {
    fn from(error: OpError) -> Self {
        let status = crate::error::http_status(error.kind);
        ApiFailure(error, status)
    }
}

impl From<berth_state::StateError> for ApiFailure {
    fn from(error: berth_state::StateError) -> Self {
        OpError::from(error).into()
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        if self.1.is_server_error() {
            tracing::error!(error = %self.0.message, "request failed");
        }
        (self.1, Json(self.0.to_api())).into_response()
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

fn actor(state: &ApiState, headers: &HeaderMap) -> String {
    let claimed = headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .unwrap_or("unknown");
    if let Some(user) = headers.get(USER_HEADER).and_then(|v| v.to_str().ok()) {
        return format!("user {user} via {}", state.transport);
    }
    match headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        // The token first: what the client says of itself comes after, as a claim.
        Some(token) => format!("token {token} via {} (says {claimed})", state.transport),
        None => format!("{claimed} via {}", state.transport),
    }
}

/// What in a manifest reaches past its containers into the server: a mount of the Docker
/// socket or a system path, or a backup of the agent's own data or of a server path. A token
/// below admin may not deploy it: the agent would act on it with its own rights.
fn reaches_the_host(manifest: &berth_manifest::Manifest) -> Option<String> {
    if let Some(risk) = berth_manifest::risks(manifest)
        .into_iter()
        .find(|r| r.host_mount)
    {
        return Some(format!("{} {}", risk.service, risk.message));
    }
    manifest
        .backup
        .backups
        .values()
        .find_map(|backup| match &backup.source {
            berth_manifest::BackupSource::Berth => Some(format!(
                "backup {} copies the agent's own data",
                backup.name
            )),
            berth_manifest::BackupSource::Directory { .. }
            | berth_manifest::BackupSource::Sqlite { service: None, .. } => {
                Some(format!("backup {} reads a path on the server", backup.name))
            }
            _ => None,
        })
}

fn check_app_name(app: &str) -> ApiResult<()> {
    let valid = app.len() <= 64
        && app.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && app
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(OpError::invalid(format!("`{app}` is not a valid app name")).into())
    }
}

/// Newline-delimited JSON from a channel, ending when the sender is dropped.
fn ndjson<T: Serialize + Send + 'static>(receiver: mpsc::UnboundedReceiver<T>) -> Response {
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.recv().await?;
        let mut line = serde_json::to_vec(&item).unwrap_or_default();
        line.push(b'\n');
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)),
            receiver,
        ))
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

// ---- info, status, audit --------------------------------------------------------------

async fn docker_status(engine: &Engine) -> DockerStatus {
    let endpoint = engine.runtime().endpoint();
    match tokio::time::timeout(std::time::Duration::from_secs(3), engine.runtime().info()).await {
        Ok(Ok(info)) => DockerStatus {
            endpoint,
            version: Some(info.version),
            error: None,
        },
        Ok(Err(error)) => DockerStatus {
            endpoint,
            version: None,
            error: Some(error.to_string()),
        },
        Err(_) => DockerStatus {
            endpoint,
            version: None,
            error: Some("Docker did not answer within 3s".into()),
        },
    }
}

async fn info(State(state): State<ApiState>) -> Json<AgentInfo> {
    let mut info = state.info.clone();
    info.docker = docker_status(&state.engine).await;
    Json(info)
}

#[derive(Deserialize)]
struct StatusQuery {
    app: Option<String>,
}

async fn workers(State(state): State<ApiState>) -> Json<Vec<WorkerInfo>> {
    Json(state.engine.workers().list())
}

async fn status(
    State(state): State<ApiState>,
    Query(query): Query<StatusQuery>,
) -> ApiResult<Json<Status>> {
    Ok(Json(
        full_status(
            &state.engine,
            &state.info,
            &state.metrics.monitors,
            query.app.as_deref(),
        )
        .await?,
    ))
}

/// The agent, every app (or one) and the certificates, with the problems found in them.
async fn full_status(
    engine: &Arc<Engine>,
    info: &AgentInfo,
    monitors: &berth_monitor::external::MonitorBoard,
    app: Option<&str>,
) -> Result<Status, OpError> {
    let mut agent = info.clone();
    agent.docker = docker_status(engine).await;
    let names: Vec<String> = match app {
        Some(app) => {
            engine.require_app(app)?;
            vec![app.to_owned()]
        }
        None => engine.store().apps()?.into_iter().map(|a| a.name).collect(),
    };
    // Apps side by side: one app whose health probe hangs (2 s at most) must not make
    // `berth status` wait that long once per app.
    let apps: Vec<AppStatus> = futures_util::stream::iter(names)
        .map(|name| async move { engine.app_status(&name).await })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut status = Status {
        agent,
        apps,
        certificates: engine.routing().edge().certificates(),
        problems: Vec::new(),
        firing_alerts: Vec::new(),
        failing_channels: Vec::new(),
        monitors: monitors
            .all()
            .into_iter()
            .filter(|((monitor_app, _), _)| app.is_none_or(|a| a == monitor_app))
            .map(|((app, name), view)| MonitorInfo {
                app,
                name,
                check: view.check,
                checked_at: view.at,
                failure: view.failure,
                latency_ms: view.latency_ms,
                failures_in_row: view.state.failures_in_row,
                firing: view.state.triggered,
            })
            .collect(),
    };
    let (firing, deliveries) = alert_summary(engine, app)?;
    status.firing_alerts = firing;
    status.failing_channels = deliveries.into_iter().filter(|d| !d.ok).collect();
    status.problems = status.find_problems();
    Ok(status)
}

/// `GET /health` (`application/health+json`): a verdict per app service, backup and
/// certificate for outside uptime monitors, unauthenticated, so nothing but the verdicts.
/// Made at most once per [`HEALTH_FRESH`] however often it is asked (callers meanwhile get the
/// last one, or wait for the one being made), so a flood of requests cannot turn into a flood
/// of Docker calls and probes; and never slower than a few seconds.
struct HealthCache {
    engine: Arc<Engine>,
    info: AgentInfo,
    host: Arc<berth_monitor::HostMetrics>,
    monitors: Arc<berth_monitor::external::MonitorBoard>,
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, berth_api::HealthReport)>>,
}

/// How long a health report is served again before a new one is made.
const HEALTH_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

impl HealthCache {
    async fn report(&self) -> berth_api::HealthReport {
        // Held while a report is made: concurrent callers wait for it instead of making theirs.
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < HEALTH_FRESH
        {
            return report.clone();
        }
        let mut report = match tokio::time::timeout(
            std::time::Duration::from_secs(8),
            full_status(&self.engine, &self.info, &self.monitors, None),
        )
        .await
        {
            Ok(Ok(status)) => status.health_report(jiff::Timestamp::now().as_second()),
            Ok(Err(error)) => {
                tracing::warn!(error = %error.message, "the health report could not be made");
                berth_api::HealthReport::failing("agent:status")
            }
            Err(_) => berth_api::HealthReport::failing("agent:status"),
        };
        // The filesystems of berth's data and Docker's, as the host worker last saw them.
        for fs in self.host.filesystems() {
            report.add(
                &format!("{} data:disk", fs.purpose),
                "system",
                berth_api::disk_verdict(fs.used_fraction()),
            );
        }
        *last = Some((tokio::time::Instant::now(), report.clone()));
        report
    }
}

async fn health(cache: Arc<HealthCache>) -> Response {
    let report = cache.report().await;
    let code = StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::OK);
    let body = serde_json::to_vec(&report).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(berth_api::HEALTH_JSON),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
    offset: Option<usize>,
    app: Option<String>,
    /// Part of the actor (`alice`, `token ci`).
    actor: Option<String>,
    action: Option<String>,
    result: Option<String>,
}

async fn audit(
    State(state): State<ApiState>,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let filter = berth_state::AuditFilter {
        limit: query.limit.unwrap_or(50).min(10_000),
        offset: query.offset.unwrap_or(0).min(1_000_000),
        app: query.app.filter(|a| !a.is_empty()),
        actor: query.actor.filter(|a| !a.is_empty()),
        action: query.action.filter(|a| !a.is_empty()),
        result: query.result.filter(|a| !a.is_empty()),
    };
    let entries = state.engine.store().audit_filtered(&filter)?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| AuditEntry {
                at: e.at,
                actor: e.actor,
                action: e.action,
                target: e.target,
                result: e.result,
                detail: e.detail,
            })
            .collect(),
    ))
}

// ---- operations -----------------------------------------------------------------------

/// The agent is being replaced (`berth agent upgrade`): changes wait for the new process.
fn handing_over(upgrade: &LockInfo) -> OpError {
    OpError::new(
        ErrorKind::Locked,
        format!(
            "the agent is handing over to a new agent process (an upgrade started by {} at {})",
            upgrade.holder,
            format_time(upgrade.since)
        ),
    )
    .hint("run the command again in a few seconds: the new agent takes it")
}

/// Changes that take no operation lock but live in this process's memory (routes,
/// certificates) are refused during a hand-over: the new process would not see them.
fn not_handing_over(state: &ApiState) -> Result<(), OpError> {
    match state.engine.locks().frozen_by() {
        Some(upgrade) => Err(handing_over(&upgrade)),
        None => Ok(()),
    }
}

/// Takes the app's lock (or fails with who holds it), then runs `operation` in its own task,
/// streaming its events.
fn start_operation<F, Fut>(
    state: &ApiState,
    app: &str,
    name: &str,
    actor: &str,
    wait: bool,
    cleanup: Vec<PathBuf>,
    operation: F,
) -> ApiResult<Response>
where
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let locks = state.engine.locks().clone();
    start_locked_operation(state, &locks, app, name, actor, wait, cleanup, operation)
}

/// [`start_operation`] under another set of locks (backups have their own).
#[allow(clippy::too_many_arguments)]
fn start_locked_operation<F, Fut>(
    state: &ApiState,
    locks: &Arc<crate::locks::AppLocks>,
    app: &str,
    name: &str,
    actor: &str,
    wait: bool,
    cleanup: Vec<PathBuf>,
    operation: F,
) -> ApiResult<Response>
where
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let engine = state.engine.clone();
    let locks = locks.clone();
    let lock_info = LockInfo {
        operation: name.to_owned(),
        holder: actor.to_owned(),
        since: berth_state::now_ms(),
    };
    let lock = if wait {
        None
    } else {
        match locks.try_acquire(app, lock_info.clone()) {
            Ok(lock) => Some(lock),
            Err(holder) if holder.operation == crate::succession::UPGRADE_LOCK => {
                return Err(handing_over(&holder).into());
            }
            Err(holder) => {
                return Err(OpError::new(
                    ErrorKind::Locked,
                    format!(
                        "a {} of {app} is already in progress, started by {} at {}",
                        holder.operation,
                        holder.holder,
                        format_time(holder.since)
                    ),
                )
                .hint("wait for it to finish, or run again with --wait to queue behind it")
                .into());
            }
        }
    };
    let (sender, receiver) = mpsc::unbounded_channel();
    let progress = Progress::new(app, Some(sender.clone()), Some(engine.store().clone()));
    let app = app.to_owned();
    tokio::spawn(async move {
        let _lock = match lock {
            Some(lock) => lock,
            None => {
                let waiting = |holder: &LockInfo| {
                    progress.log(format!(
                        "waiting for the {} of {app} started by {} at {}",
                        holder.operation,
                        holder.holder,
                        format_time(holder.since)
                    ))
                };
                locks.acquire(&app, lock_info, waiting).await
            }
        };
        let outcome = operation(progress.clone()).await;
        progress.finish(OperationEvent::Finished(Box::new(outcome)));
        for path in cleanup {
            let _ = tokio::fs::remove_file(path).await;
        }
    });
    drop(sender);
    Ok(ndjson(receiver))
}

fn parse_manifest(
    text: &str,
    path: &str,
    base_dir: &str,
    environment: Option<&str>,
) -> ApiResult<berth_manifest::Manifest> {
    let source = ManifestSource {
        file: path,
        text,
        base_dir: std::path::Path::new(base_dir),
    };
    berth_manifest::load(source, environment).map_err(|error| {
        let mut op = OpError::invalid(format!("the manifest {path} is not valid"))
            .hint("run `berth check` to see every problem");
        op.details = vec![error.to_string()];
        ApiFailure::from(op)
    })
}

/// Why a caller below admin may not load this archive: a name in it outside the app's
/// uploaded images, or an archive whose names cannot all be read. `None` when it may.
async fn archive_outside_app(path: &std::path::Path, app: &str) -> Option<String> {
    let owned = path.to_owned();
    let names = match tokio::task::spawn_blocking(move || {
        berth_runtime::archive::image_names(&owned)
    })
    .await
    {
        Ok(Ok(names)) => names,
        Ok(Err(error)) => {
            return Some(format!(
                "this API token may load only archives berth can read through: {error}"
            ));
        }
        Err(error) => return Some(format!("the image archive could not be checked: {error}")),
    };
    names
        .iter()
        .find(|name| !berth_core::names::is_uploaded_image(app, name))
        .map(|name| {
            format!(
                "this API token may load only images of the app {app} built by `berth deploy --build local`, and the archive names {name}"
            )
        })
}

async fn deploy(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(request): Json<DeployRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    let manifest = parse_manifest(
        &request.manifest,
        &request.manifest_path,
        &request.base_dir,
        request.environment.as_deref(),
    )?;
    // A token limited to one app deploys that app only (the access check cannot read bodies).
    if let Some(own) = headers
        .get(TOKEN_APP_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|own| *own != manifest.app)
    {
        let message = format!(
            "this API token is for the app {own} only, not {}",
            manifest.app
        );
        state
            .engine
            .audit(&actor, "refused", &manifest.app, "refused", &message);
        return Err(OpError::new(ErrorKind::Forbidden, message).into());
    }
    let mut image_archives = Vec::new();
    for id in &request.image_archives {
        let path = upload_path(&state, id).ok_or_else(|| {
            OpError::invalid(format!("the image archive upload {id} is not on the agent"))
        })?;
        if below_admin(&headers)
            && let Some(message) = archive_outside_app(&path, &manifest.app).await
        {
            // `docker load` tags what the archive says, over any image of any app.
            state
                .engine
                .audit(&actor, "refused", &manifest.app, "refused", &message);
            return Err(OpError::new(ErrorKind::Forbidden, message)
                .hint("send images built by `berth deploy --build local` (named berth/APP/SERVICE:local-…), or load other archives with an admin token")
                .into());
        }
        image_archives.push(path);
    }
    if below_admin(&headers)
        && let Some(reach) = reaches_the_host(&manifest)
    {
        let message =
            format!("this API token may deploy only what stays inside its containers, and {reach}");
        state
            .engine
            .audit(&actor, "refused", &manifest.app, "refused", &message);
        return Err(OpError::new(ErrorKind::Forbidden, message)
            .hint("deploy this manifest with an admin token (or on the server)")
            .into());
    }
    let mut contexts = BTreeMap::new();
    let mut used_uploads = Vec::new();
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
    {
        if let ImageSource::Build(_) = service.source
            && !request.prebuilt.contains_key(&service.name)
        {
            let path = request
                .contexts
                .get(&service.name)
                .and_then(|id| upload_path(&state, id))
                .ok_or_else(|| {
                    OpError::invalid(format!(
                        "service {} builds an image but no build context was uploaded for it",
                        service.name
                    ))
                    .hint("deploy with `berth deploy`, which uploads each service's build context")
                })?;
            used_uploads.push(path.clone());
            contexts.insert(service.name.clone(), path);
        }
    }
    used_uploads.extend(image_archives.iter().cloned());
    let app = manifest.app.clone();
    let plan = state.engine.plan_deploy(crate::engine::DeployRequest {
        manifest,
        manifest_toml: request.manifest.clone(),
        contexts,
        prebuilt: request.prebuilt.clone(),
        image_archives,
        version: request.version.clone(),
        actor: actor.clone(),
        wait_drain: request.wait_drain,
    })?;
    let engine = state.engine.clone();
    used_uploads.sort();
    used_uploads.dedup();
    start_operation(
        &state,
        &app,
        "deploy",
        &actor,
        request.wait_for_lock,
        used_uploads,
        move |progress| engine.run_release(plan, progress),
    )
}

async fn rollback(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<RollbackRequest>,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    let actor = actor(&state, &headers);
    let plan = state
        .engine
        .plan_rollback(&app, request.release, &actor, request.wait_drain)?;
    let engine = state.engine.clone();
    start_operation(
        &state,
        &app,
        "rollback",
        &actor,
        request.wait_for_lock,
        Vec::new(),
        move |progress| engine.run_release(plan, progress),
    )
}

#[derive(Deserialize)]
struct RollbackPlanQuery {
    release: Option<i64>,
}

async fn rollback_plan(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(query): Query<RollbackPlanQuery>,
) -> ApiResult<Json<RollbackPlan>> {
    check_app_name(&app)?;
    Ok(Json(state.engine.rollback_plan(&app, query.release)?))
}

#[derive(Deserialize)]
struct CompareQuery {
    from: i64,
    to: i64,
}

/// How one release's manifest differs from another's (any two, in either order).
async fn compare_releases(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(query): Query<CompareQuery>,
) -> ApiResult<Json<RollbackPlan>> {
    check_app_name(&app)?;
    state.engine.require_app(&app)?;
    Ok(Json(
        state.engine.compare_releases(&app, query.from, query.to)?,
    ))
}

async fn restart(
    State(state): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
    headers: HeaderMap,
    Json(request): Json<RestartRequest>,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    let actor = actor(&state, &headers);
    state.engine.ensure_not_stopped(&app, "restart")?;
    state.engine.service_role(&app, &service)?;
    let engine = state.engine.clone();
    let (app2, actor2) = (app.clone(), actor.clone());
    start_operation(
        &state,
        &app,
        "restart",
        &actor,
        request.wait_for_lock,
        Vec::new(),
        move |progress| engine.restart_service(app2, service, actor2, progress),
    )
}

async fn stop_app(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<RestartRequest>,
) -> ApiResult<Response> {
    lifecycle(state, app, headers, request, "stop").await
}

async fn start_app(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<RestartRequest>,
) -> ApiResult<Response> {
    lifecycle(state, app, headers, request, "start").await
}

async fn lifecycle(
    state: ApiState,
    app: String,
    headers: HeaderMap,
    request: RestartRequest,
    operation: &'static str,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    state.engine.require_app(&app)?;
    if operation == "start" {
        state.engine.ensure_stopped(&app)?;
    }
    let actor = actor(&state, &headers);
    let engine = state.engine.clone();
    let (app2, actor2) = (app.clone(), actor.clone());
    start_operation(
        &state,
        &app,
        operation,
        &actor,
        request.wait_for_lock,
        Vec::new(),
        move |progress| async move {
            match operation {
                "stop" => engine.stop_app(app2, actor2, progress).await,
                _ => engine.start_app(app2, actor2, progress).await,
            }
        },
    )
}

async fn destroy_app(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<DestroyRequest>,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    state.engine.require_app(&app)?;
    let actor = actor(&state, &headers);
    let engine = state.engine.clone();
    let (app2, actor2) = (app.clone(), actor.clone());
    let wait = request.wait_for_lock;
    // The logs berth kept go with the app: a new app of the same name starts at release 1
    // again, and its `logs --release 1` must not show the old one's lines.
    let logs = state.logs.clone();
    start_operation(
        &state,
        &app,
        "destroy",
        &actor,
        wait,
        Vec::new(),
        move |progress| async move {
            let outcome = engine
                .destroy_app(app2.clone(), request, actor2, progress)
                .await;
            if outcome.ok {
                logs.remove_app(&app2);
            }
            outcome
        },
    )
}

async fn releases(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(query): Query<LimitQuery>,
) -> ApiResult<Json<Vec<ReleaseInfo>>> {
    check_app_name(&app)?;
    state.engine.require_app(&app)?;
    let releases = state
        .engine
        .store()
        .releases(&app, query.limit.unwrap_or(20).min(1000))?;
    Ok(Json(releases.iter().map(release_info).collect()))
}

// ---- edge --------------------------------------------------------------------------------

async fn maintenance(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<MaintenanceRequest>,
) -> ApiResult<Json<AppStatus>> {
    check_app_name(&app)?;
    not_handing_over(&state)?;
    let message = request
        .enabled
        .then(|| request.message.clone().unwrap_or_default());
    state
        .engine
        .set_maintenance(&app, message.as_deref(), &actor(&state, &headers))?;
    Ok(Json(state.engine.app_status(&app).await?))
}

async fn renew_certificate(
    State(state): State<ApiState>,
    Path(domain): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    not_handing_over(&state)?;
    state
        .engine
        .routing()
        .edge()
        .renew(&domain.to_ascii_lowercase())?;
    state.engine.audit(
        &actor(&state, &headers),
        "certificate.renew",
        &domain,
        "requested",
        "",
    );
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod contract {
    /// The paths a table names, with `{app}`-style segments and one-letter placeholders
    /// both written as `*`, and the query left out.
    fn normalized(path: &str) -> String {
        let path = path.split(['?', '[']).next().unwrap_or(path);
        path.split('/')
            .map(|segment| {
                let placeholder = segment.starts_with('{')
                    || (segment.len() == 1 && segment.chars().all(|c| c.is_ascii_uppercase()));
                if placeholder { "*" } else { segment }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Every route the router serves is in berth-api's endpoint table, and the table names
    /// no route the router lacks.
    #[test]
    fn the_api_table_and_the_router_agree() {
        let router = include_str!("api.rs");
        let router = &router[..router.find("mod contract").unwrap_or(router.len())];
        let served: std::collections::BTreeSet<String> = router
            .match_indices("\"/v1/")
            .filter_map(|(at, _)| router[at + 1..].split('"').next())
            .map(normalized)
            .collect();
        let table = include_str!("../../berth-api/src/lib.rs");
        let documented: std::collections::BTreeSet<String> = table
            .lines()
            .filter(|l| l.starts_with("//! | `"))
            .flat_map(|l| {
                l.split('`')
                    .filter(|part| part.contains("/v1/"))
                    .filter_map(|part| part.split_whitespace().nth(1))
                    .map(normalized)
                    .collect::<Vec<_>>()
            })
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let phantom: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && phantom.is_empty(),
            "served but not in berth-api's table: {undocumented:?}; in the table but not served: {phantom:?}"
        );
    }
}
