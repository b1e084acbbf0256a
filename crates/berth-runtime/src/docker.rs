//! [`ContainerRuntime`] over the Docker Engine API with bollard.

use crate::error::{Result, RuntimeError};
use crate::types::*;
use crate::{ContainerRuntime, ExecOptions, ExecSession, OutputSink};
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, EndpointSettings, HostConfig, HostConfigLogConfig, Mount,
    MountType, NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters as q;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The Docker Engine, reached through `DOCKER_HOST` or the default socket.
///
/// The API version is negotiated on first use, so the agent can start while Docker is down
/// and recover when it comes back.
#[derive(Clone)]
pub struct DockerRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: String,
    client: OnceCell<Docker>,
}

const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
const BUILD_TAIL_LINES: usize = 30;

impl DockerRuntime {
    /// The engine named by `DOCKER_HOST`, else the default socket.
    pub fn from_env() -> Self {
        let endpoint = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
        Self::new(&endpoint)
    }

    /// The engine at `endpoint` (`unix:///path/docker.sock` or `tcp://host:port`).
    pub fn new(endpoint: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoint: endpoint.to_owned(),
                client: OnceCell::new(),
            }),
        }
    }

    async fn client(&self) -> Result<&Docker> {
        self.inner
            .client
            .get_or_try_init(|| async {
                let docker =
                    connect(&self.inner.endpoint).map_err(|e| self.classify(e, "connect"))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| self.classify(e, "connect"))
            })
            .await
    }

    /// Turns a bollard error into one that names the cause and the fix.
    fn classify(&self, error: BollardError, action: &str) -> RuntimeError {
        let endpoint = self.inner.endpoint.clone();
        let action = action.to_owned();
        match error {
            BollardError::SocketNotFoundError(path) => RuntimeError::Unreachable {
                endpoint,
                reason: format!("the socket {path} does not exist"),
                hint: "is Docker installed and running? (`sudo systemctl start docker`)",
            },
            BollardError::RequestTimeoutError => RuntimeError::Timeout {
                action,
                timeout: Duration::from_secs(120),
            },
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => classify_response(status_code, message, action),
            BollardError::DockerStreamError { error } if is_disk_full(&error) => {
                RuntimeError::DiskFull { action }
            }
            BollardError::DockerStreamError { error } => RuntimeError::Api {
                action,
                status: 500,
                message: error,
            },
            other => {
                // Transport errors carry an io::Error somewhere in their source chain.
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&other);
                while let Some(current) = source {
                    if let Some(io) = current.downcast_ref::<std::io::Error>() {
                        return match io.kind() {
                            std::io::ErrorKind::PermissionDenied => {
                                RuntimeError::PermissionDenied { endpoint }
                            }
                            std::io::ErrorKind::NotFound => RuntimeError::Unreachable {
                                endpoint,
                                reason: "the socket does not exist".into(),
                                hint: "is Docker installed and running? (`sudo systemctl start docker`)",
                            },
                            std::io::ErrorKind::ConnectionRefused => RuntimeError::Unreachable {
                                endpoint,
                                reason: "connection refused".into(),
                                hint: "is the Docker daemon running? (`sudo systemctl start docker`)",
                            },
                            _ if is_disk_full(&io.to_string()) => RuntimeError::DiskFull { action },
                            _ => RuntimeError::Unreachable {
                                endpoint,
                                reason: io.to_string(),
                                hint: "check that the Docker daemon is running and healthy",
                            },
                        };
                    }
                    source = current.source();
                }
                if matches!(other, BollardError::HyperLegacyError { .. }) {
                    return RuntimeError::Unreachable {
                        endpoint,
                        reason: other.to_string(),
                        hint: "check that the Docker daemon is running and healthy",
                    };
                }
                RuntimeError::Io {
                    action,
                    message: other.to_string(),
                }
            }
        }
    }
}

fn connect(endpoint: &str) -> Result<Docker, BollardError> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        // bollard only notices a missing socket when the first request fails; say so plainly.
        if !Path::new(path).exists() {
            return Err(BollardError::SocketNotFoundError(path.to_owned()));
        }
        return Docker::connect_with_socket(path, 120, bollard::API_DEFAULT_VERSION);
    }
    Docker::connect_with_host(endpoint)
}

fn is_disk_full(message: &str) -> bool {
    message.contains("no space left on device")
}

fn classify_response(status: u16, message: String, action: String) -> RuntimeError {
    if is_disk_full(&message) {
        return RuntimeError::DiskFull { action };
    }
    match status {
        404 => RuntimeError::NotFound {
            kind: "object",
            name: message,
        },
        409 => RuntimeError::Conflict { action, message },
        _ => RuntimeError::Api {
            action,
            status,
            message,
        },
    }
}

