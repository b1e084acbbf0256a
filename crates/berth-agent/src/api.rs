//! The agent's HTTP API (see `berth-api` for the contract).
//!
//! Long operations (deploy, rollback, restart) run in their own task: the response streams
//! their progress, and a client that disconnects does not stop them half-way.

use crate::engine::{Engine, ImagePlan, ReleasePlan, release_manifest};
use crate::error::{ErrorKind, OpError};
use crate::progress::Progress;
use crate::secrets;
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
use berth_state::ReleaseKind;
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
}

/// Everything `/metrics` reports.
pub struct Metrics {
    pub registry: prometheus_client::registry::Registry,
    pub edge: Arc<crate::edge::Edge>,
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
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        }),
    )
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

async fn metrics_endpoint(State(state): State<ApiState>) -> Response {
    state.metrics.render()
}

pub fn router(state: ApiState) -> Router {
    let token = state.token.clone();
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/status", get(status))
        .route("/v1/audit", get(audit))
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
        .route("/v1/apps/{app}/secrets/{name}", get(get_secret).put(set_secret).delete(delete_secret))
        .route("/v1/apps/{app}/secrets/{name}/generate", post(generate_secret))
        // Everything but build contexts (above) is small JSON: manifests, secret values, keys.
        .layer(axum::extract::DefaultBodyLimit::max(JSON_LIMIT))
        .layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            let token = token.clone();
            async move {
                if let Some(expected) = token {
                    let presented = request
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .unwrap_or("");
                    if !constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
                        let mut refused = ApiFailure(
                            OpError::new(ErrorKind::Invalid, "missing or wrong API token")
                                .hint("pass the token from the agent's api-token file (BERTH_TOKEN)"),
                            StatusCode::UNAUTHORIZED,
                        )
                        .into_response();
                        // An unauthenticated client does not keep its connection.
                        refused.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                        return refused;
                    }
                }
                next.run(request).await
            }
        }))
        .with_state(state)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error answer: the operation's error with its HTTP status.
struct ApiFailure(OpError, StatusCode);
// (OpError is a box, so this stays small.)

