//! The release lifecycle: build or load images, bring accessories up, run the release
//! command, start the new containers next to the old ones, wait for the health gate, switch
//! traffic, replace workers, commit, drain and stop the old release.
//!
//! Invariants:
//! - Nothing that serves traffic is touched before the new containers passed their gate.
//! - The state file's switch transaction is the commit point. Before it, any failure (or a
//!   crash, see `reconcile`) leaves the previous release serving; after it, the new release
//!   is live and the old containers are only drained and stopped.
//! - Every container berth starts is recorded (as `pending`) before it can serve, so a
//!   failed or interrupted operation can always remove what it started.

pub use crate::edge::LiveApp;
use crate::error::OpError;
use crate::health::{self, GateFailure};
use crate::locks::AppLocks;
use crate::names;
use crate::progress::Progress;
use crate::routing::Routing;
use crate::secrets::SecretBox;
use berth_api::Outcome;
use berth_backup_jobs::{Backups, ServiceControl};
use berth_core::ReleaseChange;
pub(crate) use berth_core::release_manifest;
use berth_manifest::{
    ImageSource, Manifest, PullPolicy, Role, SecretDelivery, Service, VolumeSource,
};
use berth_proxy::Upstream;
use berth_runtime::{
    BuildRequest, ContainerRuntime, ContainerSpec, GpuRequest, LogSpec, MountKind, MountSpec,
    NetworkAttachment, PublishedPort,
};
use berth_state::{
    Instance, InstanceState, NewRelease, Release, ReleaseKind, ReleaseStatus, Store, Switch,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of a failing container's log shown with an error.
const LOG_TAIL: usize = 20;

mod accessories;
mod app_secrets;
mod lifecycle;
mod planning;
mod reconcile;
mod rollback;
pub mod secret_files;
pub mod status;
pub use planning::{CONSOLE_ROUTE, DeployRequest};
mod replicas;
mod restart;
mod specs;
mod watch;
pub use watch::WatchTarget;

pub struct Engine {
    runtime: Arc<dyn ContainerRuntime>,
    store: Arc<Store>,
    /// The live apps, the proxy's routes and the certificate domains, in one owner.
    routing: Arc<Routing>,
    secrets: Arc<SecretBox>,
    /// One deploy, rollback, restart, restore or lifecycle change per app at a time.
    locks: Arc<AppLocks>,
    /// The backups component (it reaches back only through `ServiceControl`).
    backups: Arc<Backups>,
    /// Tells subscribers (the backup schedule) when an app's live release changes.
    release_changes: tokio::sync::broadcast::Sender<ReleaseChange>,
    data_dir: PathBuf,
    /// Labels every Docker object this agent creates, so it finds them again.
    agent_id: String,
    /// Old releases draining after a deploy returned, by app (for `berth status`).
    draining: Mutex<HashMap<String, Vec<Draining>>>,
    /// This engine, for work that outlives the call that started it (a background drain).
    me: std::sync::OnceLock<std::sync::Weak<Engine>>,
    /// The range the apps' networks get their /24s from.
    app_subnets: crate::subnets::Ipv4Net,
    /// Set when this agent took over from a running one: containers the state does not count
    /// as current are removed only after this long (the predecessor may still reach them).
    stray_delay: Option<Duration>,
    /// Held while a subnet is chosen and its network created.
    choosing_subnet: tokio::sync::Mutex<()>,
    /// Where `secret_files` are written (a tmpfs when the host has one).
    secret_files_root: PathBuf,
    /// The agent's background work.
    workers: Arc<berth_workers::Workers>,
    /// The uid a user name stands for in an image, by image id and name: looking it up
    /// creates a container, once per image, not once per replica.
    pub(crate) image_uids: Mutex<HashMap<(String, String), u32>>,
    health_board: Arc<berth_core::HealthBoard>,
}

/// An old release draining in the background.
#[derive(Clone)]
pub(crate) struct Draining {
    pub release: i64,
    /// Milliseconds since the epoch.
    pub since: i64,
    /// When its WebSockets and event streams will be closed, milliseconds since the epoch.
    pub closes_at: i64,
    pub upstreams: Vec<Arc<Upstream>>,
}

/// How an old release drains.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrainLimits {
    /// Ordinary requests may finish within this.
    pub requests: Duration,
    /// WebSockets and event streams may stay open this long, then are closed properly.
    pub long_lived: Duration,
}