fn filters(labels: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    let values = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    HashMap::from([("label".to_owned(), values)])
}

fn to_hash(labels: &Labels) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A container event berth follows, or `None` for any other.
fn container_event(message: bollard::models::EventMessage) -> Option<ContainerEvent> {
    let action = match message.action.as_deref()? {
        "start" => ContainerAction::Start,
        "die" => ContainerAction::Die,
        "oom" => ContainerAction::Oom,
        _ => return None,
    };
    let actor = message.actor?;
    let mut labels = from_hash(actor.attributes);
    // Docker mixes a few attributes of its own in with the labels.
    let name = labels.remove("name").unwrap_or_default();
    let exit_code = labels.remove("exitCode").and_then(|c| c.parse().ok());
    labels.remove("image");
    let time_ms = message
        .time_nano
        .map(|n| n / 1_000_000)
        .or(message.time.map(|s| s * 1000))
        .unwrap_or_default();
    Some(ContainerEvent {
        id: actor.id?,
        name,
        action,
        labels,
        exit_code,
        time_ms,
    })
}

fn from_hash(labels: Option<HashMap<String, String>>) -> Labels {
    labels.unwrap_or_default().into_iter().collect()
}

fn state_from(text: &str) -> ContainerState {
    match text {
        "created" => ContainerState::Created,
        "running" => ContainerState::Running,
        "restarting" => ContainerState::Restarting,
        "paused" => ContainerState::Paused,
        "exited" => ContainerState::Exited,
        "dead" => ContainerState::Dead,
        "removing" => ContainerState::Removing,
        _ => ContainerState::Unknown,
    }
}

fn log_chunk(output: bollard::container::LogOutput) -> Option<LogChunk> {
    use bollard::container::LogOutput;
    match output {
        LogOutput::StdOut { message } | LogOutput::Console { message } => Some(LogChunk {
            stream: LogStream::Stdout,
            data: message,
        }),
        LogOutput::StdErr { message } => Some(LogChunk {
            stream: LogStream::Stderr,
            data: message,
        }),
        LogOutput::StdIn { .. } => None,
    }
}

fn image_info(inspect: bollard::models::ImageInspect) -> ImageInfo {
    ImageInfo {
        id: inspect.id.unwrap_or_default(),
        tags: inspect.repo_tags.unwrap_or_default(),
        digests: inspect.repo_digests.unwrap_or_default(),
        user: inspect
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default(),
        size: inspect
            .size
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
        labels: from_hash(inspect.config.and_then(|c| c.labels)),
    }
}

