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

use crate::edge::Edge;
use crate::error::OpError;
use crate::health::{self, GateFailure};
use crate::locks::AppLocks;
use crate::names;
use crate::progress::Progress;
use crate::secrets::SecretBox;
use berth_api::Outcome;
use berth_manifest::{
    ImageSource, Manifest, PullPolicy, Role, SecretDelivery, Service, VolumeSource,
};
use berth_proxy::{Balance, Proxy, RouteSettings, RouteSpec, Upstream};
use berth_runtime::{
    BuildRequest, ContainerRuntime, ContainerSpec, GpuRequest, LogSpec, MountKind, MountSpec,
    NetworkAttachment, PublishedPort,
};
use berth_state::{
    AuditEntry, Instance, InstanceState, NewRelease, Release, ReleaseKind, ReleaseStatus, Store,
    Switch,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of a failing container's log shown with an error.
const LOG_TAIL: usize = 20;

pub struct Engine {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub store: Arc<Store>,
    pub proxy: Arc<Proxy>,
    pub secrets: SecretBox,
    pub locks: Arc<AppLocks>,
    /// One backup operation per app at a time (separate from deploys, which may run
    /// alongside a backup).
    pub backup_locks: Arc<AppLocks>,
    pub backup_metrics: crate::backups::BackupMetrics,
    /// When the scheduler will next run each backup, for `berth status`.
    pub planned_backups: crate::backups::PlannedRuns,
    /// Wakes the backup scheduler when a release changes what is scheduled.
    pub schedules_changed: tokio::sync::Notify,
    pub data_dir: PathBuf,
    pub agent_id: String,
    /// Base URL of the proxy's HTTP listener, for the URLs reported after a deploy.
    pub http_url: Option<String>,
    pub edge: Arc<Edge>,
    live: Mutex<HashMap<String, LiveApp>>,
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

/// What the proxy routes for an app: the live manifest and its web containers' upstreams.
#[derive(Clone)]
pub struct LiveApp {
    pub manifest: Manifest,
    pub release: i64,
    /// Current web containers per service: (container id, upstream).
    pub upstreams: BTreeMap<String, Vec<(String, Arc<Upstream>)>>,
}

/// Where a release's images come from.
pub enum ImagePlan {
    /// Build from uploaded contexts (service -> context archive); pull `image` references.
    Build(BTreeMap<String, PathBuf>),
    /// Reuse the images of an earlier release (service -> image id), for rollback.
    Existing(BTreeMap<String, String>),
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        store: Arc<Store>,
        proxy: Arc<Proxy>,
        secrets: SecretBox,
        data_dir: PathBuf,
        agent_id: String,
        http_url: Option<String>,
        edge: Arc<Edge>,
    ) -> Self {
        Self {
            runtime,
            store,
            proxy,
            secrets,
            locks: Arc::new(AppLocks::default()),
            backup_locks: Arc::new(AppLocks::default()),
            backup_metrics: Default::default(),
            planned_backups: Default::default(),
            schedules_changed: tokio::sync::Notify::new(),
            agent_id,
            http_url,
            edge,
            live: Mutex::new(HashMap::new()),
            draining: Mutex::new(HashMap::new()),
            me: std::sync::OnceLock::new(),
            app_subnets: crate::subnets::default_range(),
            stray_delay: None,
            choosing_subnet: tokio::sync::Mutex::new(()),
            secret_files_root: data_dir_secret_files(&data_dir),
            workers: Arc::new(berth_workers::Workers::new()),
            data_dir,
        }
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

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveApp>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live_app(&self, app: &str) -> Option<LiveApp> {
        self.live_map().get(app).cloned()
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
        let routes = live
            .as_ref()
            .map(|l| routes_for(l, maintenance.as_deref(), self.edge.https))
            .unwrap_or_default();
        let mut map = self.live_map();
        match live {
            Some(live) => map.insert(app.to_owned(), live),
            None => map.remove(app),
        };
        self.proxy.set_app_routes(app, routes);
        self.edge.update(&map);
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
        let Some(base) = &self.http_url else {
            return Vec::new();
        };
        let port_suffix = base
            .rsplit_once(':')
            .map(|(_, p)| p)
            .filter(|p| *p != "80")
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let mut urls = Vec::new();
        for service in manifest.web_services() {
            let Some(route) = &service.route else {
                continue;
            };
            let path = if route.path == "/" {
                "/".to_owned()
            } else {
                format!("{}/", route.path)
            };
            if route.domains.is_empty() {
                urls.push(format!("{base}{path}"));
            }
            for domain in &route.domains {
                urls.push(format!("http://{domain}{port_suffix}{path}"));
            }
        }
        urls
    }

    pub(crate) fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        result: &str,
        detail: &str,
    ) {
        let entry = AuditEntry {
            at: berth_state::now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            result: result.to_owned(),
            detail: detail.to_owned(),
        };
        if let Err(error) = self.store.add_audit(&entry) {
            tracing::error!(%error, action, target, "cannot write the audit log");
        }
    }

    // ---- checks done before an operation starts ----------------------------------------

    /// Decrypts every secret the manifest needs; names all missing ones at once.
    pub(crate) fn secret_values(
        &self,
        manifest: &Manifest,
    ) -> Result<BTreeMap<String, String>, OpError> {
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for name in manifest.secret_names() {
            match self.store.secret_ciphertext(&manifest.app, name)? {
                Some(ciphertext) => {
                    values.insert(name.to_owned(), self.secrets.open_value(name, &ciphertext)?);
                }
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            let commands: Vec<String> = missing
                .iter()
                .map(|n| format!("berth secrets set {n} --app {}", manifest.app))
                .collect();
            return Err(OpError::invalid(format!(
                "{} {} not set for app {}",
                if missing.len() == 1 {
                    "secret"
                } else {
                    "secrets"
                },
                missing.join(", "),
                manifest.app
            ))
            .hint(format!(
                "set {} first: {}",
                if missing.len() == 1 { "it" } else { "them" },
                commands.join("; ")
            )));
        }
        Ok(values)
    }

    /// Refuses a manifest whose routes another app on this agent already serves.
    pub(crate) fn check_route_conflicts(&self, manifest: &Manifest) -> Result<(), OpError> {
        let mut claimed = Vec::new();
        for service in manifest.web_services() {
            if let Some(route) = &service.route {
                let hosts = if route.domains.is_empty() {
                    vec!["*".to_owned()]
                } else {
                    route.domains.clone()
                };
                for host in hosts {
                    claimed.push((host, route.path.clone(), service.name.clone()));
                }
            }
        }
        for other in self.proxy.routes() {
            if other.app == manifest.app {
                continue;
            }
            let other_hosts = if other.domains.is_empty() {
                vec!["*".to_owned()]
            } else {
                other.domains.clone()
            };
            for (host, path, service) in &claimed {
                if other_hosts.contains(host) && &other.path == path {
                    let shown = if host == "*" {
                        format!("every host at {path}")
                    } else {
                        format!("{host}{path}")
                    };
                    return Err(OpError::invalid(format!(
                        "route clash: {shown} (service {service}) is already served by app {} (service {})",
                        other.app, other.service
                    ))
                    .hint("give this app's route its own domains or path prefix"));
                }
            }
        }
        Ok(())
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
                self.schedules_changed.notify_one();
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

        if let ImagePlan::Build(contexts) = &plan.images {
            for name in manifest.accessory_start_order() {
                if let Some(accessory) = manifest.accessories.get(name) {
                    self.ensure_accessory(&ctx, accessory, contexts, progress)
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
            ImagePlan::Build(contexts) => {
                // Services built from the same context and options share one build.
                let mut built: Vec<(String, String)> = Vec::new();
                for name in ctx.manifest.service_start_order() {
                    let Some(service) = ctx.manifest.services.get(name) else {
                        continue;
                    };
                    let image = match &service.source {
                        ImageSource::Build(spec) => {
                            let key = serde_json::to_string(&(contexts.get(name), spec))
                                .unwrap_or_default();
                            match built.iter().find(|(k, _)| *k == key) {
                                Some((_, image)) => image.clone(),
                                None => {
                                    let image =
                                        self.build(ctx, service, contexts, progress).await?;
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
        Ok(images)
    }

    async fn build(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        contexts: &BTreeMap<String, PathBuf>,
        progress: &Progress,
    ) -> Result<String, OpError> {
        let ImageSource::Build(spec) = &service.source else {
            return Err(OpError::failed(format!(
                "service {} has no build",
                service.name
            )));
        };
        let step = progress.step(format!("build {}", service.name));
        let Some(context) = contexts.get(&service.name) else {
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

    // ---- accessories -------------------------------------------------------------------

    async fn ensure_accessory(
        &self,
        ctx: &ReleaseContext<'_>,
        accessory: &Service,
        contexts: &BTreeMap<String, PathBuf>,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let image = match &accessory.source {
            ImageSource::Image { reference, pull } => {
                self.ensure_image(ctx, accessory, reference, *pull, progress)
                    .await?
            }
            ImageSource::Build(_) => self.build(ctx, accessory, contexts, progress).await?,
        };
        // What the accessory is made of, secret values included: keyed with a secret of the
        // agent's, because labels are public to whoever can `docker inspect`, and a plain hash
        // of a weak password could be guessed offline.
        let material = {
            let mut material = accessory.fingerprint().into_bytes();
            material.extend_from_slice(image.as_bytes());
            for secret in &accessory.secrets {
                for part in [
                    secret.name.as_bytes(),
                    ctx.secret_values
                        .get(&secret.name)
                        .map(String::as_bytes)
                        .unwrap_or_default(),
                ] {
                    material.extend_from_slice(&(part.len() as u64).to_be_bytes());
                    material.extend_from_slice(part);
                }
            }
            material
        };
        let fingerprint = self.secrets.label_digest(&material);
        // Accessories labelled by an older berth (a plain SHA-256) are unchanged too: they are
        // not recreated just for a new way of labelling.
        let legacy = {
            use sha2::{Digest, Sha256};
            let mut hasher = Sha256::new();
            hasher.update(accessory.fingerprint());
            hasher.update(&image);
            for secret in &accessory.secrets {
                hasher.update(secret.name.as_bytes());
                hasher.update(
                    ctx.secret_values
                        .get(&secret.name)
                        .map(String::as_bytes)
                        .unwrap_or_default(),
                );
            }
            hex::encode(&hasher.finalize()[..12])
        };
        let existing = self
            .runtime
            .list_containers(&[
                (names::AGENT, &self.agent_id),
                (names::APP, ctx.app),
                (names::ROLE, "accessory"),
                (names::SERVICE, &accessory.name),
            ])
            .await?;
        let current = existing.iter().find(|c| {
            c.labels
                .get(names::CONFIG)
                .is_some_and(|label| *label == fingerprint || *label == legacy)
        });
        if let Some(current) = current {
            if current.state == berth_runtime::ContainerState::Running {
                progress.log(format!("accessory {} is unchanged", accessory.name));
                return Ok(());
            }
            let step = progress.step(format!("start accessory {}", accessory.name));
            self.runtime.start_container(&current.id).await?;
            return self.gate_accessory(ctx, accessory, &current.id, step).await;
        }
        let verb = if existing.is_empty() {
            "start"
        } else {
            "recreate"
        };
        let step = progress.step(format!("{verb} accessory {}", accessory.name));
        for old in &existing {
            // Accessories own their data volumes: the old container must stop before the new
            // one opens the same files.
            self.runtime
                .stop_container(&old.id, accessory.stop_timeout)
                .await?;
            self.runtime.remove_container(&old.id).await?;
        }
        let name = names::accessory_container(ctx.app, &accessory.name);
        // A container with this name that berth does not track (left by a crash) is in the way.
        self.runtime.remove_container(&name).await?;
        let owner = self.secret_owner(accessory, &image).await?;
        let mut spec = self.container_spec(ctx, accessory, &image, &name, 0, owner)?;
        spec.labels.insert(names::CONFIG.into(), fingerprint);
        let id = match self.runtime.create_container(&spec).await {
            Ok(id) => id,
            Err(e) => {
                let error = OpError::from(e);
                step.fail(&error.message);
                return Err(error);
            }
        };
        self.runtime.start_container(&id).await?;
        self.gate_accessory(ctx, accessory, &id, step).await
    }

    /// Accessories hold data, so a deploy never removes one that left the manifest; it says
    /// so instead, so the container is not forgotten running.
    async fn note_removed_accessories(
        &self,
        ctx: &ReleaseContext<'_>,
        manifest: &Manifest,
        progress: &Progress,
    ) {
        let Ok(containers) = self
            .runtime
            .list_containers(&[
                (names::AGENT, &self.agent_id),
                (names::APP, ctx.app),
                (names::ROLE, "accessory"),
            ])
            .await
        else {
            return;
        };
        for container in containers {
            if let Some(service) = container.labels.get(names::SERVICE)
                && !manifest.accessories.contains_key(service)
            {
                progress.log(format!(
                    "accessory {service} is no longer in the manifest: berth leaves its \
                     container {} and its volumes alone; remove them once their data is safe",
                    container.name
                ));
            }
        }
    }

    async fn gate_accessory(
        &self,
        ctx: &ReleaseContext<'_>,
        accessory: &Service,
        id: &str,
        step: crate::progress::Step,
    ) -> Result<(), OpError> {
        match health::gate(
            self.runtime.as_ref(),
            id,
            &names::network(ctx.app),
            accessory,
            "localhost",
        )
        .await
        {
            Ok(_) => {
                step.done(None);
                Ok(())
            }
            Err(failure) => {
                let tail = self.runtime.log_tail(id, LOG_TAIL).await;
                let error = OpError::failed(format!(
                    "accessory {} did not become healthy: {}",
                    accessory.name,
                    failure.describe()
                ))
                .logs(format!("accessory {}", accessory.name), tail);
                step.fail(&error.message);
                Err(error)
            }
        }
    }

    // ---- release command ---------------------------------------------------------------

    async fn run_release_command(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let Some(command) = &service.release_command else {
            return Ok(());
        };
        let step = progress.step(format!(
            "release command ({}): {}",
            service.name,
            command.join(" ")
        ));
        let name = names::release_command_container(ctx.app, &service.name, ctx.release);
        self.runtime.remove_container(&name).await?;
        let owner = self.secret_owner(service, image).await?;
        let mut spec = self.container_spec(ctx, service, image, &name, 0, owner)?;
        spec.command = Some(command.clone());
        spec.restart = None;
        spec.labels
            .insert(names::ROLE.into(), names::ROLE_RELEASE_COMMAND.into());
        if let Some(network) = &mut spec.network {
            network.aliases.clear();
        }
        let id = self.runtime.create_container(&spec).await?;
        let result = async {
            self.runtime.start_container(&id).await?;
            let timeout = ctx.manifest.deploy.release_timeout;
            match tokio::time::timeout(timeout, self.runtime.wait_container(&id)).await {
                Ok(Ok(0)) => Ok(()),
                Ok(Ok(code)) => Err(OpError::failed(format!(
                    "the release command `{}` of service {} exited with status {code}",
                    command.join(" "),
                    service.name
                ))
                .hint("fix the command (often a migration) and deploy again")
                .logs(
                    "the release command",
                    self.runtime.log_tail(&id, LOG_TAIL).await,
                )),
                Ok(Err(e)) => Err(OpError::from(e)),
                Err(_) => Err(OpError::failed(format!(
                    "the release command `{}` did not finish within {}",
                    command.join(" "),
                    berth_manifest::units::format_duration(timeout)
                ))
                .hint("raise `deploy.release_timeout` if it needs longer")
                .logs(
                    "the release command",
                    self.runtime.log_tail(&id, LOG_TAIL).await,
                )),
            }
        }
        .await;
        if let Err(e) = self.runtime.remove_container(&id).await {
            tracing::warn!(error = %e, container = %name, "cannot remove the release command's container");
        }
        match result {
            Ok(()) => {
                step.done(None);
                Ok(())
            }
            Err(error) => {
                step.fail(&error.message);
                Err(error)
            }
        }
    }

    /// The app's network, made with a /24 of the range berth manages (see `subnets`): a
    /// stock engine's own pools hold only 31 networks.
    async fn ensure_app_network(
        &self,
        network: &str,
        labels: &berth_runtime::Labels,
    ) -> Result<(), OpError> {
        if self.runtime.network_exists(network).await? {
            return Ok(());
        }
        // This agent's deploys choose one at a time; other agents on the engine may still
        // race for the same subnet, so a refused one is retried at a random free place.
        let _choosing = self.choosing_subnet.lock().await;
        let mut attempts = 0;
        loop {
            let mut taken = crate::subnets::host_routes();
            taken.extend(
                self.runtime
                    .network_subnets()
                    .await?
                    .iter()
                    .filter_map(|s| s.parse::<crate::subnets::Ipv4Net>().ok()),
            );
            let pick = (attempts > 0).then(rand::random::<u16>).map(usize::from);
            let Some(subnet) = crate::subnets::choose(self.app_subnets, &taken, pick) else {
                return Err(OpError::failed(format!(
                    "every /24 of {} is in use by a Docker network or a host route",
                    self.app_subnets
                ))
                .hint("start the agent with a larger or another free range: --app-subnets 10.214.0.0/16"));
            };
            match self
                .runtime
                .ensure_network(network, labels, Some(&subnet.to_string()))
                .await
            {
                Ok(_) => return Ok(()),
                // Another app took the same subnet a moment ago: look again.
                Err(berth_runtime::RuntimeError::Api { message, .. })
                    if message.contains("overlap") && attempts < 20 =>
                {
                    attempts += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    // ---- replacing containers ----------------------------------------------------------

    /// Replaces the containers of `services` (all of the app's for a deploy) with new ones of
    /// `ctx.release`: start, gate, switch, commit, drain, stop. On failure before the commit,
    /// removes what it started and leaves the previous containers serving.
    pub(crate) async fn replace(
        &self,
        ctx: &ReleaseContext<'_>,
        services: &[&Service],
        images: &BTreeMap<String, String>,
        whole_release: bool,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let mut started: Vec<StartedReplica> = Vec::new();
        let before = self.live_app(ctx.app);
        let result = self
            .replace_steps(
                ctx,
                services,
                images,
                whole_release,
                before.clone(),
                &mut started,
                progress,
            )
            .await;
        if result.is_err() {
            // Put routing back exactly as it was, then remove everything this attempt started.
            self.install_live(ctx.app, before);
            self.remove_replicas(&started).await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn replace_steps(
        &self,
        ctx: &ReleaseContext<'_>,
        services: &[&Service],
        images: &BTreeMap<String, String>,
        whole_release: bool,
        before: Option<LiveApp>,
        started: &mut Vec<StartedReplica>,
        progress: &Progress,
    ) -> Result<(), OpError> {
        let replaced: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        let old_instances: Vec<Instance> = self
            .store
            .instances(ctx.app)?
            .into_iter()
            .filter(|i| {
                i.state == InstanceState::Current
                    && (whole_release || replaced.contains(&i.service.as_str()))
            })
            .collect();

        // Web services: start next to the old ones and pass the gate.
        let mut new_upstreams: BTreeMap<String, Vec<(String, Arc<Upstream>)>> = BTreeMap::new();
        for service in services.iter().filter(|s| s.role() == Role::Web) {
            let image = images
                .get(&service.name)
                .ok_or_else(|| OpError::failed(format!("no image for service {}", service.name)))?;
            let replicas = self
                .start_and_gate(ctx, service, image, started, progress)
                .await?;
            new_upstreams.insert(
                service.name.clone(),
                replicas
                    .iter()
                    .filter_map(|r| r.upstream.clone().map(|u| (r.container_id.clone(), u)))
                    .collect(),
            );
        }

        // Switch traffic: one atomic swap of the app's routes.
        let step = progress.step("switch traffic");
        let mut live = match (&before, whole_release) {
            (Some(before), false) => before.clone(),
            _ => LiveApp {
                manifest: ctx.manifest.clone(),
                release: ctx.release,
                upstreams: BTreeMap::new(),
            },
        };
        for (service, upstreams) in new_upstreams {
            live.upstreams.insert(service, upstreams);
        }
        self.install_live(ctx.app, Some(live));
        step.done(None);

        // Workers: replaced once the web services are live.
        for service in services.iter().filter(|s| s.role() == Role::Worker) {
            let image = images
                .get(&service.name)
                .ok_or_else(|| OpError::failed(format!("no image for service {}", service.name)))?;
            self.start_and_gate(ctx, service, image, started, progress)
                .await?;
        }

        // Commit: from here on the new containers are the app.
        let now_current: Vec<String> = started.iter().map(|r| r.container_id.clone()).collect();
        let retiring: Vec<String> = old_instances
            .iter()
            .map(|i| i.container_id.clone())
            .collect();
        self.store.commit_switch(&Switch {
            app: ctx.app,
            new_live_release: whole_release.then_some(ctx.release),
            now_current: &now_current,
            retiring: &retiring,
        })?;
        started.clear();

        // The new release is live and committed: the deploy is done. The old one drains
        // (its requests finish, its WebSockets stay until their own limit) in the
        // background, unless the caller asked to wait for it.
        let limits = before.as_ref().map_or_else(
            || DrainLimits::of(ctx.manifest),
            |b| DrainLimits::of(&b.manifest),
        );
        match self.me.get().and_then(std::sync::Weak::upgrade) {
            Some(engine) if !ctx.wait_drain && !old_instances.is_empty() => {
                progress.log(format!(
                    "the old containers drain in the background: requests may finish within {:?}, WebSockets and event streams stay open up to {:?} (`berth status` shows them)",
                    limits.requests, limits.long_lived
                ));
                let app = ctx.app.to_owned();
                tokio::spawn(async move {
                    let quiet = Progress::silent(&app);
                    engine
                        .retire(&app, &old_instances, before.as_ref(), limits, &quiet)
                        .await;
                });
            }
            _ => {
                self.retire(ctx.app, &old_instances, before.as_ref(), limits, progress)
                    .await;
            }
        }
        Ok(())
    }

    /// Starts a service's replicas and waits for all of them to pass the health gate.
    async fn start_and_gate(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
        started: &mut Vec<StartedReplica>,
        progress: &Progress,
    ) -> Result<Vec<StartedReplica>, OpError> {
        let plural = if service.replicas == 1 {
            "replica"
        } else {
            "replicas"
        };
        let step = progress.step(format!(
            "start {} ({} {plural})",
            service.name, service.replicas
        ));
        let mut mine = Vec::new();
        for replica in 1..=service.replicas {
            match self.start_replica(ctx, service, image, replica).await {
                Ok(r) => {
                    started.push(r.clone());
                    mine.push(r);
                }
                Err(error) => {
                    step.fail(&error.message);
                    return Err(error);
                }
            }
        }
        step.done(None);

        let step = progress.step(format!(
            "health check {}: {}",
            service.name,
            service.healthcheck.probe.describe(service.port)
        ));
        let network = names::network(ctx.app);
        let host = host_header(service);
        let gates = mine.iter().map(|r| {
            let network = network.clone();
            let host = host.clone();
            async move {
                (
                    r,
                    health::gate(
                        self.runtime.as_ref(),
                        &r.container_id,
                        &network,
                        service,
                        &host,
                    )
                    .await,
                )
            }
        });
        let results = futures_util::future::join_all(gates).await;
        let mut gated = Vec::new();
        for (replica, result) in results {
            match result {
                Ok(ip) => {
                    let mut replica = replica.clone();
                    if let (Some(ip), Some(port)) = (ip, service.port) {
                        replica.upstream = Some(Upstream::new(
                            SocketAddr::new(ip, port),
                            replica.name.clone(),
                        ));
                    }
                    gated.push(replica);
                }
                Err(failure) => {
                    let tail = self.runtime.log_tail(&replica.container_id, LOG_TAIL).await;
                    let error = OpError::failed(format!(
                        "service {} failed its health check: {}",
                        service.name,
                        failure.describe()
                    ))
                    .hint(gate_hint(&failure, service))
                    .logs(replica.name.clone(), tail);
                    step.fail(&error.message);
                    return Err(error);
                }
            }
        }
        step.done(None);
        // Keep the upstreams in the list the caller cleans up from.
        for replica in &gated {
            if let Some(entry) = started
                .iter_mut()
                .find(|s| s.container_id == replica.container_id)
            {
                entry.upstream = replica.upstream.clone();
            }
        }
        Ok(gated)
    }

    pub(crate) async fn start_replica(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
        replica: u32,
    ) -> Result<StartedReplica, OpError> {
        let name = names::replica_container(ctx.app, &service.name, ctx.release);
        let owner = self.secret_owner(service, image).await?;
        let spec = self.container_spec(ctx, service, image, &name, replica, owner)?;
        let container_id = self.runtime.create_container(&spec).await?;
        // Recorded before it starts: whatever happens next, berth knows it owns it.
        let recorded = self.store.add_instance(&Instance {
            container_id: container_id.clone(),
            name: name.clone(),
            app: ctx.app.to_owned(),
            service: service.name.clone(),
            release: ctx.release,
            replica: i64::from(replica),
            state: InstanceState::Pending,
            created_at: berth_state::now_ms(),
        });
        if let Err(error) = recorded {
            let _ = self.runtime.remove_container(&container_id).await;
            return Err(error.into());
        }
        let started = StartedReplica {
            container_id: container_id.clone(),
            name,
            upstream: None,
        };
        if let Err(error) = self.runtime.start_container(&container_id).await {
            self.remove_replicas(std::slice::from_ref(&started)).await;
            return Err(error.into());
        }
        Ok(started)
    }

    pub(crate) async fn remove_replicas(&self, replicas: &[StartedReplica]) {
        let removals = replicas.iter().map(|replica| async move {
            if let Err(error) = self.runtime.remove_container(&replica.container_id).await {
                tracing::warn!(%error, container = %replica.name, "cannot remove a container of a failed operation");
                return;
            }
            if let Some(upstream) = &replica.upstream {
                upstream.retire();
            }
            if let Err(error) = self.store.remove_instance(&replica.container_id) {
                tracing::warn!(%error, "cannot forget a removed container");
            }
        });
        futures_util::future::join_all(removals).await;
    }

    /// Drains the old web containers, then stops and removes every old container: ordinary
    /// requests may finish within `limits.requests`; WebSockets and event streams may stay
    /// open up to `limits.long_lived`, then get a proper close (a WebSocket close frame, the
    /// end of the stream) and a moment to finish it. The new release is already live, so
    /// problems here are logged, not failures.
    pub(crate) async fn retire(
        &self,
        app: &str,
        old: &[Instance],
        before: Option<&LiveApp>,
        limits: DrainLimits,
        progress: &Progress,
    ) {
        if old.is_empty() {
            return;
        }
        let releases: std::collections::BTreeSet<i64> = old.iter().map(|i| i.release).collect();
        let label = releases
            .iter()
            .map(|r| format!("release {r}"))
            .collect::<Vec<_>>()
            .join(", ");
        let step = progress.step(format!("drain and stop {label}"));
        let upstream_of = |id: &str| {
            before.and_then(|live| {
                live.upstreams
                    .values()
                    .flatten()
                    .find(|(cid, _)| cid == id)
                    .map(|(_, u)| Arc::clone(u))
            })
        };
        let stop_timeout_of = |service: &str| {
            before
                .and_then(|live| live.manifest.services.get(service))
                .map(|s| s.stop_timeout)
                .unwrap_or(Duration::from_secs(10))
        };
        let upstreams: Vec<Arc<Upstream>> = old
            .iter()
            .filter_map(|i| upstream_of(&i.container_id))
            .collect();
        let now = berth_state::now_ms();
        let entry = Draining {
            release: releases.iter().next().copied().unwrap_or_default(),
            since: now,
            closes_at: now + i64::try_from(limits.long_lived.as_millis()).unwrap_or(i64::MAX / 2),
            upstreams,
        };
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(app.to_owned())
            .or_default()
            .push(entry.clone());
        let undrained = std::sync::atomic::AtomicUsize::new(0);
        let closed = std::sync::atomic::AtomicUsize::new(0);
        let jobs = old.iter().map(|instance| {
            let upstream = upstream_of(&instance.container_id);
            let stop_timeout = stop_timeout_of(&instance.service);
            let undrained = &undrained;
            let closed = &closed;
            async move {
                if let Some(upstream) = upstream {
                    if !upstream.wait_requests_drained(limits.requests).await {
                        undrained.fetch_add(upstream.requests_in_flight(), std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(app, container = %instance.name, in_flight = upstream.requests_in_flight(), "drain timeout reached; stopping anyway");
                    }
                    if upstream.long_lived() > 0 && !upstream.wait_drained(limits.long_lived).await {
                        closed.fetch_add(upstream.long_lived(), std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(app, container = %instance.name, open = upstream.long_lived(), "closing the old release's WebSockets and event streams (the clients reconnect to the new release)");
                        upstream.close_long_lived();
                        upstream.wait_drained(CLOSING_GRACE).await;
                    }
                    upstream.retire();
                }
                if let Err(error) = self.runtime.stop_container(&instance.container_id, stop_timeout).await {
                    tracing::warn!(app, %error, container = %instance.name, "cannot stop an old container");
                }
                match self.runtime.remove_container(&instance.container_id).await {
                    Ok(()) => {
                        if let Err(error) = self.store.remove_instance(&instance.container_id) {
                            tracing::warn!(%error, "cannot forget a removed container");
                        }
                    }
                    Err(error) => tracing::warn!(app, %error, container = %instance.name, "cannot remove an old container"),
                }
            }
        });
        futures_util::future::join_all(jobs).await;
        if let Some(list) = self
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(app)
        {
            list.retain(|d| d.since != entry.since || d.release != entry.release);
        }
        let cut = undrained.load(std::sync::atomic::Ordering::Relaxed);
        let closed = closed.load(std::sync::atomic::Ordering::Relaxed);
        let mut notes = Vec::new();
        if cut > 0 {
            notes.push(format!(
                "{cut} requests were still in flight after the drain timeout"
            ));
        }
        if closed > 0 {
            notes.push(format!(
                "{closed} WebSockets or event streams closed properly"
            ));
        }
        step.done((!notes.is_empty()).then(|| notes.join("; ")));
    }

    /// Untags the images of releases older than the newest `keep` good ones.
    async fn prune_images(&self, app: &str, keep: u32) {
        let Ok(releases) = self.store.releases(app, 1000) else {
            return;
        };
        let mut kept = 0;
        for release in releases {
            let good = matches!(release.status, ReleaseStatus::Live | ReleaseStatus::Retired);
            if good && kept < keep {
                kept += 1;
                continue;
            }
            for service in release.images.keys() {
                let reference = format!(
                    "{}:{}",
                    names::image_repository(app, service),
                    names::image_tag(release.number)
                );
                if let Err(error) = self.runtime.remove_image(&reference).await {
                    tracing::debug!(%error, reference, "image not pruned");
                }
            }
        }
    }

    // ---- container specs ---------------------------------------------------------------

    pub(crate) fn container_spec(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
        name: &str,
        replica: u32,
        secret_owner: Option<u32>,
    ) -> Result<ContainerSpec, OpError> {
        let mut labels = names::base_labels(&self.agent_id, ctx.app);
        labels.insert(names::SERVICE.into(), service.name.clone());
        labels.insert(names::ROLE.into(), service.role().as_str().into());
        let mut env: Vec<String> = service
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("BERTH_APP={}", ctx.app));
        env.push(format!("BERTH_SERVICE={}", service.name));
        if !service.accessory {
            labels.insert(names::RELEASE.into(), ctx.release.to_string());
            labels.insert(names::REPLICA.into(), replica.to_string());
            env.push(format!("BERTH_RELEASE={}", ctx.release));
            env.push(format!("BERTH_VERSION={}", ctx.version));
        }
        let mut mounts: Vec<MountSpec> = service
            .volumes
            .iter()
            .map(|v| match &v.source {
                VolumeSource::Named(volume) => MountSpec {
                    kind: MountKind::Volume,
                    source: names::volume(ctx.app, volume),
                    target: v.target.clone(),
                    read_only: v.read_only,
                },
                VolumeSource::Bind(path) => MountSpec {
                    kind: MountKind::Bind,
                    source: path.display().to_string(),
                    target: v.target.clone(),
                    read_only: v.read_only,
                },
            })
            .collect();
        for secret in &service.secrets {
            let value = ctx
                .secret_values
                .get(&secret.name)
                .ok_or_else(|| OpError::invalid(format!("secret {} is not set", secret.name)))?;
            match secret.delivery {
                SecretDelivery::Env => env.push(format!("{}={value}", secret.name)),
                SecretDelivery::File => {
                    let path =
                        self.write_secret_file(ctx, service, &secret.name, value, secret_owner)?;
                    mounts.push(MountSpec {
                        kind: MountKind::Bind,
                        source: path.display().to_string(),
                        target: format!("/run/secrets/{}", secret.name),
                        read_only: true,
                    });
                }
            }
        }
        let log_options = if matches!(service.logging.driver.as_str(), "json-file" | "local") {
            BTreeMap::from([
                ("max-size".to_owned(), service.logging.max_size.to_string()),
                ("max-file".to_owned(), service.logging.max_files.to_string()),
            ])
        } else {
            BTreeMap::new()
        };
        Ok(ContainerSpec {
            name: name.to_owned(),
            image: image.to_owned(),
            command: service.command.clone(),
            env,
            labels,
            network: Some(NetworkAttachment {
                network: names::network(ctx.app),
                aliases: vec![service.name.clone()],
            }),
            mounts,
            restart: Some(service.restart.as_docker().to_owned()),
            memory: service.memory,
            cpus: service.cpus,
            log: LogSpec {
                driver: service.logging.driver.clone(),
                options: log_options,
            },
            gpus: service.gpus.map(|g| match g {
                berth_manifest::Gpus::All => GpuRequest::All,
                berth_manifest::Gpus::Count(n) => GpuRequest::Count(n),
            }),
            init: service.init,
            stop_timeout: Some(service.stop_timeout),
            publish: service
                .publish
                .iter()
                .map(|p| PublishedPort {
                    host_ip: p.host_ip.clone(),
                    host_port: p.host_port,
                    container_port: p.container_port,
                })
                .collect(),
        })
    }

    pub(crate) fn secret_files_dir(&self, app: &str) -> PathBuf {
        self.secret_files_root.join(app)
    }

    /// The directory of one release's (or an accessory's) secret files.
    pub(crate) fn secret_scope_dir(&self, ctx: &ReleaseContext<'_>, service: &Service) -> PathBuf {
        let scope = if service.accessory {
            format!("accessory-{}", service.name)
        } else {
            format!("r{}-{}", ctx.release, service.name)
        };
        self.secret_files_dir(ctx.app).join(scope)
    }

    /// Writes a file secret for a read-only bind mount at `/run/secrets/NAME`: mode 0400,
    /// owned by `owner` (the user the image runs as), in a directory only the agent can
    /// enter. An agent that is not root cannot give a file away: the file is then its own,
    /// 0400 when the container runs as the agent's user and 0444 otherwise.
    pub(crate) fn write_secret_file(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        name: &str,
        value: &str,
        owner: Option<u32>,
    ) -> Result<PathBuf, OpError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.secret_scope_dir(ctx, service);
        let io = |e: std::io::Error| {
            OpError::failed(format!(
                "cannot write secret file {name} under {}: {e}",
                dir.display()
            ))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        let path = dir.join(name);
        let me = rustix::process::geteuid().as_raw();
        let owner = owner.unwrap_or(0);
        let (chown, mode) = if me == 0 {
            (Some((owner, 0)), 0o400)
        } else if owner == me {
            (None, 0o400)
        } else {
            (None, 0o444)
        };
        // A new file renamed into place: a reader never sees half a value, and the old file
        // being read-only is no obstacle.
        berth_fs::Dir::open(&dir)
            .and_then(|d| {
                d.replace(std::ffi::OsStr::new(name), chown, mode, |file| {
                    std::io::Write::write_all(file, value.as_bytes())
                })
            })
            .map_err(|e| OpError::failed(format!("cannot write secret file {name}: {e}")))?;
        Ok(path)
    }

    /// Removes secret files of releases that no longer have containers.
    pub(crate) fn prune_secret_files(&self, app: &str) {
        let Ok(instances) = self.store.instances(app) else {
            return;
        };
        let in_use: Vec<String> = instances
            .iter()
            .map(|i| format!("r{}-{}", i.release, i.service))
            .collect();
        let Ok(entries) = std::fs::read_dir(self.secret_files_dir(app)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('r') && !in_use.contains(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// The release context for an existing release (restart, reconcile).
    pub(crate) fn context_for<'a>(
        &self,
        release: &'a Release,
        manifest: &'a Manifest,
    ) -> Result<ReleaseContext<'a>, OpError> {
        Ok(ReleaseContext {
            app: &release.app,
            release: release.number,
            version: &release.version,
            manifest,
            secret_values: self.secret_values(manifest)?,
            wait_drain: false,
        })
    }

    // ---- restart -----------------------------------------------------------------------

    /// Replaces a service's containers with fresh ones of the same release (zero downtime
    /// for web services), or restarts an accessory in place.
    pub async fn restart_service(
        self: Arc<Self>,
        app: String,
        service: String,
        actor: String,
        progress: Progress,
    ) -> Outcome {
        let started = Instant::now();
        let result = self.restart_steps(&app, &service, &progress).await;
        let live = self.store.live_release(&app).ok().flatten();
        self.audit(
            &actor,
            "restart",
            &format!("{app}/{service}"),
            if result.is_ok() { "ok" } else { "failed" },
            "",
        );
        Outcome {
            ok: result.is_ok(),
            app: app.clone(),
            operation: "restart".into(),
            release: live.as_ref().map(|l| l.number),
            version: live.as_ref().map(|l| l.version.clone()),
            live_release: live.as_ref().map(|l| l.number),
            elapsed_ms: started.elapsed().as_millis() as u64,
            urls: Vec::new(),
            error: result.err().map(|e| e.to_operation()),
            backups: None,
        }
    }

    pub(crate) async fn restart_steps(
        &self,
        app: &str,
        service_name: &str,
        progress: &Progress,
    ) -> Result<(), OpError> {
        self.ensure_not_stopped(app, "restart")?;
        let release = self.store.live_release(app)?.ok_or_else(|| {
            OpError::not_found(format!("app {app} has no live release")).hint("deploy it first")
        })?;
        let manifest = release_manifest(&release)?;
        if let Some(accessory) = manifest.accessories.get(service_name) {
            let containers = self
                .runtime
                .list_containers(&[
                    (names::AGENT, &self.agent_id),
                    (names::APP, app),
                    (names::ROLE, "accessory"),
                    (names::SERVICE, service_name),
                ])
                .await?;
            let container = containers.first().ok_or_else(|| {
                OpError::not_found(format!("accessory {service_name} has no container"))
            })?;
            let step = progress.step(format!("restart accessory {service_name}"));
            self.runtime
                .restart_container(&container.id, accessory.stop_timeout)
                .await?;
            let ctx = self.context_for(&release, &manifest)?;
            return self
                .gate_accessory(&ctx, accessory, &container.id, step)
                .await;
        }
        let service = manifest.services.get(service_name).ok_or_else(|| {
            let known: Vec<&str> = manifest
                .services
                .keys()
                .chain(manifest.accessories.keys())
                .map(String::as_str)
                .collect();
            OpError::not_found(format!("app {app} has no service {service_name}"))
                .hint(format!("its services: {}", known.join(", ")))
        })?;
        progress.set_release(release.number);
        let ctx = self.context_for(&release, &manifest)?;
        self.replace(&ctx, &[service], &release.images, false, progress)
            .await?;
        self.prune_secret_files(app);
        Ok(())
    }
}

/// The proxy routes for an app's live state.
pub(crate) fn routes_for(live: &LiveApp, maintenance: Option<&str>, https: bool) -> Vec<RouteSpec> {
    live.manifest
        .web_services()
        .filter_map(|service| {
            let route = service.route.as_ref()?;
            Some(RouteSpec {
                app: live.manifest.app.clone(),
                service: service.name.clone(),
                release: live.release,
                domains: route.domains.clone(),
                path: route.path.clone(),
                upstreams: live
                    .upstreams
                    .get(&service.name)
                    .map(|u| u.iter().map(|(_, u)| Arc::clone(u)).collect())
                    .unwrap_or_default(),
                settings: route_settings(route, maintenance, https),
            })
        })
        .collect()
}

/// The proxy's behaviour for a manifest route.
fn route_settings(
    route: &berth_manifest::Route,
    maintenance: Option<&str>,
    https: bool,
) -> RouteSettings {
    let tls = https && route.tls != berth_manifest::Tls::Off && !route.domains.is_empty();
    RouteSettings {
        strip_prefix: route.strip_prefix,
        max_body: route.max_body,
        response_timeout: route.response_timeout,
        rate_limit: route.rate_limit.map(|r| berth_proxy::RateLimit {
            requests: r.requests,
            per: r.per,
        }),
        max_concurrent: route.max_concurrent.map(|n| n as usize),
        balance: match route.balance {
            berth_manifest::Balance::RoundRobin => Balance::RoundRobin,
            berth_manifest::Balance::LeastConnections => Balance::LeastConnections,
        },
        redirect_https: tls && route.redirect_http,
        hsts: tls && route.hsts,
        maintenance: maintenance.map(str::to_owned),
    }
}

pub(crate) fn release_manifest(release: &Release) -> Result<Manifest, OpError> {
    serde_json::from_str(&release.manifest_json).map_err(|e| {
        OpError::failed(format!(
            "the stored manifest of release {} of {} is unreadable: {e}",
            release.number, release.app
        ))
    })
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
fn same_registry(configured: &str, of_reference: &str) -> bool {
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
fn registry_unreachable(message: &str) -> bool {
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
