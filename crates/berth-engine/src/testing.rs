//! A whole engine on the in-memory runtime, for unit tests of its decisions (no Docker, no
//! sockets): a real state file in a temporary directory, a real proxy route table, and
//! [`FakeRuntime`] in place of Docker. Built for this crate's unit tests and, with the
//! `testing` feature, for the agent's (which add the API router on top).

#![allow(clippy::expect_used, clippy::unwrap_used)]

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
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;

pub struct Harness {
    pub fake: Arc<FakeRuntime>,
    pub engine: Arc<Engine>,
    pub dir: TempDir,
    /// The time the backups see (the real time until a test sets it).
    pub clock: Arc<TestClock>,
}

/// A clock a test sets; it reads the real time until then.
#[derive(Default)]
pub struct TestClock(std::sync::Mutex<Option<jiff::Timestamp>>);

impl TestClock {
    pub fn set(&self, at: jiff::Timestamp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }
}

impl berth_backup::runner::Clock for TestClock {
    fn now(&self) -> jiff::Timestamp {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(jiff::Timestamp::now)
    }
}

/// A manifest for a web service with a command health check (the fake answers it at once).
pub fn web_app(app: &str, extra: &str) -> String {
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

pub fn manifest(text: &str) -> Manifest {
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

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let fake = FakeRuntime::with_volume_root(&dir.path().join("volumes"));
        fake.publish("example/web:1");
        fake.publish("example/web:2");
        fake.publish("postgres:17");
        let clock = Arc::new(TestClock::default());
        let engine = Self::engine_on(&fake, &clock, dir.path().to_owned());
        Self {
            fake,
            engine,
            dir,
            clock,
        }
    }

    /// Another engine over the same state file and runtime, as after an agent restart.
    pub fn restarted(&self) -> Arc<Engine> {
        Self::engine_on(&self.fake, &self.clock, self.dir.path().to_owned())
    }

    fn engine_on(
        fake: &Arc<FakeRuntime>,
        clock: &Arc<TestClock>,
        data_dir: PathBuf,
    ) -> Arc<Engine> {
        let store = Arc::new(Store::open(&data_dir.join("state.db")).expect("state file"));
        let secrets =
            Arc::new(SecretBox::open(&data_dir.join("secrets.key")).expect("secrets key"));
        let proxy = Proxy::new(ProxyConfig::default());
        // One registry for the engine and the backups, as the agent has.
        let workers = Arc::new(berth_workers::Workers::new());
        let edge = Arc::new(Edge::new(berth_tls::CertStore::new(), false, None));
        let backups = Arc::new(Backups::new(BackupDeps {
            runtime: fake.clone(),
            store: store.clone(),
            secrets: secrets.clone(),
            data_dir: data_dir.clone(),
            agent_id: "test-agent".into(),
            workers: workers.clone(),
            clock: clock.clone(),
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
        engine.set_workers(workers);
        let engine = Arc::new(engine);
        engine.set_self();
        engine
    }

    pub fn plan(&self, text: &str, version: &str) -> ReleasePlan {
        ReleasePlan {
            manifest: manifest(text),
            image_archives: Vec::new(),
            manifest_toml: text.to_owned(),
            version: version.to_owned(),
            images: ImagePlan::Build(Default::default()),
            kind: ReleaseKind::Deploy,
            rollback_of: None,
            actor: "test".into(),
            wait_drain: false,
        }
    }

    /// Deploys `text` and returns the outcome with the steps it reported.
    pub async fn deploy(&self, text: &str, version: &str) -> (Outcome, Vec<OperationEvent>) {
        let plan = self.plan(text, version);
        self.run(plan).await
    }

    pub async fn run(&self, plan: ReleasePlan) -> (Outcome, Vec<OperationEvent>) {
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
    pub fn container(&self, part: &str) -> berth_runtime::fake::FakeContainer {
        self.fake
            .containers()
            .into_iter()
            .find(|c| c.spec.name.contains(part))
            .unwrap_or_else(|| panic!("no container named like {part}"))
    }

    /// `berth stop` of `app`; fails the test if it fails.
    pub async fn stop(&self, app: &str) {
        let outcome = self
            .engine
            .clone()
            .stop_app(app.into(), "test".into(), Progress::silent(app))
            .await;
        assert!(outcome.ok, "stop failed: {:?}", outcome.error);
    }

    /// Deploys and fails the test when the deploy fails.
    pub async fn deployed(&self, text: &str, version: &str) -> Outcome {
        let (outcome, events) = self.deploy(text, version).await;
        assert!(outcome.ok, "deploy failed: {:?}\n{events:?}", outcome.error);
        outcome
    }
}

/// The names of the steps that started, in order.
pub fn steps(events: &[OperationEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            OperationEvent::Started { step } => Some(step.clone()),
            _ => None,
        })
        .collect()
}

/// The steps that failed, with their messages.
pub fn failures(events: &[OperationEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            OperationEvent::Failed { step, message, .. } => Some((step.clone(), message.clone())),
            _ => None,
        })
        .collect()
}