fn container_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mounts = spec
        .mounts
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: Some(m.source.clone()),
            typ: Some(match m.kind {
                MountKind::Volume => MountType::VOLUME,
                MountKind::Bind => MountType::BIND,
            }),
            read_only: Some(m.read_only),
            ..Mount::default()
        })
        .collect();
    let restart_policy = spec.restart.as_deref().map(|name| RestartPolicy {
        name: Some(match name {
            "always" => RestartPolicyNameEnum::ALWAYS,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            "no" => RestartPolicyNameEnum::NO,
            _ => RestartPolicyNameEnum::UNLESS_STOPPED,
        }),
        maximum_retry_count: None,
    });
    let device_requests = spec.gpus.map(|gpus| {
        vec![DeviceRequest {
            driver: Some(String::new()),
            count: Some(match gpus {
                GpuRequest::All => -1,
                GpuRequest::Count(n) => i64::from(n),
            }),
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..DeviceRequest::default()
        }]
    });
    let mut exposed_ports = Vec::new();
    let mut port_bindings = HashMap::new();
    for publish in &spec.publish {
        let key = format!("{}/tcp", publish.container_port);
        exposed_ports.push(key.clone());
        port_bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: publish.host_ip.clone(),
                host_port: Some(publish.host_port.to_string()),
            });
    }
    let host_config = HostConfig {
        mounts: Some(mounts),
        restart_policy,
        memory: spec.memory.and_then(|m| i64::try_from(m).ok()),
        nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
        log_config: (!spec.log.driver.is_empty()).then(|| HostConfigLogConfig {
            typ: Some(spec.log.driver.clone()),
            config: Some(spec.log.options.clone().into_iter().collect()),
        }),
        device_requests,
        init: Some(spec.init),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        network_mode: spec.network.as_ref().map(|n| n.network.clone()),
        ..HostConfig::default()
    };
    let networking_config = spec.network.as_ref().map(|n| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            n.network.clone(),
            EndpointSettings {
                aliases: Some(n.aliases.clone()),
                ..EndpointSettings::default()
            },
        )])),
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        env: Some(spec.env.clone()),
        labels: Some(to_hash(&spec.labels)),
        stop_timeout: spec.stop_timeout.map(|t| t.as_secs() as i64),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        host_config: Some(host_config),
        networking_config,
        ..ContainerCreateBody::default()
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    fn endpoint(&self) -> String {
        self.inner.endpoint.clone()
    }

    async fn info(&self) -> Result<RuntimeInfo> {
        let docker = self.client().await?;
        let version = docker
            .version()
            .await
            .map_err(|e| self.classify(e, "read the Docker version"))?;
        // The data root is a nicety (a disk to watch): not knowing it is no error.
        let data_root = docker
            .info()
            .await
            .ok()
            .and_then(|info| info.docker_root_dir);
        Ok(RuntimeInfo {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            data_root,
        })
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &Labels,
        subnet: Option<&str>,
    ) -> Result<bool> {
        if self.network_exists(name).await? {
            return Ok(false);
        }
        let docker = self.client().await?;
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(to_hash(labels)),
            ipam: subnet.map(|subnet| bollard::models::Ipam {
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(subnet.to_owned()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..NetworkCreateRequest::default()
        };
        match docker.create_network(request).await {
            Ok(_) => Ok(true),
            // Created concurrently by someone else: fine.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(false),
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("non-overlapping") || message.contains("address pool") =>
            {
                Err(RuntimeError::AddressPools {
                    network: name.to_owned(),
                    message,
                })
            }
            Err(e) => Err(self.classify(e, &format!("create network {name}"))),
        }
    }

    async fn network_exists(&self, name: &str) -> Result<bool> {
        let docker = self.client().await?;
        match docker
            .inspect_network(name, None::<q::InspectNetworkOptions>)
            .await
        {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.classify(e, &format!("inspect network {name}"))),
        }
    }

    async fn network_subnets(&self) -> Result<Vec<String>> {
        let docker = self.client().await?;
        let networks = docker
            .list_networks(None::<q::ListNetworksOptions>)
            .await
            .map_err(|e| self.classify(e, "list networks"))?;
        Ok(networks
            .into_iter()
            .filter_map(|n| n.ipam.and_then(|ipam| ipam.config))
            .flatten()
            .filter_map(|config| config.subnet)
            .collect())
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        let docker = self.client().await?;
        match docker.remove_network(name).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.classify(e, &format!("remove network {name}"))),
        }
    }

    async fn ensure_volume(&self, name: &str, labels: &Labels) -> Result<()> {
        let docker = self.client().await?;
        match docker.inspect_volume(name).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.classify(e, &format!("inspect volume {name}"))),
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(to_hash(labels)),
            ..VolumeCreateRequest::default()
        };
        docker
            .create_volume(request)
            .await
            .map(|_| ())
            .map_err(|e| self.classify(e, &format!("create volume {name}")))
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        let docker = self.client().await?;
        match docker
            .remove_volume(name, None::<q::RemoveVolumeOptions>)
            .await
        {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.classify(e, &format!("remove volume {name}"))),
        }
    }

    async fn volume_mountpoint(&self, name: &str) -> Result<Option<std::path::PathBuf>> {
        let docker = self.client().await?;
        match docker.inspect_volume(name).await {
            Ok(volume) => Ok(Some(std::path::PathBuf::from(volume.mountpoint))),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.classify(e, &format!("inspect volume {name}"))),
        }
    }

    async fn build_image(
        &self,
        request: &BuildRequest,
        output: OutputSink<'_>,
    ) -> Result<ImageInfo> {
        // BuildKit first (cache mounts, `COPY --chmod`, heredocs and the rest of today's
        // Dockerfile syntax need it); the classic builder only for an engine without it.
        match self.build_with(request, output, Builder::BuildKit).await {
            Err(RuntimeError::BuildFailed { message, .. }) if buildkit_missing(&message) => {
                output(&format!(
                    "this Docker Engine has no BuildKit ({message}); building with the classic builder"
                ));
                self.build_with(request, output, Builder::Classic).await
            }
            other => other,
        }
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let docker = self.client().await?;
        match docker.inspect_image(reference).await {
            Ok(inspect) => Ok(Some(image_info(inspect))),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.classify(e, &format!("inspect image {reference}"))),
        }
    }

    async fn pull_image(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        output: OutputSink<'_>,
    ) -> Result<ImageInfo> {
        let docker = self.client().await?;
        let (image, tag) = split_reference(reference);
        let options = q::CreateImageOptionsBuilder::new()
            .from_image(image)
            .tag(tag)
            .build();
        let credentials = auth.map(|a| bollard::auth::DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(a.server.clone()),
            ..Default::default()
        });
        let mut stream = docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(status) = info.status {
                        output(&format!(
                            "{}{}",
                            info.id.map(|i| format!("{i}: ")).unwrap_or_default(),
                            status
                        ));
                    }
                }
                Err(BollardError::DockerResponseServerError { message, .. })
                | Err(BollardError::DockerStreamError { error: message }) => {
                    if is_disk_full(&message) {
                        return Err(RuntimeError::DiskFull {
                            action: format!("pull {reference}"),
                        });
                    }
                    return Err(RuntimeError::ImageUnavailable {
                        reference: reference.to_owned(),
                        reason: message,
                    });
                }
                Err(e) => return Err(self.classify(e, &format!("pull {reference}"))),
            }
        }
        self.inspect_image(reference)
            .await?
            .ok_or_else(|| RuntimeError::ImageUnavailable {
                reference: reference.to_owned(),
                reason: "the pull finished but the image is not there".into(),
            })
    }

    async fn load_image(&self, archive: &Path) -> Result<Vec<String>> {
        let docker = self.client().await?;
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| RuntimeError::Io {
                action: format!("read the image archive {}", archive.display()),
                message: e.to_string(),
            })?;
        let stream = tokio_util::io::ReaderStream::new(file);
        let options = q::ImportImageOptionsBuilder::new().quiet(true).build();
        let mut results = docker.import_image_stream(options, stream, None);
        let mut loaded = Vec::new();
        while let Some(item) = results.next().await {
            let info =
                item.map_err(|e| self.classify(e, &format!("load {}", archive.display())))?;
            for line in info.stream.iter().flat_map(|s| s.lines()) {
                for prefix in ["Loaded image: ", "Loaded image ID: "] {
                    if let Some(reference) = line.trim().strip_prefix(prefix) {
                        loaded.push(reference.to_owned());
                    }
                }
            }
        }
        Ok(loaded)
    }

    async fn tag_image(&self, image: &str, repository: &str, tag: &str) -> Result<()> {
        let docker = self.client().await?;
        let options = q::TagImageOptionsBuilder::new()
            .repo(repository)
            .tag(tag)
            .build();
        docker
            .tag_image(image, Some(options))
            .await
            .map_err(|e| self.classify(e, &format!("tag {image} as {repository}:{tag}")))
    }

    async fn remove_image(&self, reference: &str) -> Result<()> {
        let docker = self.client().await?;
        let options = q::RemoveImageOptionsBuilder::new().force(false).build();
        match docker.remove_image(reference, Some(options), None).await {
            Ok(_)
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.classify(e, &format!("remove image {reference}"))),
        }
    }

    async fn list_images(&self, label_filters: &[(&str, &str)]) -> Result<Vec<ImageInfo>> {
        let docker = self.client().await?;
        let options = q::ListImagesOptionsBuilder::new()
            .filters(&filters(label_filters))
            .build();
        let images = docker
            .list_images(Some(options))
            .await
            .map_err(|e| self.classify(e, "list images"))?;
        Ok(images
            .into_iter()
            .map(|i| ImageInfo {
                id: i.id,
                tags: i.repo_tags,
                digests: i.repo_digests,
                user: String::new(),
                size: u64::try_from(i.size).unwrap_or(0),
                labels: i.labels.into_iter().collect(),
            })
            .collect())
    }

    async fn images_matching(&self, reference: &str) -> Result<Vec<ImageInfo>> {
        let docker = self.client().await?;
        let filters = HashMap::from([("reference".to_owned(), vec![reference.to_owned()])]);
        let options = q::ListImagesOptionsBuilder::new().filters(&filters).build();
        let images = docker
            .list_images(Some(options))
            .await
            .map_err(|e| self.classify(e, "list images"))?;
        Ok(images
            .into_iter()
            .map(|i| ImageInfo {
                id: i.id,
                tags: i.repo_tags,
                digests: i.repo_digests,
                user: String::new(),
                size: u64::try_from(i.size).unwrap_or(0),
                labels: i.labels.into_iter().collect(),
            })
            .collect())
    }

    async fn list_volumes(&self, label_filters: &[(&str, &str)]) -> Result<Vec<String>> {
        let docker = self.client().await?;
        let options = q::ListVolumesOptionsBuilder::new()
            .filters(&filters(label_filters))
            .build();
        let response = docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| self.classify(e, "list volumes"))?;
        Ok(response
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    async fn list_networks(&self, label_filters: &[(&str, &str)]) -> Result<Vec<String>> {
        let docker = self.client().await?;
        let options = q::ListNetworksOptionsBuilder::new()
            .filters(&filters(label_filters))
            .build();
        let networks = docker
            .list_networks(Some(options))
            .await
            .map_err(|e| self.classify(e, "list networks"))?;
        Ok(networks.into_iter().filter_map(|n| n.name).collect())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let docker = self.client().await?;
        let options = q::CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        match docker
            .create_container(Some(options), container_body(spec))
            .await
        {
            Ok(response) => Ok(response.id),
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if message.contains("image") => Err(RuntimeError::ImageUnavailable {
                reference: spec.image.clone(),
                reason: message,
            }),
            Err(e) => Err(self.classify(e, &format!("create container {}", spec.name))),
        }
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let docker = self.client().await?;
        match docker
            .start_container(id, None::<q::StartContainerOptions>)
            .await
        {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.classify(e, &format!("start container {id}"))),
        }
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let docker = self.client().await?;
        let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = q::StopContainerOptionsBuilder::new().t(seconds).build();
        match docker.stop_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            })
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.classify(e, &format!("stop container {id}"))),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let docker = self.client().await?;
        let options = q::RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(false)
            .build();
        match docker.remove_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // Already being removed by someone else.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(self.classify(e, &format!("remove container {id}"))),
        }
    }

    async fn restart_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let docker = self.client().await?;
        let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = q::RestartContainerOptionsBuilder::new().t(seconds).build();
        docker
            .restart_container(id, Some(options))
            .await
            .map_err(|e| self.classify(e, &format!("restart container {id}")))
    }

    async fn pause_container(&self, id: &str) -> Result<()> {
        let docker = self.client().await?;
        docker
            .pause_container(id)
            .await
            .map_err(|e| self.classify(e, &format!("pause container {id}")))
    }

    async fn unpause_container(&self, id: &str) -> Result<()> {
        let docker = self.client().await?;
        docker
            .unpause_container(id)
            .await
            .map_err(|e| self.classify(e, &format!("unpause container {id}")))
    }

    async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInfo>> {
        let docker = self.client().await?;
        let inspect = match docker
            .inspect_container(id, None::<q::InspectContainerOptions>)
            .await
        {
            Ok(inspect) => inspect,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(self.classify(e, &format!("inspect container {id}"))),
        };
        let state = inspect.state.unwrap_or_default();
        let addresses = inspect
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, endpoint)| {
                let ip = endpoint.ip_address.filter(|ip| !ip.is_empty())?;
                Some((name, ip.parse().ok()?))
            })
            .collect::<BTreeMap<_, _>>();
        Ok(Some(ContainerInfo {
            id: inspect.id.unwrap_or_default(),
            name: inspect
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            image_id: inspect.image.unwrap_or_default(),
            labels: from_hash(inspect.config.and_then(|c| c.labels)),
            state: state
                .status
                .map(|s| state_from(s.as_ref()))
                .unwrap_or(ContainerState::Unknown),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            restart_count: inspect.restart_count.unwrap_or(0),
            pid: state.pid.filter(|p| *p > 0),
            started_at: state.started_at.filter(|s| !s.starts_with("0001-")),
            addresses,
        }))
    }

    async fn list_containers(
        &self,
        label_filters: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>> {
        let docker = self.client().await?;
        let options = q::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters(label_filters))
            .build();
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.classify(e, "list containers"))?;
        Ok(containers
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                labels: from_hash(c.labels),
                state: c
                    .state
                    .map(|s| state_from(s.as_ref()))
                    .unwrap_or(ContainerState::Unknown),
            })
            .collect())
    }

    async fn wait_container(&self, id: &str) -> Result<i64> {
        let docker = self.client().await?;
        let mut stream = docker.wait_container(id, None::<q::WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(self.classify(e, &format!("wait for container {id}"))),
            None => Err(RuntimeError::Io {
                action: format!("wait for container {id}"),
                message: "Docker closed the stream".into(),
            }),
        }
    }

    fn container_events(
        &self,
        label_filters: &[(&str, &str)],
    ) -> BoxStream<'static, Result<ContainerEvent>> {
        let this = self.clone();
        let mut filters = filters(label_filters);
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            vec!["start".into(), "die".into(), "oom".into()],
        );
        futures_util::stream::once(async move {
            let docker = this.client().await?.clone();
            let options = q::EventsOptionsBuilder::new().filters(&filters).build();
            Ok::<_, RuntimeError>(
                docker
                    .events(Some(options))
                    .map_err(move |e| this.classify(e, "follow Docker's events"))
                    .try_filter_map(|message| async move { Ok(container_event(message)) }),
            )
        })
        .try_flatten()
        .boxed()
    }

    fn logs(&self, id: &str, query: &LogQuery) -> BoxStream<'static, Result<LogChunk>> {
        let this = self.clone();
        let id = id.to_owned();
        let query = query.clone();
        futures_util::stream::once(async move {
            let docker = this.client().await?.clone();
            let mut options = q::LogsOptionsBuilder::new()
                .stdout(true)
                .stderr(true)
                .follow(query.follow)
                .timestamps(query.timestamps)
                .tail(
                    &query
                        .tail
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "all".into()),
                );
            if let Some(since) = query.since {
                options = options.since(i32::try_from(since).unwrap_or(0));
            }
            let action = format!("read the logs of {id}");
            Ok::<_, RuntimeError>(
                docker
                    .logs(&id, Some(options.build()))
                    .map_err(move |e| this.classify(e, &action))
                    .try_filter_map(|o| async move { Ok(log_chunk(o)) }),
            )
        })
        .try_flatten()
        .boxed()
    }

    async fn exec_with(
        &self,
        id: &str,
        command: &[String],
        options: &ExecOptions,
    ) -> Result<ExecSession> {
        let docker = self.client().await?;
        let config = bollard::exec::CreateExecOptions {
            cmd: Some(command.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(options.stdin),
            tty: Some(options.tty),
            env: (!options.env.is_empty()).then(|| options.env.clone()),
            user: options.user.clone(),
            ..Default::default()
        };
        let created = docker
            .create_exec(id, config)
            .await
            .map_err(|e| self.classify(e, &format!("run a command in {id}")))?;
        if options.tty
            && let Some(socket) = self.inner.endpoint.strip_prefix("unix://")
        {
            // A terminal's output is one raw stream, and bollard's decoder may take a chunk
            // that starts with byte 0, 1 or 2 for a multiplexing header (and then wait for
            // gigabytes that never come): start it on a connection of our own and pass the
            // bytes as they come.
            let version = docker.client_version();
            let (output, input) = start_exec_raw(
                socket,
                &format!("{}.{}", version.major_version, version.minor_version),
                &created.id,
            )
            .await
            .map_err(|message| RuntimeError::Io {
                action: format!("start a command with a terminal in {id}"),
                message,
            })?;
            return Ok(ExecSession {
                id: created.id,
                output,
                input: options.stdin.then_some(input),
            });
        }
        let started = docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| self.classify(e, &format!("run a command in {id}")))?;
        let (output, input) = match started {
            bollard::exec::StartExecResults::Attached { output, input } => {
                let this = self.clone();
                let output = output
                    .map_err(move |e| this.classify(e, "read command output"))
                    .try_filter_map(|o| async move { Ok(log_chunk(o)) })
                    .boxed();
                (output, options.stdin.then_some(input))
            }
            bollard::exec::StartExecResults::Detached => {
                (futures_util::stream::empty().boxed(), None)
            }
        };
        Ok(ExecSession {
            id: created.id,
            output,
            input,
        })
    }

    async fn read_image_file(
        &self,
        image: &str,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>> {
        let docker = self.client().await?;
        // A container that is created and never started: its file system is the image's.
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec!["/berth-never-runs".to_owned()]),
            labels: Some(HashMap::from([(
                "berth.managed".to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        };
        let created = docker
            .create_container(None::<q::CreateContainerOptions>, body)
            .await
            .map_err(|e| self.classify(e, &format!("read {path} from image {image}")))?;
        let read = async {
            let options = q::DownloadFromContainerOptionsBuilder::new()
                .path(path)
                .build();
            let mut stream = docker.download_from_container(&created.id, Some(options));
            let mut archive = Vec::new();
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        archive.extend_from_slice(&bytes);
                        if archive.len() > limit + 64 * 1024 {
                            return Err(RuntimeError::Io {
                                action: format!("read {path} from image {image}"),
                                message: format!("it is larger than {limit} bytes"),
                            });
                        }
                    }
                    Err(BollardError::DockerResponseServerError {
                        status_code: 404, ..
                    }) => return Ok(None),
                    Err(e) => {
                        return Err(self.classify(e, &format!("read {path} from image {image}")));
                    }
                }
            }
            let mut entries = tar::Archive::new(archive.as_slice());
            let io = |e: std::io::Error| RuntimeError::Io {
                action: format!("read {path} from image {image}"),
                message: e.to_string(),
            };
            for entry in entries.entries().map_err(io)? {
                let mut entry = entry.map_err(io)?;
                if entry.header().entry_type().is_file() {
                    let mut data = Vec::new();
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(&mut entry, limit as u64),
                        &mut data,
                    )
                    .map_err(io)?;
                    return Ok(Some(data));
                }
            }
            Ok(None)
        }
        .await;
        let _ = docker
            .remove_container(
                &created.id,
                // With the anonymous volumes an image's VOLUME lines made.
                Some(
                    q::RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await;
        read
    }

    async fn exec_pid(&self, exec_id: &str) -> Result<Option<i64>> {
        let docker = self.client().await?;
        let inspect = docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| self.classify(e, "inspect a command"))?;
        Ok(inspect
            .pid
            .filter(|p| *p > 0 && inspect.running.unwrap_or(false)))
    }

    async fn resize_exec(&self, exec_id: &str, rows: u16, cols: u16) -> Result<()> {
        let docker = self.client().await?;
        docker
            .resize_exec(
                exec_id,
                bollard::exec::ResizeExecOptions {
                    height: rows,
                    width: cols,
                },
            )
            .await
            .map_err(|e| self.classify(e, "resize a command's terminal"))
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        let docker = self.client().await?;
        let inspect = docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| self.classify(e, "read a command's exit code"))?;
        if inspect.running.unwrap_or(false) {
            return Ok(None);
        }
        Ok(inspect.exit_code)
    }
}