impl DrainLimits {
    pub(crate) fn of(manifest: &Manifest) -> Self {
        Self {
            requests: manifest.deploy.drain_timeout,
            long_lived: manifest.deploy.websocket_drain,
        }
    }
}

/// How long closed WebSockets get to finish their close handshake.
const CLOSING_GRACE: Duration = Duration::from_secs(12);

/// Where a release's images come from.
pub enum ImagePlan {
    /// Build from uploaded contexts, or take images built elsewhere; pull `image` references.
    Build(BuildInputs),
    /// Reuse the images of an earlier release (service -> image id), for rollback.
    Existing(BTreeMap<String, String>),
}

/// What the services that `build` are made from.
#[derive(Debug, Default)]
pub struct BuildInputs {
    /// Uploaded build context archives by service.
    pub contexts: BTreeMap<String, PathBuf>,
    /// Images already built elsewhere (`berth deploy --build local`) by service: used as they
    /// are instead of building on this server.
    pub prebuilt: BTreeMap<String, String>,
}

pub struct ReleasePlan {
    pub manifest: Manifest,
    /// `docker save` archives to load before images are resolved.
    pub image_archives: Vec<PathBuf>,
    pub manifest_toml: String,
    pub version: String,
    pub images: ImagePlan,
    pub kind: ReleaseKind,
    pub rollback_of: Option<i64>,
    pub actor: String,
    /// Return only once the old release has drained.
    pub wait_drain: bool,
}

/// Everything needed to create containers for one release.
pub(crate) struct ReleaseContext<'a> {
    pub app: &'a str,
    pub release: i64,
    pub version: &'a str,
    pub manifest: &'a Manifest,
    pub secret_values: BTreeMap<String, String>,
    /// Wait for the old release to drain before returning (else it drains in the
    /// background once the new one is committed).
    pub wait_drain: bool,
}

/// A container a step started and may have to remove again.
#[derive(Clone)]
pub(crate) struct StartedReplica {
    pub container_id: String,
    pub name: String,
    pub upstream: Option<Arc<Upstream>>,
}