impl From<OpError> for ApiFailure {
    fn from(error: OpError) -> Self {
        let status = error.kind.status();
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
    format!("{claimed} via {}", state.transport)
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
    let endpoint = engine.runtime.endpoint();
    match tokio::time::timeout(std::time::Duration::from_secs(3), engine.runtime.info()).await {
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
    let mut agent = state.info.clone();
    agent.docker = docker_status(&state.engine).await;
    let names: Vec<String> = match &query.app {
        Some(app) => {
            if state.engine.store.app(app)?.is_none() {
                return Err(OpError::not_found(format!(
                    "no app named {app} has been deployed to this agent"
                ))
                .into());
            }
            vec![app.clone()]
        }
        None => state
            .engine
            .store
            .apps()?
            .into_iter()
            .map(|a| a.name)
            .collect(),
    };
    // Apps side by side: one app whose health probe hangs (2 s at most) must not make
    // `berth status` wait that long once per app.
    let engine = &state.engine;
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
        certificates: state.engine.edge.certificates(),
        problems: Vec::new(),
    };
    status.problems = status.find_problems();
    Ok(Json(status))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
    app: Option<String>,
}

async fn audit(
    State(state): State<ApiState>,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let entries = state
        .engine
        .store
        .audit(query.limit.unwrap_or(50).min(10_000), query.app.as_deref())?;
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

// ---- uploads --------------------------------------------------------------------------

/// The largest JSON body a request may have.
const JSON_LIMIT: usize = 4 << 20;
/// How long an upload waits for the deploy that uses it.
const UPLOAD_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes uploads older than [`UPLOAD_TTL`] (their deploy never came, or failed before it
/// could clean up) and returns the bytes the others hold.
fn sweep_uploads(dir: &std::path::Path) -> u64 {
    let mut held = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let expired = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > UPLOAD_TTL);
        if expired {
            tracing::info!(upload = %entry.path().display(), "removing an upload no deploy used within an hour");
            let _ = std::fs::remove_file(entry.path());
        } else {
            held += meta.len();
        }
    }
    held
}

async fn upload(State(state): State<ApiState>, body: Body) -> ApiResult<Json<Upload>> {
    let id = hex::encode(rand::random::<[u8; 12]>());
    let path = state.uploads.join(format!("{id}.tar"));
    let dir = state.uploads.clone();
    let held = tokio::task::spawn_blocking(move || sweep_uploads(&dir))
        .await
        .unwrap_or(0);
    let quota = state.upload_quota;
    let over_quota = |bytes: u64, others: u64| -> ApiFailure {
        ApiFailure(
            OpError::invalid(format!(
                "the agent holds {} of build contexts for deploys in progress, and this one would take it past its quota of {} (at {} so far)",
                human_size(held.saturating_add(others)),
                human_size(quota),
                human_size(bytes)
            ))
            .hint("shrink the build context (.dockerignore), wait for other deploys to finish, or raise the agent's --upload-quota"),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
    };
    let failed = |e: std::io::Error| -> ApiFailure {
        let message = if e.raw_os_error() == Some(28) {
            format!(
                "the agent's disk is full while receiving the build context ({})",
                state.uploads.display()
            )
        } else {
            format!(
                "cannot store the build context in {}: {e}",
                state.uploads.display()
            )
        };
        OpError::failed(message).into()
    };
    let mut file = tokio::fs::File::create(&path).await.map_err(failed)?;
    // Removes the file unless the upload completes, however this handler ends (a client
    // that goes away drops it mid-way), and counts its bytes against the quota meanwhile.
    let mut receiving = Receiving {
        path: Some(path.clone()),
        counted: 0,
        in_progress: Arc::clone(&state.uploads_in_progress),
    };
    let mut stream = body.into_data_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                return Err(
                    OpError::invalid(format!("the upload was interrupted: {error}")).into(),
                );
            }
        };
        bytes += chunk.len() as u64;
        let all_in_progress = receiving.count(chunk.len() as u64);
        if held.saturating_add(all_in_progress) > quota {
            drop(file);
            return Err(over_quota(bytes, all_in_progress - bytes));
        }
        if let Err(error) = file.write_all(&chunk).await {
            return Err(failed(error));
        }
    }
    file.sync_all().await.map_err(failed)?;
    receiving.done();
    Ok(Json(Upload { id, bytes }))
}

/// An upload being received: its file is removed unless [`Receiving::done`] is called, and
/// its bytes are counted among those in progress until it ends either way.
struct Receiving {
    path: Option<PathBuf>,
    counted: u64,
    in_progress: Arc<std::sync::atomic::AtomicU64>,
}

impl Receiving {
    /// Counts `n` more bytes; returns the bytes of every upload in progress.
    fn count(&mut self, n: u64) -> u64 {
        self.counted += n;
        self.in_progress
            .fetch_add(n, std::sync::atomic::Ordering::AcqRel)
            .saturating_add(n)
    }

    fn done(mut self) {
        self.path = None;
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.in_progress
            .fetch_sub(self.counted, std::sync::atomic::Ordering::AcqRel);
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{b} bytes"),
    }
}