/// Splits `repo:tag` (or `repo@digest`) for the pull API; the tag defaults to `latest`.
type RawOutput = BoxStream<'static, Result<LogChunk>>;
type RawInput = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// Starts an exec created with a terminal and hijacks the connection: the command's
/// terminal output as it comes, and its input.
async fn start_exec_raw(
    socket: &str,
    api_version: &str,
    exec_id: &str,
) -> std::result::Result<(RawOutput, RawInput), String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {socket}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/v{api_version}/exec/{exec_id}/start"))
        .header(http::header::HOST, "docker")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "tcp")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"Detach":false,"Tty":true}"#,
        )))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "Docker answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| e.to_string())?;
    let (read, write) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
    let output = tokio_util::io::ReaderStream::new(read)
        .map(|chunk| {
            chunk
                .map(|data| LogChunk {
                    stream: LogStream::Stdout,
                    data,
                })
                .map_err(|e| RuntimeError::Io {
                    action: "read a command's terminal".into(),
                    message: e.to_string(),
                })
        })
        .boxed();
    Ok((output, Box::pin(write)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Builder {
    BuildKit,
    Classic,
}

/// An engine that cannot run a BuildKit build says so in one of these ways.
fn buildkit_missing(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("buildkit not supported")
        || lower.contains("buildkit is not enabled")
        || lower.contains("unsupported builder version")
        || lower.contains("session is not supported")
}

impl DockerRuntime {
    async fn build_with(
        &self,
        request: &BuildRequest,
        output: OutputSink<'_>,
        builder: Builder,
    ) -> Result<ImageInfo> {
        let docker = self.client().await?;
        let file = tokio::fs::File::open(&request.context_tar)
            .await
            .map_err(|e| RuntimeError::Io {
                action: format!("read the build context {}", request.context_tar.display()),
                message: e.to_string(),
            })?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
        let mut options = q::BuildImageOptionsBuilder::new()
            .dockerfile(&request.dockerfile)
            .t(&request.tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&to_hash(&request.args))
            .labels(&to_hash(&request.labels));
        if let Some(target) = &request.target {
            options = options.target(target);
        }
        if builder == Builder::BuildKit {
            // The session carries registry credentials and the build's progress; its id only
            // has to be unique among this engine's builds.
            static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let session = format!(
                "berth-{}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
                BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            options = options
                .version(q::BuilderVersion::BuilderBuildKit)
                .session(&session);
        }
        let mut stream = docker.build_image(options.build(), None, Some(body));
        let mut tail = LogTail::default();
        let mut progress = BuildKitProgress::default();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    for line in info
                        .stream
                        .iter()
                        .chain(info.status.iter())
                        .flat_map(|s| s.lines())
                    {
                        let line = line.trim_end();
                        if !line.is_empty() {
                            output(line);
                            tail.push(line);
                        }
                    }
                    if let Some(bollard::models::BuildInfoAux::BuildKit(status)) = &info.aux {
                        for line in progress.lines(status) {
                            output(&line);
                            tail.push(&line);
                        }
                    }
                }
                Err(BollardError::DockerStreamError { error }) if is_disk_full(&error) => {
                    return Err(RuntimeError::DiskFull {
                        action: format!("build {}", request.tag),
                    });
                }
                Err(BollardError::DockerStreamError { error })
                | Err(BollardError::DockerResponseServerError { message: error, .. }) => {
                    // A failing step's last line often has no newline yet.
                    for line in progress.rest() {
                        output(&line);
                        tail.push(&line);
                    }
                    return Err(RuntimeError::BuildFailed {
                        tag: request.tag.clone(),
                        message: error,
                        log_tail: tail.lines,
                    });
                }
                Err(e) => return Err(self.classify(e, &format!("build {}", request.tag))),
            }
        }
        for line in progress.rest() {
            output(&line);
            tail.push(&line);
        }
        self.inspect_image(&request.tag)
            .await?
            .ok_or_else(|| RuntimeError::BuildFailed {
                tag: request.tag.clone(),
                message: "Docker finished without producing the image".into(),
                log_tail: tail.lines,
            })
    }
}

