//! An in-memory [`ContainerRuntime`] for unit tests of the logic above it (feature `fake`).
//!
//! Containers, images, networks and volumes live in a map; nothing runs. A started container
//! is `running` at once (or exits with a code a test chose), every call is recorded so a test
//! can assert the order of steps, and any call can be made to fail with a classified
//! [`RuntimeError`], like Docker would fail it. Commands run with `exec` answer through a
//! rule the test sets (exit 0 with no output unless told otherwise).

use crate::{
    BuildRequest, ContainerEvent, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState,
    ContainerSummary, ExecOptions, ExecSession, ImageInfo, Labels, LogChunk, LogQuery, LogStream,
    OutputSink, RegistryAuth, Result, RuntimeError, RuntimeInfo,
};
use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A container the fake holds.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub id: String,
    pub spec: ContainerSpec,
    pub image_id: String,
    pub state: ContainerState,
    pub exit_code: Option<i64>,
    pub restart_count: i64,
    pub addresses: BTreeMap<String, IpAddr>,
}

type ErrorMaker = Box<dyn Fn(&str) -> RuntimeError + Send + Sync>;
type ExecRule = Box<dyn Fn(&FakeContainer, &[String]) -> (i64, String) + Send + Sync>;

struct Failure {
    call: &'static str,
    target: String,
    remaining: Option<usize>,
    make: ErrorMaker,
}

#[derive(Default)]
struct World {
    serial: u64,
    containers: BTreeMap<String, FakeContainer>,
    images: BTreeMap<String, ImageInfo>,
    /// What a pull of a reference yields (a registry's content).
    registry: BTreeMap<String, ImageInfo>,
    networks: BTreeMap<String, (Labels, Option<String>)>,
    volumes: BTreeMap<String, Labels>,
    calls: Vec<String>,
    failures: Vec<Failure>,
    exits_on_start: Vec<(String, i64)>,
    execs: HashMap<String, i64>,
    logs: HashMap<String, Vec<String>>,
    image_files: HashMap<(String, String), Vec<u8>>,
    down: bool,
}

/// The in-memory runtime. Cheap to create; share it as `Arc<dyn ContainerRuntime>`.
#[derive(Default)]
pub struct FakeRuntime {
    world: Mutex<World>,
    events: Mutex<Option<tokio::sync::broadcast::Sender<ContainerEvent>>>,
    exec_rule: Mutex<Option<ExecRule>>,
    volume_root: Option<PathBuf>,
}

impl FakeRuntime {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A fake whose volumes have a real directory each under `root` (for code that reads
    /// or writes a volume's data on the host).
    pub fn with_volume_root(root: &Path) -> Arc<Self> {
        Arc::new(Self {
            volume_root: Some(root.to_owned()),
            ..Self::default()
        })
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An image present on the host (built or loaded here: no registry digest).
    pub fn add_image(&self, reference: &str, user: &str) -> ImageInfo {
        let mut world = self.world();
        world.serial += 1;
        let image = ImageInfo {
            id: format!("sha256:{:064x}", world.serial),
            tags: vec![reference.to_owned()],
            digests: Vec::new(),
            user: user.to_owned(),
            size: 1000,
            labels: Labels::new(),
        };
        world.images.insert(image.id.clone(), image.clone());
        image
    }

    /// Makes `reference` pullable; a pull yields a new image (with a registry digest).
    pub fn publish(&self, reference: &str) {
        let mut world = self.world();
        world.serial += 1;
        let serial = world.serial;
        let image = ImageInfo {
            id: format!("sha256:{serial:064x}"),
            tags: vec![reference.to_owned()],
            digests: vec![format!("{reference}@sha256:{serial:064x}")],
            user: String::new(),
            size: 1000,
            labels: Labels::new(),
        };
        world.registry.insert(reference.to_owned(), image);
    }

    /// Every later `call` (`create_container`, `start_container`, `pull_image`, ...) whose
    /// target (container name or id, image reference, network or volume name) contains
    /// `target` fails with the error `make` returns.
    pub fn fail(
        &self,
        call: &'static str,
        target: &str,
        make: impl Fn(&str) -> RuntimeError + Send + Sync + 'static,
    ) {
        self.world().failures.push(Failure {
            call,
            target: target.to_owned(),
            remaining: None,
            make: Box::new(make),
        });
    }

    /// Like [`fail`](Self::fail), for the next `times` matching calls only.
    pub fn fail_times(
        &self,
        call: &'static str,
        target: &str,
        times: usize,
        make: impl Fn(&str) -> RuntimeError + Send + Sync + 'static,
    ) {
        self.world().failures.push(Failure {
            call,
            target: target.to_owned(),
            remaining: Some(times),
            make: Box::new(make),
        });
    }

    /// Takes the runtime away (every call fails as unreachable) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.world().down = down;
    }

    /// Containers whose name contains `name` exit with `code` as soon as they start.
    pub fn exit_on_start(&self, name: &str, code: i64) {
        self.world().exits_on_start.push((name.to_owned(), code));
    }

    /// How commands run in containers answer: (exit code, output).
    pub fn on_exec(
        &self,
        rule: impl Fn(&FakeContainer, &[String]) -> (i64, String) + Send + Sync + 'static,
    ) {
        *self.exec_rule.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(rule));
    }