fn upload_path(state: &ApiState, id: &str) -> Option<PathBuf> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let path = state.uploads.join(format!("{id}.tar"));
    path.exists().then_some(path)
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
    match state.engine.locks.frozen_by() {
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
    let locks = state.engine.locks.clone();
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
    let progress = Progress::new(app, Some(sender.clone()), Some(engine.store.clone()));
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

pub(crate) fn format_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
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
    let mut contexts = BTreeMap::new();
    let mut used_uploads = Vec::new();
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
    {
        if let ImageSource::Build(_) = service.source {
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
    let mut image_archives = Vec::new();
    for id in &request.image_archives {
        let path = upload_path(&state, id).ok_or_else(|| {
            OpError::invalid(format!("the image archive upload {id} is not on the agent"))
        })?;
        used_uploads.push(path.clone());
        image_archives.push(path);
    }
    state.engine.ensure_not_stopped(&manifest.app, "deploy")?;
    state.engine.secret_values(&manifest)?;
    state.engine.check_route_conflicts(&manifest)?;
    let version = request
        .version
        .clone()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string());
    let app = manifest.app.clone();
    let plan = ReleasePlan {
        manifest,
        image_archives,
        manifest_toml: request.manifest.clone(),
        version,
        images: ImagePlan::Build(contexts),
        kind: ReleaseKind::Deploy,
        rollback_of: None,
        actor: actor.clone(),
        wait_drain: request.wait_drain,
    };
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
    state.engine.ensure_not_stopped(&app, "roll back")?;
    let (_live, target) = state.engine.rollback_target(&app, request.release)?;
    let manifest = release_manifest(&target)?;
    let plan = ReleasePlan {
        manifest,
        image_archives: Vec::new(),
        manifest_toml: target.manifest_toml.clone(),
        version: target.version.clone(),
        images: ImagePlan::Existing(target.images.clone()),
        kind: ReleaseKind::Rollback,
        rollback_of: Some(target.number),
        actor: actor.clone(),
        wait_drain: request.wait_drain,
    };
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
    if state.engine.store.app(&app)?.is_none() {
        return Err(OpError::not_found(format!(
            "no app named {app} has been deployed to this agent"
        ))
        .hint("`berth apps` lists the apps")
        .into());
    }
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
    if state.engine.store.app(&app)?.is_none() {
        return Err(OpError::not_found(format!(
            "no app named {app} has been deployed to this agent"
        ))
        .hint("`berth apps` lists the apps")
        .into());
    }
    let actor = actor(&state, &headers);
    let engine = state.engine.clone();
    let (app2, actor2) = (app.clone(), actor.clone());
    let wait = request.wait_for_lock;
    start_operation(
        &state,
        &app,
        "destroy",
        &actor,
        wait,
        Vec::new(),
        move |progress| engine.destroy_app(app2, request, actor2, progress),
    )
}

async fn releases(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(query): Query<LimitQuery>,
) -> ApiResult<Json<Vec<ReleaseInfo>>> {
    check_app_name(&app)?;
    if state.engine.store.app(&app)?.is_none() {
        return Err(OpError::not_found(format!(
            "no app named {app} has been deployed to this agent"
        ))
        .into());
    }
    let releases = state
        .engine
        .store
        .releases(&app, query.limit.unwrap_or(20).min(1000))?;
    Ok(Json(releases.iter().map(release_info).collect()))
}

// ---- logs and exec --------------------------------------------------------------------

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
    /// Unix seconds.
    since: Option<i64>,
}

async fn logs(
    State(state): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    let role = state.engine.service_role(&app, &service)?;
    let containers = state
        .engine
        .service_containers(&app, &service, role == berth_manifest::Role::Accessory)
        .await?;
    if containers.is_empty() {
        return Err(OpError::not_found(format!(
            "service {service} of {app} has no running containers"
        ))
        .into());
    }
    let (sender, receiver) = mpsc::unbounded_channel::<LogLine>();
    let log_query = LogQuery {
        tail: query.tail,
        follow: query.follow,
        since: query.since,
        timestamps: false,
    };
    let mut followed: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (id, name) in containers {
        followed.insert(id.clone());
        tokio::spawn(pass_logs(
            state.engine.clone(),
            id,
            name,
            log_query.clone(),
            sender.clone(),
        ));
    }
    if query.follow {
        // Following a service, not a container: a restart or a deploy replaces its
        // containers, and the new ones are followed from their first line.
        let engine = state.engine.clone();
        let accessory = role == berth_manifest::Role::Accessory;
        tokio::spawn(async move {
            let from_start = LogQuery {
                tail: None,
                follow: true,
                since: None,
                timestamps: false,
            };
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if sender.is_closed() {
                    return;
                }
                let Ok(now) = engine.service_containers(&app, &service, accessory).await else {
                    continue;
                };
                for (id, name) in now {
                    if followed.insert(id.clone()) {
                        let _ = sender.send(LogLine {
                            container: name.clone(),
                            stream: "stderr".into(),
                            line: format!("berth: following the new container {name}"),
                        });
                        tokio::spawn(pass_logs(
                            engine.clone(),
                            id,
                            name,
                            from_start.clone(),
                            sender.clone(),
                        ));
                    }
                }
            }
        });
    } else {
        drop(sender);
    }
    Ok(ndjson(receiver))
}