/// The last lines of a build's output, for its error report.
#[derive(Default)]
struct LogTail {
    lines: Vec<String>,
}

impl LogTail {
    fn push(&mut self, line: &str) {
        self.lines.push(line.to_owned());
        if self.lines.len() > BUILD_TAIL_LINES {
            self.lines.remove(0);
        }
    }
}

/// Turns BuildKit's status updates into plain lines: each step once when it starts (and
/// when it fails), each log line of a step's commands as it comes.
#[derive(Default)]
struct BuildKitProgress {
    /// Step digests already announced, with their number.
    steps: HashMap<String, usize>,
    /// Partial log lines per step, until their newline arrives.
    partial: HashMap<String, String>,
    /// Steps whose error was shown.
    failed: std::collections::HashSet<String>,
}

impl BuildKitProgress {
    /// The log lines still waiting for their newline, at the end of the build.
    fn rest(&mut self) -> Vec<String> {
        let mut rest: Vec<(usize, String)> = self
            .partial
            .drain()
            .filter(|(_, text)| !text.trim().is_empty())
            .map(|(vertex, text)| {
                let number = self.steps.get(&vertex).copied().unwrap_or(0);
                (number, format!("#{number} {}", text.trim_end()))
            })
            .collect();
        rest.sort();
        rest.into_iter().map(|(_, line)| line).collect()
    }

