//! Backups as the agent runs them: it turns a manifest's `[backups.NAME]` into a source (a
//! SQLite file inside a volume, a dump run in a database's container or on the server, a
//! volume, berth's own data directory), a content check, and the storage to write to, then
//! lets `berth-backup` stream, store, read back and check. Every run, verification and prune
//! is recorded in the state (`backup_runs`, the catalog) and the audit log.
//!
//! [`Backups`] is a component of its own: it is given what it uses (the container runtime, the
//! state, the secrets box, the data directory, the worker registry, the clock) when the agent
//! starts, learns of release changes through a channel ([`scheduler`]), and reaches the engine
//! only through [`ServiceControl`], to start a service again after a restore replaced its data.
//!
//! Must not: depend on the agent crate, replace containers itself (that is the engine's health
//! gate), or touch the proxy.
//!
//! Invariants:
//! - A backup is reported good only when `berth-backup` read each copy back and checked it;
//!   the catalog only ever holds such copies.
//! - Containers paused for a backup are unpaused whatever happens to the backup.
//! - One backup operation per app at a time ([`Backups::locks`]); restores also take the app's
//!   deploy lock (the caller's), so nothing replaces containers under them.

use async_trait::async_trait;
use berth_api::RunStatus;
use berth_api::{
    BackupInfo, BackupResult, BackupsOutcome, CopyInfo, CopyResult, Outcome, PruneResult,
    VerifyResult, human_bytes,
};
use berth_backup::destination::S3Settings;
use berth_backup::meta::{BackupMeta, ContentKind, Reason};
use berth_backup::pipeline::Compression;
use berth_backup::runner::{self, Clock, Event, EventSink, Runner};
use berth_backup::source::{
    BuiltinCheck, Consumer, Directory, DumpOutcome, PlainReceiver, PlainSender, SqliteFile,
    judge_dump, run_host,
};
use berth_backup::{BackupError, Destination, Identities, Keep, Recipient, Source};
use berth_core::locks::AppLocks;
use berth_core::progress::Progress;
use berth_core::secrets::SecretBox;
use berth_core::{ErrorKind, OpError, names, release_manifest};
use berth_manifest::{
    Backup, BackupSource, Database, DatabaseLocation, LOCAL_STORAGE, Manifest, Storage,
    VolumeSource,
};
use berth_runtime::{ContainerRuntime, ExecOptions, LogStream};
use berth_state::{BackupCopy, RunFinish, Store};
use futures_util::StreamExt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

mod kinds;
mod metrics;
mod place;
mod prepare;
mod restore;
mod run;
mod schedule;
mod staging;
mod verify;

pub(crate) use kinds::*;
pub use metrics::BackupMetrics;
pub(crate) use place::*;
pub(crate) use prepare::DatabaseAccess;
pub use restore::{RestorePlan, parse_at};
pub use run::VerifyOptions;
pub(crate) use run::*;
pub use schedule::{PlannedRuns, scheduler};
pub use staging::Journal;

/// What the backups ask of the engine.
#[async_trait]
pub trait ServiceControl: Send + Sync {
    /// Starts a service whose containers a restore stopped: an accessory is restarted, a
    /// service's replicas are replaced through the health gate.
    async fn restart_service(
        &self,
        app: &str,
        service: &str,
        progress: &Progress,
    ) -> Result<(), OpError>;
}

/// What [`Backups`] is built from, given by the agent when it starts.
pub struct BackupDeps {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub store: Arc<Store>,
    pub secrets: Arc<SecretBox>,
    pub data_dir: PathBuf,
    pub agent_id: String,
    pub workers: Arc<berth_workers::Workers>,
    /// What time it is: when backups are taken, verified and scheduled, and how old they are
    /// for retention (`berth_backup::runner::SystemClock` outside tests).
    pub clock: Arc<dyn Clock>,
}

/// The agent's backups: runs, verification, pruning, restores, the schedule and its metrics.
pub struct Backups {
    runtime: Arc<dyn ContainerRuntime>,
    store: Arc<Store>,
    secrets: Arc<SecretBox>,
    data_dir: PathBuf,
    agent_id: String,
    workers: Arc<berth_workers::Workers>,
    clock: Arc<dyn Clock>,
    /// One backup operation per app at a time.
    locks: Arc<AppLocks>,
    metrics: BackupMetrics,
    /// What the scheduler plans next, for `berth status`.
    planned: PlannedRuns,
    /// Set once the engine exists (it holds the backups, so this is weak).
    services: OnceLock<Weak<dyn ServiceControl>>,
}

impl Backups {
    pub fn new(deps: BackupDeps) -> Self {
        Self {
            runtime: deps.runtime,
            store: deps.store,
            secrets: deps.secrets,
            data_dir: deps.data_dir,
            agent_id: deps.agent_id,
            workers: deps.workers,
            clock: deps.clock,
            locks: Arc::new(AppLocks::default()),
            metrics: BackupMetrics::default(),
            planned: PlannedRuns::default(),
            services: OnceLock::new(),
        }
    }

    /// Gives the backups the engine's service control (call once, when the engine exists).
    pub fn set_services(&self, services: Weak<dyn ServiceControl>) {
        let _ = self.services.set(services);
    }

    /// The per-app backup locks (the agent's hand-over freezes them).
    pub fn locks(&self) -> &Arc<AppLocks> {
        &self.locks
    }

    pub fn metrics(&self) -> &BackupMetrics {
        &self.metrics
    }

    fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    fn workers(&self) -> &Arc<berth_workers::Workers> {
        &self.workers
    }

    fn audit(&self, actor: &str, action: &str, target: &str, result: &str, detail: &str) {
        berth_core::audit(&self.store, actor, action, target, result, detail);
    }

    async fn service_containers(
        &self,
        app: &str,
        service: &str,
        accessory: bool,
    ) -> Result<Vec<(String, String)>, OpError> {
        berth_core::service_containers(
            self.runtime.as_ref(),
            &self.store,
            &self.agent_id,
            app,
            service,
            accessory,
        )
        .await
    }

    async fn restart_steps(
        &self,
        app: &str,
        service: &str,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let services = self.services.get().and_then(Weak::upgrade).ok_or_else(|| {
            OpError::failed(format!(
                "cannot start {service} again: the agent is shutting down"
            ))
            .hint("`berth restart` it once the agent is back")
        })?;
        services.restart_service(app, service, progress).await
    }
}