/// Passes one container's log to `sender`, line by line, until it ends or the client goes.
async fn pass_logs(
    engine: Arc<Engine>,
    id: String,
    name: String,
    query: LogQuery,
    sender: mpsc::UnboundedSender<LogLine>,
) {
    let mut stream = engine.runtime.logs(&id, &query);
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                let _ = sender.send(LogLine {
                    container: name.clone(),
                    stream: "stderr".into(),
                    line: format!("berth: {error}"),
                });
                return;
            }
        };
        let stream_name = match chunk.stream {
            berth_runtime::LogStream::Stdout => "stdout",
            berth_runtime::LogStream::Stderr => "stderr",
        };
        let buffer = pending.entry(stream_name.to_owned()).or_default();
        buffer.push_str(&String::from_utf8_lossy(&chunk.data));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let line = LogLine {
                container: name.clone(),
                stream: stream_name.into(),
                line: line.trim_end_matches(['\n', '\r']).to_owned(),
            };
            if sender.send(line).is_err() {
                return; // the client went away
            }
        }
    }
    for (stream_name, rest) in pending {
        if !rest.is_empty() {
            let _ = sender.send(LogLine {
                container: name.clone(),
                stream: stream_name,
                line: rest,
            });
        }
    }
}

/// The running container a command of `service` runs in: (id, name).
async fn exec_container(state: &ApiState, app: &str, service: &str) -> ApiResult<(String, String)> {
    let role = state.engine.service_role(app, service)?;
    let containers = state
        .engine
        .service_containers(app, service, role == berth_manifest::Role::Accessory)
        .await?;
    containers.into_iter().next().ok_or_else(|| {
        OpError::not_found(format!(
            "service {service} of {app} has no running container"
        ))
        .into()
    })
}

async fn exec(
    State(state): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
    headers: HeaderMap,
    Json(request): Json<ExecRequest>,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    if request.command.is_empty() {
        return Err(OpError::invalid("no command given")
            .hint("berth exec web -- COMMAND ARGS")
            .into());
    }
    let (id, name) = exec_container(&state, &app, &service).await?;
    let actor = actor(&state, &headers);
    state.engine.audit(
        &actor,
        "exec",
        &format!("{app}/{service}"),
        "started",
        &request.command.join(" "),
    );
    let session = state
        .engine
        .runtime
        .exec(&id, &request.command)
        .await
        .map_err(OpError::from)?;
    let (sender, receiver) = mpsc::unbounded_channel::<ExecEvent>();
    let engine = state.engine.clone();
    tokio::spawn(async move {
        let mut output = session.output;
        while let Some(chunk) = output.next().await {
            let event = match chunk {
                Ok(chunk) => ExecEvent::Output {
                    stream: match chunk.stream {
                        berth_runtime::LogStream::Stdout => "stdout".into(),
                        berth_runtime::LogStream::Stderr => "stderr".into(),
                    },
                    data: String::from_utf8_lossy(&chunk.data).into_owned(),
                },
                Err(error) => ExecEvent::Error {
                    message: error.to_string(),
                },
            };
            if sender.send(event).is_err() {
                return;
            }
        }
        let _ = sender.send(match exit_code(&engine, &session.id).await {
            Ok(code) => ExecEvent::Exit {
                code,
                container: name,
            },
            Err(message) => ExecEvent::Error { message },
        });
    });
    Ok(ndjson(receiver))
}

