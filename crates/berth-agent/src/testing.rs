//! The agent's test kit: the engine's harness (`berth_engine::testing`) with the API router on
//! top, called in-process.

use berth_engine::edge::Edge;
pub(crate) use berth_engine::testing::*;
use std::sync::Arc;

/// The agent's API router on the harness's engine, called in-process (no socket). `token`
/// makes it a TCP listener's router, which requires the bearer token.
pub(crate) fn api_router(h: &Harness, token: Option<&str>) -> axum::Router {
    let lock_path = h.dir.path().join("agent.lock");
    let lock = std::fs::File::create(&lock_path).expect("lock file");
    let succession = Arc::new(crate::succession::Succession::new(
        h.dir.path(),
        lock,
        lock_path,
        std::time::Duration::from_secs(1),
    ));
    let state = crate::api::ApiState {
        engine: h.engine.clone(),
        info: agent_info(h),
        uploads: h.dir.path().join("uploads"),
        upload_quota: 1 << 20,
        uploads_in_progress: Arc::default(),
        transport: if token.is_some() { "tcp" } else { "unix" },
        token: token.map(|t| Arc::new(t.to_owned())),
        metrics: metrics(Arc::default()),
        succession,
        logs: Arc::new(berth_logs::LogStore::new(
            h.dir.path().join("logs"),
            berth_logs::Retention::default(),
        )),
    };
    crate::api::router(state)
}

/// The monitoring listener's router (`/metrics`, `/health`) on the harness's engine.
pub(crate) fn monitoring_router(
    h: &Harness,
    host: Arc<berth_monitor::HostMetrics>,
) -> axum::Router {
    crate::api::metrics_router(metrics(host), h.engine.clone(), agent_info(h))
}

/// What the agent says of itself, for a harness.
fn agent_info(h: &Harness) -> berth_api::AgentInfo {
    berth_api::AgentInfo {
        version: "test".into(),
        data_dir: h.dir.path().display().to_string(),
        pid: std::process::id(),
        http: None,
        https: None,
        dashboard: None,
        docker: berth_api::DockerStatus {
            endpoint: "fake://".into(),
            version: None,
            error: None,
        },
    }
}

/// Empty metrics over a certificate store of nothing, with `host` as the host's samples.
fn metrics(host: Arc<berth_monitor::HostMetrics>) -> Arc<crate::api::Metrics> {
    Arc::new(crate::api::Metrics {
        registry: prometheus_client::registry::Registry::default(),
        edge: Arc::new(Edge::new(berth_tls::CertStore::new(), false, None)),
        host,
        containers: Arc::new(berth_monitor::ContainerMetrics::default()),
        monitors: Arc::new(berth_monitor::external::MonitorBoard::default()),
    })
}

/// One request through a router, in-process: (status, body as JSON or as a string).
pub(crate) async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (http::StatusCode, serde_json::Value) {
    use tower::ServiceExt;
    let mut request = http::Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            request = request.header("content-type", "application/json");
            axum::body::Body::from(json.to_string())
        }
        None => axum::body::Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("the router answers");
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}