    fn lines(&mut self, status: &bollard::moby::buildkit::v1::StatusResponse) -> Vec<String> {
        let mut lines = Vec::new();
        for vertex in &status.vertexes {
            if !self.steps.contains_key(&vertex.digest)
                && (vertex.started.is_some() || vertex.cached)
            {
                let number = self.steps.len() + 1;
                self.steps.insert(vertex.digest.clone(), number);
                lines.push(format!(
                    "#{number} {}{}",
                    vertex.name,
                    if vertex.cached { " (cached)" } else { "" }
                ));
            }
            if !vertex.error.is_empty() && self.failed.insert(vertex.digest.clone()) {
                let number = self.steps.get(&vertex.digest).copied().unwrap_or(0);
                lines.push(format!("#{number} error: {}", vertex.error));
            }
        }
        for log in &status.logs {
            let number = self.steps.get(&log.vertex).copied().unwrap_or(0);
            let buffer = self.partial.entry(log.vertex.clone()).or_default();
            buffer.push_str(&String::from_utf8_lossy(&log.msg));
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                let line = line.trim_end();
                if !line.is_empty() {
                    lines.push(format!("#{number} {line}"));
                }
            }
        }
        lines
    }
}

fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((image, digest)) = reference.split_once('@') {
        return (image, digest);
    }
    let last_slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
    match reference[last_slash..].rfind(':') {
        Some(i) => (
            &reference[..last_slash + i],
            &reference[last_slash + i + 1..],
        ),
        None => (reference, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_image_and_tag() {
        assert_eq!(split_reference("postgres:16"), ("postgres", "16"));
        assert_eq!(
            split_reference("localhost:5000/app"),
            ("localhost:5000/app", "latest")
        );
        assert_eq!(
            split_reference("ghcr.io/org/app:1.2"),
            ("ghcr.io/org/app", "1.2")
        );
        assert_eq!(split_reference("app@sha256:abc"), ("app", "sha256:abc"));
    }

    #[test]
    fn server_errors_are_classified() {
        assert!(matches!(
            classify_response(409, "in use".into(), "x".into()),
            RuntimeError::Conflict { .. }
        ));
        assert!(matches!(
            classify_response(
                500,
                "write /var/lib/docker/x: no space left on device".into(),
                "x".into()
            ),
            RuntimeError::DiskFull { .. }
        ));
    }
}
