//! A whole engine on the in-memory runtime, for unit tests of its decisions (no Docker, no
//! sockets): a real state file in a temporary directory, a real proxy route table, and
//! [`FakeRuntime`] in place of Docker.

use crate::edge::Edge;
use crate::engine::{Engine, ImagePlan, ReleasePlan};
use crate::progress::Progress;
use crate::routing::Routing;
use crate::secrets::SecretBox;
use berth_api::{OperationEvent, Outcome};
use berth_backup_jobs::{BackupDeps, Backups};
use berth_manifest::{Manifest, ManifestSource};
use berth_proxy::{Proxy, ProxyConfig};
use berth_runtime::fake::FakeRuntime;
use berth_state::{ReleaseKind, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;

pub(crate) struct Harness {
    pub fake: Arc<FakeRuntime>,
    pub engine: Arc<Engine>,
    pub dir: TempDir,
}

/// A manifest for a web service with a command health check (the fake answers it at once).
pub(crate) fn web_app(app: &str, extra: &str) -> String {
    format!(
        r#"app = "{app}"

[services.web]
image = "example/web:1"
port = 8080
healthcheck = {{ command = ["true"] }}
{extra}
"#
    )
}

pub(crate) fn manifest(text: &str) -> Manifest {
    let source = ManifestSource {
        file: "berth.toml",
        text,
        base_dir: std::path::Path::new("/tmp"),
    };
    match berth_manifest::load(source, None) {
        Ok(manifest) => manifest,
        Err(error) => panic!("test manifest is invalid: {error}"),
    }
}

impl Harness {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let fake = FakeRuntime::with_volume_root(&dir.path().join("volumes"));
        fake.publish("example/web:1");
        fake.publish("example/web:2");
        fake.publish("postgres:17");
        let engine = Self::engine_on(&fake, dir.path().to_owned());
        Self { fake, engine, dir }
    }

    /// Another engine over the same state file and runtime, as after an agent restart.
    pub(crate) fn restarted(&self) -> Arc<Engine> {
        Self::engine_on(&self.fake, self.dir.path().to_owned())
    }

    fn engine_on(fake: &Arc<FakeRuntime>, data_dir: PathBuf) -> Arc<Engine> {
        let store = Arc::new(Store::open(&data_dir.join("state.db")).expect("state file"));
        let secrets =
            Arc::new(SecretBox::open(&data_dir.join("secrets.key")).expect("secrets key"));
        let proxy = Proxy::new(ProxyConfig::default());
        let edge = Arc::new(Edge::new(berth_tls::CertStore::new(), false, None));
        let backups = Arc::new(Backups::new(BackupDeps {
            runtime: fake.clone(),
            store: store.clone(),
            secrets: secrets.clone(),
            data_dir: data_dir.clone(),
            agent_id: "test-agent".into(),
            workers: Arc::new(berth_workers::Workers::new()),
        }));
        let mut engine = Engine::new(
            fake.clone(),
            store,
            Arc::new(Routing::new(
                proxy,
                edge,
                Some("http://127.0.0.1:8080".into()),
            )),
            secrets,
            data_dir.clone(),
            "test-agent".into(),
            backups,
        );
        engine.set_secret_files_root(data_dir.join("secret-files"));
        let engine = Arc::new(engine);
        engine.set_self();
        engine
    }

    pub(crate) fn plan(&self, text: &str, version: &str) -> ReleasePlan {
        ReleasePlan {
            manifest: manifest(text),
            image_archives: Vec::new(),
            manifest_toml: text.to_owned(),
            version: version.to_owned(),
            images: ImagePlan::Build(BTreeMap::new()),
            kind: ReleaseKind::Deploy,
            rollback_of: None,
            actor: "test".into(),
            wait_drain: false,
        }
    }

    /// Deploys `text` and returns the outcome with the steps it reported.
    pub(crate) async fn deploy(&self, text: &str, version: &str) -> (Outcome, Vec<OperationEvent>) {
        let plan = self.plan(text, version);
        self.run(plan).await
    }

    pub(crate) async fn run(&self, plan: ReleasePlan) -> (Outcome, Vec<OperationEvent>) {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let progress = Progress::new(&plan.manifest.app, Some(sender), None);
        let outcome = self.engine.clone().run_release(plan, progress).await;
        let mut events = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            events.push(event);
        }
        (outcome, events)
    }

    /// The first container whose name contains `part` (`-web-`); fails the test if none.
    pub(crate) fn container(&self, part: &str) -> berth_runtime::fake::FakeContainer {
        self.fake
            .containers()
            .into_iter()
            .find(|c| c.spec.name.contains(part))
            .unwrap_or_else(|| panic!("no container named like {part}"))
    }

    /// `berth stop` of `app`; fails the test if it fails.
    pub(crate) async fn stop(&self, app: &str) {
        let outcome = self
            .engine
            .clone()
            .stop_app(app.into(), "test".into(), Progress::silent(app))
            .await;
        assert!(outcome.ok, "stop failed: {:?}", outcome.error);
    }

    /// Deploys and fails the test when the deploy fails.
    pub(crate) async fn deployed(&self, text: &str, version: &str) -> Outcome {
        let (outcome, events) = self.deploy(text, version).await;
        assert!(outcome.ok, "deploy failed: {:?}\n{events:?}", outcome.error);
        outcome
    }
}

/// The names of the steps that started, in order.
pub(crate) fn steps(events: &[OperationEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            OperationEvent::Started { step } => Some(step.clone()),
            _ => None,
        })
        .collect()
}

/// The steps that failed, with their messages.
pub(crate) fn failures(events: &[OperationEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            OperationEvent::Failed { step, message, .. } => Some((step.clone(), message.clone())),
            _ => None,
        })
        .collect()
}

impl Harness {
    /// The agent's API router on this engine, called in-process (no socket). `token` makes
    /// it a TCP listener's router, which requires the bearer token.
    pub(crate) fn api(&self, token: Option<&str>) -> axum::Router {
        let lock_path = self.dir.path().join("agent.lock");
        let lock = std::fs::File::create(&lock_path).expect("lock file");
        let succession = Arc::new(crate::succession::Succession::new(
            self.dir.path(),
            lock,
            lock_path,
            std::time::Duration::from_secs(1),
        ));
        let edge = Arc::new(Edge::new(berth_tls::CertStore::new(), false, None));
        let state = crate::api::ApiState {
            engine: self.engine.clone(),
            info: berth_api::AgentInfo {
                version: "test".into(),
                data_dir: self.dir.path().display().to_string(),
                pid: std::process::id(),
                http: None,
                https: None,
                docker: berth_api::DockerStatus {
                    endpoint: "fake://".into(),
                    version: None,
                    error: None,
                },
            },
            uploads: self.dir.path().join("uploads"),
            upload_quota: 1 << 20,
            uploads_in_progress: Arc::default(),
            transport: if token.is_some() { "tcp" } else { "unix" },
            token: token.map(|t| Arc::new(t.to_owned())),
            metrics: Arc::new(crate::api::Metrics {
                registry: prometheus_client::registry::Registry::default(),
                edge,
            }),
            succession,
        };
        crate::api::router(state)
    }
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