impl Engine {
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        store: Arc<Store>,
        routing: Arc<Routing>,
        secrets: Arc<SecretBox>,
        data_dir: PathBuf,
        agent_id: String,
        backups: Arc<Backups>,
    ) -> Self {
        Self {
            runtime,
            store,
            routing,
            secrets,
            locks: Arc::new(AppLocks::default()),
            backups,
            release_changes: tokio::sync::broadcast::channel(64).0,
            agent_id,
            draining: Mutex::new(HashMap::new()),
            me: std::sync::OnceLock::new(),
            app_subnets: crate::subnets::default_range(),
            stray_delay: None,
            choosing_subnet: tokio::sync::Mutex::new(()),
            secret_files_root: data_dir_secret_files(&data_dir),
            workers: Arc::new(berth_workers::Workers::new()),
            image_uids: Mutex::new(HashMap::new()),
            health_board: Arc::new(berth_core::HealthBoard::default()),
            data_dir,
        }
    }

    /// Refuses an app this agent has never deployed (or has destroyed).
    pub fn require_app(&self, app: &str) -> Result<(), OpError> {
        if self.store.app(app)?.is_none() {
            return Err(OpError::not_found(format!(
                "no app named {app} has been deployed to this agent"
            ))
            .hint("`berth apps` lists the apps"));
        }
        Ok(())
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// What the continuous health checks found per container (written by the monitor).
    pub fn health_board(&self) -> &Arc<berth_core::HealthBoard> {
        &self.health_board
    }

    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    pub fn locks(&self) -> &Arc<AppLocks> {
        &self.locks
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    pub fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    pub fn backups(&self) -> &Arc<Backups> {
        &self.backups
    }

    /// Release changes from now on (a deploy or rollback went live, an app was destroyed).
    pub fn subscribe_release_changes(&self) -> tokio::sync::broadcast::Receiver<ReleaseChange> {
        self.release_changes.subscribe()
    }

    /// Tells the subscribers; nobody listening is fine.
    pub(crate) fn release_changed(&self, app: &str, live_release: Option<i64>) {
        let _ = self.release_changes.send(ReleaseChange {
            app: app.to_owned(),
            live_release,
        });
    }

    /// The registry background work runs in (set once, at start).
    pub fn set_workers(&mut self, workers: Arc<berth_workers::Workers>) {
        self.workers = workers;
    }

    pub fn workers(&self) -> &Arc<berth_workers::Workers> {
        &self.workers
    }

    /// Where secret files go (set once, at start: see `secret_files::choose_root`).
    pub fn set_secret_files_root(&mut self, root: PathBuf) {
        self.secret_files_root = root;
    }

    /// Where the apps' networks get their /24s from (set once, at start).
    pub fn set_app_subnets(&mut self, range: crate::subnets::Ipv4Net) {
        self.app_subnets = range;
    }

    pub fn set_stray_delay(&mut self, delay: Duration) {
        self.stray_delay = Some(delay);
    }

    pub(crate) fn stray_delay(&self) -> Option<Duration> {
        self.stray_delay
    }

    /// This engine, for work that outlives a call (None before `set_self`).
    pub(crate) fn arc(&self) -> Option<Arc<Engine>> {
        self.me.get().and_then(std::sync::Weak::upgrade)
    }

    /// Lets the engine start work that outlives a call (call once, after `Arc::new`).
    pub fn set_self(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
        let services: std::sync::Weak<dyn ServiceControl> = Arc::downgrade(self) as _;
        self.backups.set_services(services);
    }

    /// The old releases of `app` still draining.
    pub(crate) fn draining(&self, app: &str) -> Vec<Draining> {
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets an app's background drains (`berth destroy` removed their containers).
    pub(crate) fn forget_draining(&self, app: &str) {
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(app);
    }

    pub fn live_app(&self, app: &str) -> Option<LiveApp> {
        self.routing.live_app(app)
    }

    /// Makes `live` the app's routed state and swaps the proxy's routes in one step.
    pub(crate) fn install_live(&self, app: &str, live: Option<LiveApp>) {
        // A stopped app answers 503 with its own page, like maintenance mode.
        let maintenance = self.store.app(app).ok().flatten().and_then(|a| {
            if a.stopped {
                Some(format!("{app} is stopped."))
            } else {
                a.maintenance
            }
        });
        self.routing.install(app, live, maintenance.as_deref());
    }

    /// Turns an app's maintenance page on (with a message) or off, in one route switch.
    pub fn set_maintenance(
        &self,
        app: &str,
        message: Option<&str>,
        actor: &str,
    ) -> Result<(), OpError> {
        if !self.store.set_maintenance(app, message)? {
            return Err(OpError::not_found(format!(
                "no app named {app} has been deployed to this agent"
            )));
        }
        let live = self.live_app(app);
        self.install_live(app, live);
        let (action, detail) = match message {
            Some(message) => ("maintenance.on", message),
            None => ("maintenance.off", ""),
        };
        self.audit(actor, action, app, "ok", detail);
        Ok(())
    }

    /// URLs an app is reachable at through the proxy.
    pub fn urls(&self, manifest: &Manifest) -> Vec<String> {
        self.routing.urls(manifest)
    }

    pub fn audit(&self, actor: &str, action: &str, target: &str, result: &str, detail: &str) {
        berth_core::audit(&self.store, actor, action, target, result, detail);
    }

    // ---- deploy and rollback -----------------------------------------------------------

    /// Runs a deploy or rollback to the end. The caller holds the app's lock. Never fails:
    /// the outcome says how it went.
    pub async fn run_release(self: Arc<Self>, plan: ReleasePlan, progress: Progress) -> Outcome {
        let started = Instant::now();
        let app = plan.manifest.app.clone();
        let operation = plan.kind.as_str().to_owned();
        let previous = self.store.live_release(&app).ok().flatten();
        let outcome = |release: Option<i64>, live: Option<i64>, error: Option<&OpError>| Outcome {
            ok: error.is_none(),
            app: app.clone(),
            operation: operation.clone(),
            release,
            version: Some(plan.version.clone()),
            live_release: live,
            elapsed_ms: started.elapsed().as_millis() as u64,
            urls: if error.is_none() {
                self.urls(&plan.manifest)
            } else {
                Vec::new()
            },
            error: error.map(OpError::to_operation),
            backups: None,
        };
        let new_release = NewRelease {
            app: app.clone(),
            version: plan.version.clone(),
            kind: plan.kind,
            rollback_of: plan.rollback_of,
            manifest_toml: plan.manifest_toml.clone(),
            manifest_json: serde_json::to_string(&plan.manifest).unwrap_or_default(),
            actor: plan.actor.clone(),
        };
        // Checked again under the app's lock: a deploy queued behind a stop with --wait.
        let verb = if operation == "rollback" {
            "roll back"
        } else {
            operation.as_str()
        };
        if let Err(error) = self.ensure_not_stopped(&app, verb) {
            return outcome(None, previous.map(|p| p.number), Some(&error));
        }
        let release = match self.store.create_release(&new_release) {
            Ok(release) => release,
            Err(error) => {
                let error = OpError::from(error);
                return outcome(None, previous.map(|p| p.number), Some(&error));
            }
        };
        progress.set_release(release.number);
        tracing::info!(app = %app, release = release.number, version = %plan.version, "{operation} started");

        match self
            .release_steps(&plan, &release, previous.as_ref(), &progress)
            .await
        {
            Ok(()) => {
                self.audit(
                    &plan.actor,
                    &operation,
                    &app,
                    "ok",
                    &format!("release {} ({})", release.number, plan.version),
                );
                // The new release may bring new backup schedules.
                self.release_changed(&app, Some(release.number));
                outcome(Some(release.number), Some(release.number), None)
            }
            Err(mut error) => {
                if let Err(state_error) =
                    self.store
                        .fail_release(&app, release.number, &error.message)
                {
                    tracing::error!(%state_error, "cannot record the failed release");
                }
                let still_live = self.store.live_release(&app).ok().flatten();
                let serving = match &still_live {
                    Some(live) => {
                        format!("release {} ({}) keeps serving", live.number, live.version)
                    }
                    None => "nothing was serving before, and nothing is now".to_owned(),
                };
                error.hint = Some(match error.hint.take() {
                    Some(hint) => format!("{hint}\n{serving}"),
                    None => serving,
                });
                self.audit(
                    &plan.actor,
                    &operation,
                    &app,
                    "failed",
                    &format!("release {}: {}", release.number, error.message),
                );
                outcome(
                    Some(release.number),
                    still_live.map(|l| l.number),
                    Some(&error),
                )
            }
        }
    }

    async fn release_steps(
        &self,
        plan: &ReleasePlan,
        release: &Release,
        previous: Option<&Release>,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let manifest = &plan.manifest;
        let ctx = ReleaseContext {
            app: &manifest.app,
            release: release.number,
            version: &plan.version,
            manifest,
            secret_values: self.secret_values(manifest)?,
            wait_drain: plan.wait_drain,
        };

        let step = progress.step("prepare network and volumes");
        step.finish(self.prepare_network_and_volumes(manifest).await)?;

        if !plan.image_archives.is_empty() {
            let step = progress.step(format!(
                "load {} image archive(s)",
                plan.image_archives.len()
            ));
            let mut loaded = Vec::new();
            for archive in &plan.image_archives {
                match self.runtime.load_image(archive).await {
                    Ok(references) => loaded.extend(references),
                    Err(error) => {
                        let error = OpError::from(error)
                            .hint("check that the file is an image archive made by `docker save`");
                        step.fail(&error.message);
                        return Err(error);
                    }
                }
            }
            step.done(Some(loaded.join(", ")));
        }
        let images = self.prepare_images(&ctx, &plan.images, progress).await?;
        self.store
            .set_release_images(&manifest.app, release.number, &images)?;

        if let ImagePlan::Build(inputs) = &plan.images {
            for name in manifest.accessory_start_order() {
                if let Some(accessory) = manifest.accessories.get(name) {
                    self.ensure_accessory(&ctx, accessory, inputs, progress)
                        .await?;
                }
            }
            self.note_removed_accessories(&ctx, manifest, progress)
                .await;
            for name in manifest.service_start_order() {
                if let Some(service) = manifest.services.get(name)
                    && service.release_command.is_some()
                {
                    self.run_release_command(&ctx, service, &images[name], progress)
                        .await?;
                }
            }
        }

        let services: Vec<&Service> = manifest
            .service_start_order()
            .into_iter()
            .filter_map(|n| manifest.services.get(n))
            .collect();
        self.replace(&ctx, &services, &images, true, progress)
            .await?;

        if let Some(previous) = previous {
            progress.log(format!(
                "release {} ({}) is retired",
                previous.number, previous.version
            ));
        }
        self.prune_images(&manifest.app, manifest.deploy.keep_releases)
            .await;
        self.prune_secret_files(&manifest.app);
        Ok(())
    }

    async fn prepare_network_and_volumes(&self, manifest: &Manifest) -> Result<(), OpError> {
        let labels = names::base_labels(&self.agent_id, &manifest.app);
        self.ensure_app_network(&names::network(&manifest.app), &labels)
            .await?;
        for service in manifest
            .services
            .values()
            .chain(manifest.accessories.values())
        {
            for volume in &service.volumes {
                if let VolumeSource::Named(name) = &volume.source {
                    self.runtime
                        .ensure_volume(&names::volume(&manifest.app, name), &labels)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Builds, pulls or finds every service's image and tags it for this release.
    async fn prepare_images(
        &self,
        ctx: &ReleaseContext<'_>,
        plan: &ImagePlan,
        progress: &Progress,
    ) -> Result<BTreeMap<String, String>, OpError> {
        let mut images = BTreeMap::new();
        match plan {
            ImagePlan::Existing(existing) => {
                let step = progress.step("find the release's images");
                for (service, image) in existing {
                    if !ctx.manifest.services.contains_key(service) {
                        continue;
                    }
                    if self.runtime.inspect_image(image).await?.is_none() {
                        let error = OpError::failed(format!("the image of service {service} ({image}) is no longer on this host"))
                            .hint("it was pruned: only the images of the last `deploy.keep_releases` releases are kept; deploy that version again instead");
                        step.fail(&error.message);
                        return Err(error);
                    }
                    images.insert(service.clone(), image.clone());
                }
                step.done(None);
            }
            ImagePlan::Build(inputs) => {
                // Services built from the same context and options share one build.
                let mut built: Vec<(String, String)> = Vec::new();
                for name in ctx.manifest.service_start_order() {
                    let Some(service) = ctx.manifest.services.get(name) else {
                        continue;
                    };
                    let image = match &service.source {
                        ImageSource::Build(spec) => {
                            let key = serde_json::to_string(&(
                                inputs.contexts.get(name),
                                inputs.prebuilt.get(name),
                                spec,
                            ))
                            .unwrap_or_default();
                            match built.iter().find(|(k, _)| *k == key) {
                                Some((_, image)) => image.clone(),
                                None => {
                                    let image = self.build(ctx, service, inputs, progress).await?;
                                    built.push((key, image.clone()));
                                    image
                                }
                            }
                        }
                        ImageSource::Image { reference, pull } => {
                            self.ensure_image(ctx, service, reference, *pull, progress)
                                .await?
                        }
                    };
                    images.insert(name.to_owned(), image);
                }
            }
        }
        for (service, image) in &images {
            self.runtime
                .tag_image(
                    image,
                    &names::image_repository(ctx.app, service),
                    &names::image_tag(ctx.release),
                )
                .await?;
        }
        // An image built elsewhere now has its release's tag; its upload name would only
        // keep it from being pruned with that release.
        if let ImagePlan::Build(inputs) = plan {
            for reference in inputs.prebuilt.values() {
                if let Err(error) = self.runtime.remove_image(reference).await {
                    tracing::debug!(%error, reference, "upload name not removed");
                }
            }
        }
        Ok(images)
    }

    async fn build(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        inputs: &BuildInputs,
        progress: &Progress,
    ) -> Result<String, OpError> {
        let ImageSource::Build(spec) = &service.source else {
            return Err(OpError::failed(format!(
                "service {} has no build",
                service.name
            )));
        };
        if let Some(reference) = inputs.prebuilt.get(&service.name) {
            let step = progress.step(format!("take {} as built", service.name));
            return match self.runtime.inspect_image(reference).await {
                Ok(Some(image)) => {
                    step.done(Some(format!("{reference} ({})", short_id(&image.id))));
                    Ok(image.id)
                }
                Ok(None) => {
                    let error = OpError::invalid(format!(
                        "service {} was built elsewhere as {reference}, but no uploaded archive holds that image",
                        service.name
                    ))
                    .hint("deploy with `berth deploy --build local`, which builds, saves and uploads the image in one go");
                    step.fail(&error.message);
                    Err(error)
                }
                Err(other) => {
                    let error = OpError::from(other);
                    step.fail(&error.message);
                    Err(error)
                }
            };
        }
        let step = progress.step(format!("build {}", service.name));
        let Some(context) = inputs.contexts.get(&service.name) else {
            let error = OpError::invalid(format!(
                "no build context was uploaded for service {}",
                service.name
            ))
            .hint("deploy with the berth CLI, which uploads the context named in `build`");
            step.fail(&error.message);
            return Err(error);
        };
        // No labels: each would add a build step, and a per-release one would defeat the
        // build cache. Release images are found by their tag.
        let request = BuildRequest {
            context_tar: context.clone(),
            dockerfile: spec.dockerfile.clone(),
            tag: format!(
                "{}:{}",
                names::image_repository(ctx.app, &service.name),
                names::image_tag(ctx.release)
            ),
            args: spec.args.clone(),
            target: spec.target.clone(),
            labels: berth_runtime::Labels::new(),
        };
        let show = |line: &str| progress.log(format!("[build {}] {line}", service.name));
        match self.runtime.build_image(&request, &show).await {
            Ok(image) => {
                step.done(Some(short_id(&image.id)));
                Ok(image.id)
            }
            Err(berth_runtime::RuntimeError::BuildFailed {
                message, log_tail, ..
            }) => {
                let error = OpError::failed(format!("building service {} failed: {message}", service.name))
                    .hint("fix the Dockerfile or the build context; `docker build` on the context reproduces it")
                    .logs("the build", log_tail);
                step.fail(&error.message);
                Err(error)
            }
            Err(other) => {
                let error = OpError::from(other);
                step.fail(&error.message);
                Err(error)
            }
        }
    }

    /// Finds or pulls a service's image as its pull policy says; returns the image id.
    ///
    /// With `always`, a tag is pulled on every deploy so that "push :latest, deploy" deploys
    /// what the registry has now. An image pinned by digest, or built or loaded on this host
    /// (no registry digest: a pull could only fail), is used as it is. A registry that
    /// cannot be reached does not stop a deploy that has a local copy: the copy is used and
    /// the deploy says so.
    async fn ensure_image(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        reference: &str,
        pull: Option<PullPolicy>,
        progress: &Progress,
    ) -> Result<String, OpError> {
        let policy = pull.unwrap_or(PullPolicy::default_for(service.accessory));
        let local = self.runtime.inspect_image(reference).await?;
        if let Some(image) = &local
            && (policy == PullPolicy::Missing
                || berth_runtime::is_pinned(reference)
                || image.digests.is_empty())
        {
            return Ok(image.id.clone());
        }
        let auth = registry_auth(ctx, reference);
        let step = progress.step(format!("pull {reference}"));
        let show = |line: &str| progress.log(format!("[pull] {line}"));
        match self
            .runtime
            .pull_image(reference, auth.as_ref(), &show)
            .await
        {
            Ok(image) => {
                step.done(Some(match &local {
                    Some(old) if old.id != image.id => format!(
                        "{} (new: the server had {})",
                        short_id(&image.id),
                        short_id(&old.id)
                    ),
                    Some(_) => format!("{} (unchanged)", short_id(&image.id)),
                    None => short_id(&image.id),
                }));
                Ok(image.id)
            }
            Err(error) => {
                let error = OpError::from(error);
                // Only an unreachable registry falls back: a refusal (credentials, a tag
                // that is gone) is a mistake to fix, not a reason to deploy an old image.
                if let Some(old) = local.filter(|_| registry_unreachable(&error.message)) {
                    step.done(Some(format!(
                        "not pulled; using the copy on this server, {}",
                        short_id(&old.id)
                    )));
                    progress.log(format!(
                        "warning: {reference} could not be pulled ({}), so this deploy uses the copy already on the server, which may be older than the registry's",
                        error.message
                    ));
                    return Ok(old.id);
                }
                let hint = pull_hint(ctx.manifest, reference, &error.message);
                let error = error.hint(hint);
                step.fail(&error.message);
                Err(error)
            }
        }
    }
}

/// The Host header health checks send: the first routed domain, so apps that check it answer.
pub(crate) fn host_header(service: &Service) -> String {
    service
        .route
        .as_ref()
        .and_then(|r| r.domains.iter().find(|d| !d.starts_with('*')).cloned())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn gate_hint(failure: &GateFailure, service: &Service) -> String {
    match failure {
        GateFailure::Exited {
            oom_killed: true, ..
        } => "raise the service's `memory` limit".into(),
        GateFailure::Exited { .. } => "the container's log below shows why it stopped".into(),
        GateFailure::TimedOut { .. } => format!(
            "check that the app listens on port {} on all interfaces (0.0.0.0) and that its health check passes; raise `healthcheck.start_timeout` if it needs longer to start",
            service
                .port
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into())
        ),
        GateFailure::Lost(_) => "check the Docker daemon's health".into(),
    }
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// The manifest's registry credentials, when the reference pulls from that registry.
fn registry_auth(ctx: &ReleaseContext<'_>, reference: &str) -> Option<berth_runtime::RegistryAuth> {
    let registry = ctx.manifest.registry.as_ref()?;
    if !same_registry(&registry.server, berth_runtime::registry_of(reference)) {
        return None;
    }
    Some(berth_runtime::RegistryAuth {
        server: registry.server.clone(),
        username: registry.username.clone(),
        password: ctx
            .secret_values
            .get(&registry.password_secret)
            .cloned()
            .unwrap_or_default(),
    })
}

/// Docker Hub answers to several names.
pub(crate) fn same_registry(configured: &str, of_reference: &str) -> bool {
    let hub = |s: &str| {
        matches!(
            s,
            "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
        )
    };
    configured.eq_ignore_ascii_case(of_reference) || (hub(configured) && hub(of_reference))
}

/// What to do about a pull that failed, from what the registry said.
fn pull_hint(manifest: &Manifest, reference: &str, message: &str) -> String {
    let registry = berth_runtime::registry_of(reference);
    let lower = message.to_ascii_lowercase();
    let refused = [
        "unauthorized",
        "authentication required",
        "denied",
        "no basic auth",
    ]
    .iter()
    .any(|m| lower.contains(m));
    match &manifest.registry {
        _ if !refused => format!(
            "check the image name and that {registry} can be reached from the server, or load the image on this host (`docker load`) and name it exactly `{reference}`"
        ),
        Some(r) if same_registry(&r.server, registry) => format!(
            "{registry} refused the credentials of [registry] (user {}, password from secret {}): check both, and that the user may pull this repository",
            r.username, r.password_secret
        ),
        Some(r) => format!(
            "{registry} wants credentials, and [registry] names {} instead: point it at {registry}",
            r.server
        ),
        None => format!(
            "{registry} wants credentials: add [registry] with server = \"{registry}\", username and password_secret to berth.toml, and set the secret with `berth secrets set`"
        ),
    }
}

/// Whether a pull failed because the registry could not be reached at all.
pub(crate) fn registry_unreachable(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "dial tcp",
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "tls handshake timeout",
        "server misbehaving",
        "connection reset",
    ]
    .iter()
    .any(|m| lower.contains(m))
}

/// Where secret files go until `set_secret_files_root` says otherwise.
fn data_dir_secret_files(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("run").join("secrets")
}