    /// A file an image holds, for `read_image_file`.
    pub fn add_image_file(&self, image_id: &str, path: &str, content: &[u8]) {
        self.world()
            .image_files
            .insert((image_id.to_owned(), path.to_owned()), content.to_vec());
    }

    /// Lines a container has written, for `logs`.
    pub fn add_logs(&self, container_name: &str, lines: &[&str]) {
        self.world()
            .logs
            .entry(container_name.to_owned())
            .or_default()
            .extend(lines.iter().map(|l| (*l).to_owned()));
    }

    /// A container created behind berth's back (or left by an earlier run).
    pub fn add_container(&self, spec: ContainerSpec, state: ContainerState) -> String {
        let mut world = self.world();
        world.serial += 1;
        let id = format!("{:064x}", world.serial);
        let image_id = image_id_of(&world, &spec.image).unwrap_or_default();
        let addresses = address_for(&spec, world.serial);
        world.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                spec,
                image_id,
                state,
                exit_code: None,
                restart_count: 0,
                addresses,
            },
        );
        id
    }

    /// Changes a container's state as if it crashed (`Exited`) or was stopped outside berth.
    pub fn set_state(&self, name_or_id: &str, state: ContainerState, exit_code: Option<i64>) {
        let mut world = self.world();
        if let Some(c) = find_mut(&mut world, name_or_id) {
            c.state = state;
            c.exit_code = exit_code;
        }
    }

    /// Sends a container event to every `container_events` stream whose labels match.
    pub fn emit(&self, event: ContainerEvent) {
        let sender = self.events_sender();
        let _ = sender.send(event);
    }

    fn events_sender(&self) -> tokio::sync::broadcast::Sender<ContainerEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| tokio::sync::broadcast::channel(256).0)
            .clone()
    }

    /// Removes a container as `docker rm -f` by someone else would.
    pub fn vanish(&self, name_or_id: &str) {
        let mut world = self.world();
        let id = find_mut(&mut world, name_or_id).map(|c| c.id.clone());
        if let Some(id) = id {
            world.containers.remove(&id);
        }
    }

    pub fn containers(&self) -> Vec<FakeContainer> {
        self.world().containers.values().cloned().collect()
    }

    /// Names of running containers, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .world()
            .containers
            .values()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| c.spec.name.clone())
            .collect();
        names.sort();
        names
    }

    pub fn images(&self) -> Vec<ImageInfo> {
        self.world().images.values().cloned().collect()
    }

    pub fn networks(&self) -> Vec<String> {
        self.world().networks.keys().cloned().collect()
    }

    pub fn volumes(&self) -> Vec<String> {
        self.world().volumes.keys().cloned().collect()
    }

    /// Every call so far, as `call target` (`create_container web-1`), in order.
    pub fn calls(&self) -> Vec<String> {
        self.world().calls.clone()
    }

    /// The calls named `call`, in order, by target.
    pub fn calls_to(&self, call: &str) -> Vec<String> {
        self.world()
            .calls
            .iter()
            .filter_map(|c| c.strip_prefix(call)?.strip_prefix(' ').map(str::to_owned))
            .collect()
    }

    pub fn clear_calls(&self) {
        self.world().calls.clear();
    }

    /// Records a call and returns the injected failure for it, if any.
    fn enter(&self, call: &'static str, target: &str) -> Result<()> {
        let mut world = self.world();
        world.calls.push(format!("{call} {target}"));
        if world.down {
            return Err(RuntimeError::Unreachable {
                endpoint: "fake://".into(),
                reason: "the fake runtime is down".into(),
                hint: "bring it back with set_down(false)",
            });
        }
        let found = world
            .failures
            .iter_mut()
            .position(|f| f.call == call && target.contains(&f.target) && f.remaining != Some(0));
        if let Some(index) = found {
            let failure = &mut world.failures[index];
            if let Some(left) = failure.remaining.as_mut() {
                *left -= 1;
            }
            return Err((failure.make)(target));
        }
        Ok(())
    }

    /// The container `name_or_id` names, for a call's target (its name when known).
    fn container_name(&self, name_or_id: &str) -> String {
        let mut world = self.world();
        find_mut(&mut world, name_or_id)
            .map(|c| c.spec.name.clone())
            .unwrap_or_else(|| name_or_id.to_owned())
    }
}