#[derive(Deserialize)]
struct AttachQuery {
    /// The [`AttachSpec`] as hex-encoded JSON (a command's words may hold anything).
    spec: String,
}

/// `berth exec -it`: the command runs with standard input (and a terminal when asked), and
/// the connection, upgraded, carries [`ExecFrame`]s both ways until it exits.
async fn attach(
    State(state): State<ApiState>,
    Path((app, service)): Path<(String, String)>,
    Query(query): Query<AttachQuery>,
    headers: HeaderMap,
    mut request: axum::extract::Request,
) -> ApiResult<Response> {
    check_app_name(&app)?;
    let spec: AttachSpec = hex::decode(&query.spec)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| OpError::invalid("the attach request's spec is not valid"))?;
    let upgrade_asked = headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(EXEC_PROTOCOL));
    if !upgrade_asked {
        return Err(OpError::invalid(format!(
            "an attached command needs `Upgrade: {EXEC_PROTOCOL}`"
        ))
        .hint("use `berth exec -it`")
        .into());
    }
    if spec.command.is_empty() {
        return Err(OpError::invalid("no command given")
            .hint("berth exec -it web -- sh")
            .into());
    }
    let (id, _name) = exec_container(&state, &app, &service).await?;
    let actor = actor(&state, &headers);
    state.engine.audit(
        &actor,
        "exec",
        &format!("{app}/{service}"),
        "started",
        &format!(
            "{}{}",
            if spec.tty { "(terminal) " } else { "" },
            spec.command.join(" ")
        ),
    );
    let session = state
        .engine
        .runtime
        .exec_with(
            &id,
            &spec.command,
            &berth_runtime::ExecOptions {
                stdin: true,
                tty: spec.tty,
                ..Default::default()
            },
        )
        .await
        .map_err(OpError::from)?;
    if let (true, Some((rows, cols))) = (spec.tty, spec.size) {
        // Best effort: a command that already exited has nothing to resize.
        let _ = state
            .engine
            .runtime
            .resize_exec(&session.id, rows, cols)
            .await;
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let engine = state.engine.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => pump_attached(engine, session, upgraded, spec.tty).await,
            Err(error) => {
                tracing::warn!(%error, "an attached command's connection was not upgraded")
            }
        }
    });
    Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, EXEC_PROTOCOL)
        .body(axum::body::Body::empty())
        .map_err(|e| OpError::failed(e.to_string()).into())
}