fn find_mut<'a>(world: &'a mut World, name_or_id: &str) -> Option<&'a mut FakeContainer> {
    let name = name_or_id.trim_start_matches('/');
    world
        .containers
        .values_mut()
        .find(|c| c.id == name || c.spec.name == name)
}

fn image_id_of(world: &World, reference: &str) -> Option<String> {
    world
        .images
        .values()
        .find(|i| i.id == reference || i.tags.iter().any(|t| t == reference))
        .map(|i| i.id.clone())
}

fn address_for(spec: &ContainerSpec, serial: u64) -> BTreeMap<String, IpAddr> {
    spec.network
        .iter()
        .map(|n| {
            let ip = Ipv4Addr::new(10, 99, (serial / 250) as u8, (serial % 250) as u8 + 2);
            (n.network.clone(), IpAddr::V4(ip))
        })
        .collect()
}

fn missing(kind: &'static str, name: &str) -> RuntimeError {
    RuntimeError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

fn matches_labels(labels: &Labels, filters: &[(&str, &str)]) -> bool {
    filters
        .iter()
        .all(|(k, v)| labels.get(*k).is_some_and(|have| have == v))
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    fn endpoint(&self) -> String {
        "fake://".into()
    }

    async fn info(&self) -> Result<RuntimeInfo> {
        self.enter("info", "")?;
        Ok(RuntimeInfo {
            version: "fake".into(),
            api_version: "1.47".into(),
            data_root: None,
        })
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &Labels,
        subnet: Option<&str>,
    ) -> Result<bool> {
        self.enter("ensure_network", name)?;
        let mut world = self.world();
        if world.networks.contains_key(name) {
            return Ok(false);
        }
        world
            .networks
            .insert(name.to_owned(), (labels.clone(), subnet.map(str::to_owned)));
        Ok(true)
    }

    async fn network_exists(&self, name: &str) -> Result<bool> {
        self.enter("network_exists", name)?;
        Ok(self.world().networks.contains_key(name))
    }

    async fn network_subnets(&self) -> Result<Vec<String>> {
        self.enter("network_subnets", "")?;
        Ok(self
            .world()
            .networks
            .values()
            .filter_map(|(_, subnet)| subnet.clone())
            .collect())
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        self.enter("remove_network", name)?;
        self.world().networks.remove(name);
        Ok(())
    }

    async fn ensure_volume(&self, name: &str, labels: &Labels) -> Result<()> {
        self.enter("ensure_volume", name)?;
        if let Some(root) = &self.volume_root {
            std::fs::create_dir_all(root.join(name)).map_err(|e| RuntimeError::Conflict {
                action: format!("create volume {name}"),
                message: e.to_string(),
            })?;
        }
        self.world()
            .volumes
            .entry(name.to_owned())
            .or_insert_with(|| labels.clone());
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        self.enter("remove_volume", name)?;
        self.world().volumes.remove(name);
        Ok(())
    }

    async fn build_image(
        &self,
        request: &BuildRequest,
        output: OutputSink<'_>,
    ) -> Result<ImageInfo> {
        self.enter("build_image", &request.tag)?;
        output(&format!("#1 building {}", request.tag));
        let mut world = self.world();
        world.serial += 1;
        let image = ImageInfo {
            id: format!("sha256:{:064x}", world.serial),
            tags: vec![request.tag.clone()],
            digests: Vec::new(),
            user: String::new(),
            size: 1000,
            labels: request.labels.clone(),
        };
        // A tag moves to the new image.
        for other in world.images.values_mut() {
            other.tags.retain(|t| t != &request.tag);
        }
        world.images.insert(image.id.clone(), image.clone());
        Ok(image)
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>> {
        self.enter("inspect_image", reference)?;
        let world = self.world();
        Ok(image_id_of(&world, reference).and_then(|id| world.images.get(&id).cloned()))
    }

    async fn pull_image(
        &self,
        reference: &str,
        _auth: Option<&RegistryAuth>,
        output: OutputSink<'_>,
    ) -> Result<ImageInfo> {
        self.enter("pull_image", reference)?;
        let mut world = self.world();
        let Some(image) = world.registry.get(reference).cloned() else {
            return Err(RuntimeError::ImageUnavailable {
                reference: reference.to_owned(),
                reason: "manifest unknown".into(),
            });
        };
        output(&format!("pulled {reference}"));
        for other in world.images.values_mut() {
            other.tags.retain(|t| t != reference);
        }
        world.images.insert(image.id.clone(), image.clone());
        Ok(image)
    }

    async fn load_image(&self, archive: &Path) -> Result<Vec<String>> {
        self.enter("load_image", &archive.display().to_string())?;
        Ok(Vec::new())
    }

    async fn tag_image(&self, image: &str, repository: &str, tag: &str) -> Result<()> {
        let reference = format!("{repository}:{tag}");
        self.enter("tag_image", &reference)?;
        let mut world = self.world();
        let id = image_id_of(&world, image).ok_or_else(|| missing("image", image))?;
        for other in world.images.values_mut() {
            other.tags.retain(|t| t != &reference);
        }
        if let Some(target) = world.images.get_mut(&id) {
            target.tags.push(reference);
        }
        Ok(())
    }

    async fn remove_image(&self, reference: &str) -> Result<()> {
        self.enter("remove_image", reference)?;
        let mut world = self.world();
        let Some(id) = image_id_of(&world, reference) else {
            return Ok(());
        };
        let in_use = world.containers.values().any(|c| c.image_id == id);
        if let Some(image) = world.images.get_mut(&id) {
            image.tags.retain(|t| t != reference);
            if (image.tags.is_empty() || image.id == reference) && !in_use {
                world.images.remove(&id);
            }
        }
        Ok(())
    }

    async fn list_images(&self, label_filters: &[(&str, &str)]) -> Result<Vec<ImageInfo>> {
        self.enter("list_images", "")?;
        Ok(self
            .world()
            .images
            .values()
            .filter(|i| matches_labels(&i.labels, label_filters))
            .cloned()
            .collect())
    }

    async fn images_matching(&self, reference: &str) -> Result<Vec<ImageInfo>> {
        self.enter("images_matching", reference)?;
        let prefix = reference.trim_end_matches('*');
        Ok(self
            .world()
            .images
            .values()
            .filter(|i| i.tags.iter().any(|t| t.starts_with(prefix)))
            .cloned()
            .collect())
    }

    async fn list_volumes(&self, label_filters: &[(&str, &str)]) -> Result<Vec<String>> {
        self.enter("list_volumes", "")?;
        Ok(self
            .world()
            .volumes
            .iter()
            .filter(|(_, labels)| matches_labels(labels, label_filters))
            .map(|(name, _)| name.clone())
            .collect())
    }

    async fn volume_mountpoint(&self, name: &str) -> Result<Option<PathBuf>> {
        self.enter("volume_mountpoint", name)?;
        if !self.world().volumes.contains_key(name) {
            return Ok(None);
        }
        Ok(self.volume_root.as_ref().map(|root| root.join(name)))
    }

    async fn list_networks(&self, label_filters: &[(&str, &str)]) -> Result<Vec<String>> {
        self.enter("list_networks", "")?;
        Ok(self
            .world()
            .networks
            .iter()
            .filter(|(_, (labels, _))| matches_labels(labels, label_filters))
            .map(|(name, _)| name.clone())
            .collect())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        self.enter("create_container", &spec.name)?;
        let mut world = self.world();
        if world.containers.values().any(|c| c.spec.name == spec.name) {
            return Err(RuntimeError::Conflict {
                action: format!("create container {}", spec.name),
                message: "the container name is already in use".into(),
            });
        }
        let image_id =
            image_id_of(&world, &spec.image).ok_or_else(|| missing("image", &spec.image))?;
        world.serial += 1;
        let id = format!("{:064x}", world.serial);
        let addresses = address_for(spec, world.serial);
        world.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                spec: spec.clone(),
                image_id,
                state: ContainerState::Created,
                exit_code: None,
                restart_count: 0,
                addresses,
            },
        );
        Ok(id)
    }

    fn container_events(
        &self,
        label_filters: &[(&str, &str)],
    ) -> BoxStream<'static, Result<ContainerEvent>> {
        let wanted: Vec<(String, String)> = label_filters
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let receiver = self.events_sender().subscribe();
        stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => return Some((event, receiver)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |event| {
            let matches = wanted
                .iter()
                .all(|(k, v)| event.labels.get(k).is_some_and(|l| l == v));
            async move { matches }
        })
        .map(Ok)
        .boxed()
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.enter("start_container", &self.container_name(id))?;
        let mut world = self.world();
        let exits = world.exits_on_start.clone();
        let container = find_mut(&mut world, id).ok_or_else(|| missing("container", id))?;
        match exits
            .iter()
            .find(|(name, _)| container.spec.name.contains(name))
        {
            Some((_, code)) => {
                container.state = ContainerState::Exited;
                container.exit_code = Some(*code);
            }
            None => {
                container.state = ContainerState::Running;
                container.exit_code = None;
            }
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, _timeout: Duration) -> Result<()> {
        self.enter("stop_container", &self.container_name(id))?;
        let mut world = self.world();
        if let Some(container) = find_mut(&mut world, id)
            && container.state != ContainerState::Exited
        {
            container.state = ContainerState::Exited;
            container.exit_code = Some(0);
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.enter("remove_container", &self.container_name(id))?;
        let mut world = self.world();
        let found = find_mut(&mut world, id).map(|c| c.id.clone());
        if let Some(found) = found {
            world.containers.remove(&found);
        }
        Ok(())
    }

    async fn restart_container(&self, id: &str, _timeout: Duration) -> Result<()> {
        self.enter("restart_container", &self.container_name(id))?;
        let mut world = self.world();
        let container = find_mut(&mut world, id).ok_or_else(|| missing("container", id))?;
        container.state = ContainerState::Running;
        container.restart_count += 1;
        Ok(())
    }

    async fn pause_container(&self, id: &str) -> Result<()> {
        self.enter("pause_container", &self.container_name(id))?;
        let mut world = self.world();
        let container = find_mut(&mut world, id).ok_or_else(|| missing("container", id))?;
        container.state = ContainerState::Paused;
        Ok(())
    }

    async fn unpause_container(&self, id: &str) -> Result<()> {
        self.enter("unpause_container", &self.container_name(id))?;
        let mut world = self.world();
        let container = find_mut(&mut world, id).ok_or_else(|| missing("container", id))?;
        container.state = ContainerState::Running;
        Ok(())
    }

    async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInfo>> {
        self.enter("inspect_container", &self.container_name(id))?;
        let mut world = self.world();
        Ok(find_mut(&mut world, id).map(|c| ContainerInfo {
            id: c.id.clone(),
            name: format!("/{}", c.spec.name),
            image_id: c.image_id.clone(),
            labels: c.spec.labels.clone(),
            state: c.state,
            exit_code: c.exit_code,
            oom_killed: false,
            restart_count: c.restart_count,
            pid: None,
            started_at: None,
            addresses: c.addresses.clone(),
        }))
    }

    async fn list_containers(
        &self,
        label_filters: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>> {
        self.enter("list_containers", "")?;
        Ok(self
            .world()
            .containers
            .values()
            .filter(|c| matches_labels(&c.spec.labels, label_filters))
            .map(|c| ContainerSummary {
                id: c.id.clone(),
                name: c.spec.name.clone(),
                labels: c.spec.labels.clone(),
                state: c.state,
            })
            .collect())
    }

    async fn wait_container(&self, id: &str) -> Result<i64> {
        self.enter("wait_container", &self.container_name(id))?;
        loop {
            {
                let mut world = self.world();
                let container = find_mut(&mut world, id).ok_or_else(|| missing("container", id))?;
                if matches!(
                    container.state,
                    ContainerState::Exited | ContainerState::Dead
                ) {
                    return Ok(container.exit_code.unwrap_or(0));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn logs(&self, id: &str, query: &LogQuery) -> BoxStream<'static, Result<LogChunk>> {
        let name = self.container_name(id);
        let mut lines = self.world().logs.get(&name).cloned().unwrap_or_default();
        if let Some(tail) = query.tail {
            let skip = lines.len().saturating_sub(tail);
            lines.drain(..skip);
        }
        stream::iter(lines.into_iter().map(|line| {
            Ok(LogChunk {
                stream: LogStream::Stdout,
                data: bytes::Bytes::from(format!("{line}\n")),
            })
        }))
        .boxed()
    }

    async fn exec_with(
        &self,
        id: &str,
        command: &[String],
        _options: &ExecOptions,
    ) -> Result<ExecSession> {
        let name = self.container_name(id);
        self.enter("exec", &format!("{name} {}", command.join(" ")))?;
        let container = {
            let mut world = self.world();
            let container = find_mut(&mut world, id).ok_or_else(|| missing("container", id))?;
            if container.state != ContainerState::Running {
                return Err(RuntimeError::Conflict {
                    action: format!("run a command in {name}"),
                    message: "the container is not running".into(),
                });
            }
            container.clone()
        };
        let (code, output) = match &*self.exec_rule.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(rule) => rule(&container, command),
            None => (0, String::new()),
        };
        let mut world = self.world();
        world.serial += 1;
        let exec_id = format!("exec-{}", world.serial);
        world.execs.insert(exec_id.clone(), code);
        let chunk = LogChunk {
            stream: LogStream::Stdout,
            data: bytes::Bytes::from(output),
        };
        Ok(ExecSession {
            id: exec_id,
            output: stream::iter([Ok(chunk)]).boxed(),
            input: None,
        })
    }

    async fn read_image_file(
        &self,
        image: &str,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>> {
        self.enter("read_image_file", &format!("{image} {path}"))?;
        let world = self.world();
        let id = image_id_of(&world, image).unwrap_or_else(|| image.to_owned());
        Ok(world
            .image_files
            .get(&(id, path.to_owned()))
            .map(|content| content[..content.len().min(limit)].to_vec()))
    }

    async fn exec_pid(&self, exec_id: &str) -> Result<Option<i64>> {
        self.enter("exec_pid", exec_id)?;
        Ok(None)
    }

    async fn resize_exec(&self, exec_id: &str, _rows: u16, _cols: u16) -> Result<()> {
        self.enter("resize_exec", exec_id)?;
        Ok(())
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        Ok(self.world().execs.get(exec_id).copied())
    }
}