/// Moves an attached command's input, output and terminal size over the upgraded
/// connection; the exit code is the last frame.
async fn pump_attached(
    engine: Arc<crate::engine::Engine>,
    session: berth_runtime::ExecSession,
    upgraded: hyper::upgrade::Upgraded,
    tty: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = hyper_util::rt::TokioIo::new(upgraded);
    let (mut reader, mut writer) = tokio::io::split(io);
    let exec_id = session.id.clone();
    let mut input = session.input;
    let resizer = engine.clone();
    let resize_id = exec_id.clone();
    // The client's frames: input, its end, and resizes. A client that goes away ends the
    // command's input, as closing a terminal would.
    let from_client = tokio::spawn(async move {
        let mut buffer = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            loop {
                match ExecFrame::decode(&mut buffer) {
                    Ok(Some(ExecFrame::Stdin(data))) => {
                        if let Some(stdin) = input.as_mut()
                            && stdin.write_all(&data).await.is_err()
                        {
                            input = None;
                        }
                    }
                    Ok(Some(ExecFrame::StdinClosed)) => {
                        if let Some(mut stdin) = input.take() {
                            let _ = stdin.shutdown().await;
                        }
                    }
                    Ok(Some(ExecFrame::Resize { rows, cols })) => {
                        let _ = resizer.runtime.resize_exec(&resize_id, rows, cols).await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "an attached client sent a bad frame");
                        return;
                    }
                }
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if let Some(mut stdin) = input.take() {
                        let _ = stdin.shutdown().await;
                    }
                    // A terminal that goes away hangs up its command, as closing a terminal
                    // window does: a shell or console left behind would run for good.
                    if tty
                        && let Ok(Some(pid)) = resizer.runtime.exec_pid(&resize_id).await
                        && let Some(pid) = i32::try_from(pid)
                            .ok()
                            .and_then(rustix::process::Pid::from_raw)
                    {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::HUP);
                    }
                    return;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let mut output = session.output;
    let mut failure = None;
    while let Some(chunk) = output.next().await {
        let frame = match chunk {
            Ok(chunk) => match chunk.stream {
                berth_runtime::LogStream::Stdout => ExecFrame::Stdout(chunk.data.to_vec()),
                berth_runtime::LogStream::Stderr => ExecFrame::Stderr(chunk.data.to_vec()),
            },
            Err(error) => {
                failure = Some(error.to_string());
                break;
            }
        };
        if writer.write_all(&frame.encode()).await.is_err() {
            from_client.abort();
            return;
        }
    }
    from_client.abort();
    let last = match failure {
        Some(message) => ExecFrame::Error(message),
        None => match exit_code(&engine, &exec_id).await {
            Ok(code) => ExecFrame::Exit(code),
            Err(message) => ExecFrame::Error(message),
        },
    };
    let _ = writer.write_all(&last.encode()).await;
    let _ = writer.shutdown().await;
}

/// The exit code of a command whose output has ended (Docker may need a moment to record
/// it).
async fn exit_code(engine: &crate::engine::Engine, exec_id: &str) -> Result<i64, String> {
    for _ in 0..100 {
        match engine.runtime.exec_exit_code(exec_id).await {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(-1)
}

// ---- secrets --------------------------------------------------------------------------

fn check_secret_name(name: &str) -> ApiResult<()> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if valid {
        Ok(())
    } else {
        Err(OpError::invalid(format!("`{name}` is not a valid secret name"))
            .hint("use letters, digits and underscores, not starting with a digit, such as JWT_SECRET_KEY")
            .into())
    }
}

/// Services of the live release that use each secret.
fn secret_users(engine: &Engine, app: &str) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some(manifest) = engine
        .store
        .live_release(app)
        .ok()
        .flatten()
        .and_then(|r| release_manifest(&r).ok())
    else {
        return users;
    };
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
    {
        for secret in &service.secrets {
            users
                .entry(secret.name.clone())
                .or_default()
                .push(service.name.clone());
        }
    }
    users
}

async fn list_secrets(
    State(state): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<SecretInfo>>> {
    check_app_name(&app)?;
    let users = secret_users(&state.engine, &app);
    let secrets = state.engine.store.secrets(&app)?;
    Ok(Json(
        secrets
            .into_iter()
            .map(|s| SecretInfo {
                used_by: users.get(&s.name).cloned().unwrap_or_default(),
                name: s.name,
                created_at: s.created_at,
                updated_at: s.updated_at,
            })
            .collect(),
    ))
}

fn secret_info(state: &ApiState, app: &str, name: &str) -> ApiResult<SecretInfo> {
    let users = secret_users(&state.engine, app);
    let stored = state
        .engine
        .store
        .secrets(app)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| OpError::failed(format!("secret {name} vanished after it was stored")))?;
    Ok(SecretInfo {
        used_by: users.get(name).cloned().unwrap_or_default(),
        name: stored.name,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
    })
}

fn store_secret(
    state: &ApiState,
    app: &str,
    name: &str,
    value: &str,
    actor: &str,
    action: &str,
) -> ApiResult<SecretInfo> {
    let sealed = state.engine.secrets.seal(value).map_err(OpError::from)?;
    state.engine.store.put_secret(app, name, &sealed)?;
    // Only the name is ever recorded.
    state
        .engine
        .audit(actor, action, &format!("{app}/{name}"), "ok", "");
    secret_info(state, app, name)
}

async fn set_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(value): Json<SecretValue>,
) -> ApiResult<Json<SecretInfo>> {
    check_app_name(&app)?;
    check_secret_name(&name)?;
    if value.value.is_empty() {
        return Err(OpError::invalid("the secret's value is empty").into());
    }
    Ok(Json(store_secret(
        &state,
        &app,
        &name,
        &value.value,
        &actor(&state, &headers),
        "secret.set",
    )?))
}

async fn get_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<SecretValue>> {
    check_app_name(&app)?;
    check_secret_name(&name)?;
    let ciphertext = state
        .engine
        .store
        .secret_ciphertext(&app, &name)?
        .ok_or_else(|| {
            OpError::not_found(format!("app {app} has no secret {name}")).hint(format!(
                "set it with `berth secrets set {name} --app {app}`"
            ))
        })?;
    let value = state
        .engine
        .secrets
        .open_value(&name, &ciphertext)
        .map_err(OpError::from)?;
    state.engine.audit(
        &actor(&state, &headers),
        "secret.get",
        &format!("{app}/{name}"),
        "ok",
        "",
    );
    Ok(Json(SecretValue { value }))
}

async fn delete_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    check_app_name(&app)?;
    check_secret_name(&name)?;
    if !state.engine.store.delete_secret(&app, &name)? {
        return Err(OpError::not_found(format!("app {app} has no secret {name}")).into());
    }
    state.engine.audit(
        &actor(&state, &headers),
        "secret.rm",
        &format!("{app}/{name}"),
        "ok",
        "",
    );
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct GenerateQuery {
    #[serde(default)]
    force: bool,
}

async fn generate_secret(
    State(state): State<ApiState>,
    Path((app, name)): Path<(String, String)>,
    Query(query): Query<GenerateQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<SecretInfo>> {
    check_app_name(&app)?;
    check_secret_name(&name)?;
    if !query.force && state.engine.store.secret_ciphertext(&app, &name)?.is_some() {
        return Err(OpError::new(
            ErrorKind::Locked,
            format!("secret {name} of {app} already exists"),
        )
        .hint("pass --force to replace it with a new random value")
        .into());
    }
    let value = secrets::generate_value();
    Ok(Json(store_secret(
        &state,
        &app,
        &name,
        &value,
        &actor(&state, &headers),
        "secret.generate",
    )?))
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
    state.engine.edge.renew(&domain.to_ascii_lowercase())?;
    state.engine.audit(
        &actor(&state, &headers),
        "certificate.renew",
        &domain,
        "requested",
        "",
    );
    Ok(StatusCode::ACCEPTED)
}

// ---- backups ----------------------------------------------------------------------------

/// The manifest a backup request is about: the one sent (for this app), else the live one.
fn backup_manifest(
    state: &ApiState,
    app: &str,
    sent: Option<&ManifestText>,
) -> ApiResult<berth_manifest::Manifest> {
    check_app_name(app)?;
    let sent = match sent {
        Some(text) => Some(parse_manifest(
            &text.manifest,
            &text.manifest_path,
            &text.base_dir,
            text.environment.as_deref(),
        )?),
        None => None,
    };
    Ok(state.engine.backup_manifest(app, sent)?)
}

fn check_backup_id(id: Option<&str>) -> ApiResult<()> {
    match id {
        Some(id) if !berth_backup::meta::is_valid_id(id) => {
            Err(OpError::invalid(format!("`{id}` is not a backup id"))
                .hint("ids look like 20261123T030001Z-3f9a; `berth backup list` shows them")
                .into())
        }
        _ => Ok(()),
    }
}

async fn backup_run(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<BackupRunRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    let manifest = backup_manifest(&state, &app, request.manifest.as_ref())?;
    let names = Engine::backup_names(&manifest, &request.names)?;
    let engine = state.engine.clone();
    let locks = engine.backup_locks.clone();
    let actor2 = actor.clone();
    start_locked_operation(
        &state,
        &locks,
        &app,
        "backup",
        &actor,
        true,
        Vec::new(),
        move |progress| {
            engine.run_backups(
                manifest,
                names,
                berth_backup::Reason::Manual,
                actor2,
                progress,
            )
        },
    )
}

async fn backup_list(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Json(request): Json<BackupListRequest>,
) -> ApiResult<Json<BackupList>> {
    let manifest = backup_manifest(&state, &app, request.manifest.as_ref())?;
    if let Some(name) = &request.name {
        Engine::backup_named(&manifest, name)?;
    }
    Ok(Json(
        state
            .engine
            .list_backups(&manifest, request.name.as_deref(), request.refresh)
            .await?,
    ))
}

async fn backup_verify(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<BackupVerifyRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    let manifest = backup_manifest(&state, &app, request.manifest.as_ref())?;
    let names = Engine::backup_names(&manifest, &request.names)?;
    check_backup_id(request.id.as_deref())?;
    let identity = match &request.identity {
        Some(text) => Some(
            berth_backup::Identities::parse(text)
                .map_err(|e| OpError::invalid(format!("the identity given: {e}")))?,
        ),
        None => None,
    };
    if request.adopt_unsigned && request.id.is_none() {
        return Err(OpError::invalid(
            "adopting unsigned backups takes one backup at a time, named with --id",
        )
        .hint("look at each unsigned backup in `berth backup list`, and adopt only those you know this server took")
        .into());
    }
    let engine = state.engine.clone();
    let locks = engine.backup_locks.clone();
    let actor2 = actor.clone();
    start_locked_operation(
        &state,
        &locks,
        &app,
        "verification",
        &actor,
        true,
        Vec::new(),
        move |progress| {
            engine.verify_backups(
                manifest,
                names,
                crate::backups::VerifyOptions {
                    id: request.id,
                    adopt_unsigned: request.adopt_unsigned,
                    identity,
                },
                actor2,
                progress,
            )
        },
    )
}

async fn backup_prune(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<BackupPruneRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    let manifest = backup_manifest(&state, &app, request.manifest.as_ref())?;
    let names = Engine::backup_names(&manifest, &request.names)?;
    let engine = state.engine.clone();
    let locks = engine.backup_locks.clone();
    let actor2 = actor.clone();
    start_locked_operation(
        &state,
        &locks,
        &app,
        "prune",
        &actor,
        true,
        Vec::new(),
        move |progress| engine.prune_backups(manifest, names, request.dry_run, actor2, progress),
    )
}

async fn restore(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(request): Json<RestoreRequest>,
) -> ApiResult<Response> {
    let actor = actor(&state, &headers);
    let manifest = backup_manifest(&state, &app, request.manifest.as_ref())?;
    Engine::backup_named(&manifest, &request.name)?;
    check_backup_id(request.id.as_deref())?;
    let at = match &request.at {
        Some(text) => Some(crate::restore::parse_at(text)?),
        None => None,
    };
    let identity = match &request.identity {
        Some(text) => Some(
            berth_backup::Identities::parse(text)
                .map_err(|e| OpError::invalid(format!("the identity given: {e}")))?,
        ),
        None => None,
    };
    if let Some(from) = &request.from
        && !manifest.backup.backups[&request.name].to.contains(from)
    {
        return Err(
            OpError::invalid(format!("backup {} is not stored on {from}", request.name))
                .hint(format!(
                    "its storage: {}",
                    manifest.backup.backups[&request.name].to.join(", ")
                ))
                .into(),
        );
    }
    let plan = crate::restore::RestorePlan {
        manifest,
        name: request.name,
        id: request.id,
        at,
        to: request.to.map(PathBuf::from),
        force: request.force,
        from: request.from,
        identity,
        keep_setuid: request.keep_setuid,
        allow_untrusted: request.allow_untrusted,
        actor: actor.clone(),
    };
    let engine = state.engine.clone();
    // The deploy lock: nothing may replace the containers a restore stops and starts.
    start_operation(
        &state,
        &app,
        "restore",
        &actor,
        false,
        Vec::new(),
        move |progress| engine.restore(plan, progress),
    )
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
