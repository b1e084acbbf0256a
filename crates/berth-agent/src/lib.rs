//! berth's agent: the long-lived process that owns an app's containers on one server.
//!
//! [`run`] is the composition root: it takes the data directory's lock, opens the state
//! file and the secrets key, binds the proxy's and the API's listeners, reconciles Docker
//! with the state file, and serves until asked to stop.

use berth_core::{error, locks, progress, secrets};
use berth_engine::{edge, engine, routing, secret_files, status, subnets};

mod api;
mod api_tcp;
mod console;
mod status_page;
mod succession;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod unit_tests;

pub use berth_engine::Engine;
pub use berth_engine::subnets::Ipv4Net;
pub use berth_proxy::ProxyConfig;
pub use error::{ErrorKind, OpError};

use berth_api::{AgentInfo, DockerStatus};
use berth_proxy::{AccessLog, Proxy, Scheme};
use berth_runtime::DockerRuntime;
use berth_state::Store;
use berth_tls::{Acme, AcmeConfig, CertStore};
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where an API listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    /// Plain HTTP: loopback only.
    Tcp(SocketAddr),
    /// HTTPS with the agent's own certificate, pinned by its fingerprint.
    Tls(SocketAddr),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "`unix:` needs a socket path, such as unix:/var/lib/berth/berth.sock".into(),
                );
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("https://") {
            return addr
                .trim_end_matches('/')
                .parse()
                .map(ListenAddr::Tls)
                .map_err(|_| {
                    format!("`{text}` is not https://HOST:PORT (such as https://0.0.0.0:7070)")
                });
        }
        let addr: SocketAddr = text.trim_start_matches("http://").parse().map_err(|_| {
            format!(
                "`{text}` is neither unix:PATH, HOST:PORT (such as 127.0.0.1:7070) nor https://HOST:PORT"
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "`{text}` would send the API token, secret values and keys over the network in clear; \
                 use https://{addr} (TLS with the agent's own certificate, whose fingerprint it prints \
                 for the CLI to pin), or ssh://"
            ));
        }
        Ok(ListenAddr::Tcp(addr))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Tls(addr) => write!(f, "https://{addr}"),
        }
    }
}

/// Where the console listens.
#[derive(Debug, Clone)]
pub struct DashboardListen {
    pub addr: SocketAddr,
    /// A domain the proxy also serves the console on (with a certificate, like an app's).
    pub domain: Option<String>,
    /// Login attempts allowed per client address and minute.
    pub login_rate_per_minute: u32,
    /// Failed logins in a row that lock an account, and for how long.
    pub lockout_after: u32,
    pub lockout_for: Duration,
    /// New passwords need upper and lower case, a digit and a symbol.
    pub password_classes: bool,
    /// Whether the operator asked for this address: if it is taken, the agent refuses to
    /// start; the default address, taken, only costs the console (with a warning).
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    /// API listeners; the default is `unix:DATA_DIR/berth.sock`.
    pub api: Vec<ListenAddr>,
    /// A group whose members may use the unix sockets (mode 0660) as well as their owner:
    /// `berth server bootstrap` gives the deploy user `/run/berth.sock` this way.
    pub api_group: Option<String>,
    /// Where the proxy serves HTTP; `None` disables it.
    pub http: Option<SocketAddr>,
    /// Where the proxy serves HTTPS; `None` disables it.
    pub https: Option<SocketAddr>,
    /// Certificates for routes with `tls = "auto"` (only with an HTTPS listener).
    pub acme: Option<AcmeConfig>,
    /// A plain HTTP listener serving Prometheus metrics at `/metrics` and the health report at
    /// `/health`.
    pub metrics: Option<SocketAddr>,
    /// The console (web dashboard); `None` disables it.
    pub dashboard: Option<DashboardListen>,
    /// The JSON access log (rotated at 100 MB, 5 kept); `None` disables it.
    pub access_log: Option<PathBuf>,
    /// Listener limits.
    pub proxy: ProxyConfig,
    /// Event loops serving each proxy listener (one per core is best).
    pub proxy_threads: usize,
    /// How long open requests may take to finish when the agent stops.
    pub shutdown_grace: Duration,
    /// The most build contexts may take in `DATA_DIR/uploads` at once, in bytes.
    pub upload_quota: u64,
    /// The range each app's network gets a /24 of.
    pub app_subnets: subnets::Ipv4Net,
}

impl AgentConfig {
    pub fn socket_path(data_dir: &Path) -> PathBuf {
        data_dir.join("berth.sock")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot use the data directory {path}: {message}")]
    DataDir { path: PathBuf, message: String },
    #[error(
        "another agent (pid {pid}) is already running with the data directory {path}; stop it first, or pick another --data-dir"
    )]
    AlreadyRunning { path: PathBuf, pid: String },
    #[error(transparent)]
    State(#[from] berth_state::StateError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretError),
    #[error(transparent)]
    Tls(#[from] berth_tls::TlsError),
    #[error("cannot set up TLS: {0}")]
    TlsConfig(String),
    #[error("cannot take over from the running agent: {0}")]
    Handover(String),
    #[error(
        "--api-group {group}: {message}; create it first (`groupadd --system {group}`) or leave the option out"
    )]
    ApiGroup { group: String, message: String },
    #[error("cannot listen on {addr}: {message}; {hint}")]
    Listen {
        addr: String,
        message: String,
        hint: String,
    },
}

/// The id of a group named in `/etc/group` (the agent runs as root on a server whose groups
/// are local; no NSS lookup is needed for the one group the bootstrap creates).
fn group_id(name: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group: {e}"))?;
    group_id_in(&text, name).ok_or_else(|| "no such group in /etc/group".to_owned())
}

fn group_id_in(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

/// Owner only, or owner and `group` (0660) when the operator named one.
fn socket_access(path: &Path, group: Option<u32>) -> std::io::Result<()> {
    match group {
        None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)),
        Some(gid) => {
            rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        }
    }
}

/// How long the proxy holds new connections at start while the routes are rebuilt.
const ROUTES_WAIT: Duration = Duration::from_secs(30);

/// The file next to the state where a running agent says where it listens.
pub const AGENT_FILE: &str = "agent.json";

fn data_dir_error(path: &Path) -> impl Fn(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::DataDir {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn listen_error(addr: &str, error: std::io::Error) -> AgentError {
    let hint = match error.kind() {
        // The proxy found who holds it and said so.
        std::io::ErrorKind::AddrInUse if error.to_string().contains("already served by") => {
            "stop it, or choose another address"
        }
        std::io::ErrorKind::AddrInUse => {
            "another program (a web server such as nginx?) already uses it; stop it or choose another address"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need root or CAP_NET_BIND_SERVICE; run the agent as root or choose a port above 1024"
        }
        _ => "check the address",
    };
    AgentError::Listen {
        addr: addr.to_owned(),
        message: error.to_string(),
        hint: hint.to_owned(),
    }
}

/// Runs the agent until `shutdown` resolves, or `berth agent stop`, or until a successor
/// started by `berth agent upgrade` serves in its place.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // Started by a running agent to replace it: its sockets first, then its data directory.
    let predecessor = match std::env::var_os(succession::HANDOVER_ENV) {
        Some(path) => Some(
            succession::Predecessor::reach(PathBuf::from(path))
                .await
                .map_err(|e| AgentError::Handover(e.to_string()))?,
        ),
        None => None,
    };
    let result = serve(config, shutdown, predecessor.as_ref()).await;
    if let (Err(error), Some(predecessor)) = (&result, &predecessor) {
        predecessor.fail(error.to_string()).await;
    }
    result
}

async fn serve(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
    predecessor: Option<&succession::Predecessor>,
) -> Result<(), AgentError> {
    let data_dir = &config.data_dir;
    // Everything the agent writes (state, logs, uploads, scratch files) is its user's alone;
    // files handed to containers get their modes set explicitly.
    berth_fs::restrict_umask();
    raise_open_file_limit();
    match berth_fs::private_dir(data_dir) {
        Ok(berth_fs::PrivateDir::Tightened(mode)) => tracing::warn!(
            data_dir = %data_dir.display(),
            old_mode = format!("{mode:o}"),
            "the data directory was open to other users (it holds the state, keys and logs); it is now 0700"
        ),
        Ok(_) => {}
        Err(error) => {
            return Err(AgentError::DataDir {
                path: data_dir.clone(),
                message: error.to_string(),
            });
        }
    }
    let uploads = data_dir.join("uploads");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&uploads)
        .map_err(data_dir_error(data_dir))?;

    // One agent per data directory: a second one would fight over the same containers.
    let lock_path = data_dir.join("agent.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(data_dir_error(data_dir))?;
    // A predecessor released the lock before it said so; a moment's grace all the same.
    let lock_wait =
        Instant::now() + Duration::from_secs(if predecessor.is_some() { 10 } else { 0 });
    let mut locked = lock.try_lock().is_ok();
    while !locked && Instant::now() < lock_wait {
        tokio::time::sleep(Duration::from_millis(50)).await;
        locked = lock.try_lock().is_ok();
    }
    if !locked {
        let pid = std::fs::read_to_string(data_dir.join(AGENT_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("pid").map(|p| p.to_string()))
            .unwrap_or_else(|| "unknown".into());
        return Err(AgentError::AlreadyRunning {
            path: data_dir.clone(),
            pid,
        });
    }
    // Uploads of a previous run are never needed again.
    if let Ok(entries) = std::fs::read_dir(&uploads) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }

    let store = Arc::new(Store::open(&data_dir.join("state.db"))?);
    // Backup runs the previous agent was in the middle of ended with it; their scratch files
    // (restores staged, checks in progress) are never needed again.
    match store.abandon_running_backup_runs() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            runs = n,
            "backup runs were interrupted when the agent stopped; recorded as failed"
        ),
        Err(error) => tracing::error!(%error, "cannot record interrupted backup runs"),
    }
    let _ = std::fs::remove_dir_all(data_dir.join("tmp"));
    // And the staging directories such restores made inside apps' data.
    for removed in berth_backup_jobs::Journal::new(data_dir).clean_up(&store) {
        tracing::warn!(%removed, "an interrupted restore's staging directory was removed");
    }
    let agent_id = agent_id(data_dir)?;
    let secrets = secrets::SecretBox::open(&data_dir.join("secrets.key"))?;
    let runtime = Arc::new(DockerRuntime::from_env());
    let succession = Arc::new(succession::Succession::new(
        data_dir,
        lock,
        lock_path,
        config.shutdown_grace,
    ));

    let proxy = Proxy::new(config.proxy.clone());
    // The listeners are bound at once (the ports are ours), but accept nothing until the
    // routes are rebuilt from the state file and Docker: a client of a restarted agent waits
    // a moment in the listen queue instead of getting "no app is routed".
    proxy.set_ready(false);
    if let Some(path) = &config.access_log {
        match AccessLog::open(path, 100 << 20, 5) {
            Ok(log) => proxy.set_access_log(log),
            Err(error) => {
                return Err(AgentError::DataDir {
                    path: path.clone(),
                    message: format!("cannot open the access log: {error}"),
                });
            }
        }
    }
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };

    // The proxy: one event loop per thread on each listener, like nginx's workers.
    let threads = config.proxy_threads.max(1);
    let cert_store = CertStore::new();
    proxy.set_tls_hooks(Arc::new(edge::EdgeHooks(cert_store.clone())));
    let mut workers = Vec::new();
    let https_addr = match config.https {
        Some(addr) => {
            let tls = berth_tls::server_config(cert_store.clone())
                .map_err(|e| AgentError::TlsConfig(e.to_string()))?;
            let https = serve_proxy(
                &proxy,
                predecessor,
                ("https", addr),
                Scheme::Https(tls),
                threads,
                stop.clone(),
                config.shutdown_grace,
            )?;
            succession.add_listener(proxy_listener("https", addr, &https));
            proxy.set_https_port(https.addr.port());
            let bound = https.addr;
            workers.push(https);
            Some(bound)
        }
        None => None,
    };
    let http_addr = match config.http {
        Some(addr) => {
            let http = serve_proxy(
                &proxy,
                predecessor,
                ("http", addr),
                Scheme::Http,
                threads,
                stop.clone(),
                config.shutdown_grace,
            )?;
            succession.add_listener(proxy_listener("http", addr, &http));
            let bound = http.addr;
            proxy.set_http_port(bound.port());
            workers.push(http);
            Some(bound)
        }
        None => None,
    };
    let http_url = http_addr.map(|addr| {
        let host = if addr.ip().is_unspecified() {
            "localhost".to_owned()
        } else {
            addr.ip().to_string()
        };
        if addr.port() == 80 {
            format!("http://{host}")
        } else {
            format!("http://{host}:{}", addr.port())
        }
    });

    // Background work, named (`berth status --workers`) and awaited at shutdown.
    let background = Arc::new(berth_workers::Workers::new());
    // Certificates: a store the TLS listener asks by server name, filled from files and ACME.
    let mut tasks = tokio::task::JoinSet::new();
    let acme_channels = match (&config.acme, https_addr) {
        (Some(acme_config), Some(_)) => {
            let acme = Acme::new(
                acme_config.clone(),
                cert_store.clone(),
                &data_dir.join("tls"),
            )?;
            let (wanted, wanted_receiver) =
                tokio::sync::watch::channel(std::collections::BTreeSet::new());
            let (renew, renew_receiver) = tokio::sync::mpsc::channel(16);
            background.spawn("certificates (ACME)", |report, stop| {
                report.running("obtaining and renewing the routes' certificates");
                acme.run(wanted_receiver, renew_receiver, stop.stopped())
            });
            Some((wanted, renew))
        }
        _ => None,
    };
    let edge = Arc::new(edge::Edge::new(
        cert_store.clone(),
        https_addr.is_some(),
        acme_channels,
    ));

    let secrets = Arc::new(secrets);
    let backups = Arc::new(berth_backup_jobs::Backups::new(
        berth_backup_jobs::BackupDeps {
            runtime: runtime.clone(),
            store: store.clone(),
            secrets: secrets.clone(),
            data_dir: data_dir.clone(),
            agent_id: agent_id.clone(),
            workers: background.clone(),
            clock: Arc::new(berth_backup::runner::SystemClock),
        },
    ));
    let routing = Arc::new(routing::Routing::new(proxy.clone(), edge.clone(), http_url));
    let mut engine = Engine::new(
        runtime.clone(),
        store,
        routing,
        secrets,
        data_dir.clone(),
        agent_id,
        backups,
    );
    engine.set_app_subnets(config.app_subnets);
    let (secret_files_root, in_memory) = secret_files::choose_root(data_dir, engine.agent_id());
    if !in_memory {
        tracing::warn!(dir = %secret_files_root.display(), "no tmpfs (/run, $XDG_RUNTIME_DIR, /dev/shm) to keep secret files in memory: they are written to disk");
    }
    engine.set_secret_files_root(secret_files_root);
    engine.set_workers(background.clone());
    if predecessor.is_some() {
        // The predecessor still drains its connections for up to its grace period: old
        // containers they may reach are removed only after it.
        engine.set_stray_delay(config.shutdown_grace + Duration::from_secs(5));
    }
    let engine = Arc::new(engine);
    engine.set_self();
    proxy.set_status_pages(Arc::new(status_page::StatusPageSource::new(engine.clone())));

    // The console's listener first: its address goes into what the agent says of itself.
    let mut dashboard_listener = None;
    if let Some(listen) = &config.dashboard {
        match tcp_listener(
            predecessor,
            "dashboard",
            &listen.addr.to_string(),
            listen.addr,
        )
        .await
        {
            Ok(listener) => dashboard_listener = Some(listener),
            Err(error) if !listen.required => tracing::warn!(
                %error,
                "the console is off: its default address is taken (give it another with --dashboard ADDR)"
            ),
            Err(error) => return Err(error),
        }
    }
    let dashboard_addr = dashboard_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok());
    if let Some(addr) = dashboard_addr
        && !addr.ip().is_loopback()
    {
        tracing::warn!(
            %addr,
            "the console listens beyond this machine over plain HTTP: passwords and sessions cross the network unencrypted; keep it on 127.0.0.1 and reach it through an SSH tunnel"
        );
    }
    let console_domain = config
        .dashboard
        .as_ref()
        .and_then(|listen| listen.domain.clone())
        .filter(|_| dashboard_addr.is_some());
    if let (Some(domain), Some(addr)) = (&console_domain, dashboard_addr) {
        console::route_domain(&proxy, &edge, domain, addr, https_addr.is_some());
    }
    let console_url = dashboard_addr.map(|addr| match &console_domain {
        Some(domain) => console::domain_url(domain, http_addr, https_addr),
        None => format!("http://{addr}"),
    });
    let info = AgentInfo {
        dashboard: console_url.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        data_dir: data_dir.display().to_string(),
        pid: std::process::id(),
        http: http_addr.map(|a| a.to_string()),
        https: https_addr.map(|a| a.to_string()),
        docker: DockerStatus {
            endpoint: berth_runtime::ContainerRuntime::endpoint(runtime.as_ref()),
            version: None,
            error: None,
        },
    };

    let mut registry = prometheus_client::registry::Registry::default();
    proxy.metrics().register(&mut registry);
    edge.metrics.register(&mut registry);
    engine.backups().metrics().register(&mut registry);
    // The host's CPU, load, memory and the filesystems of berth's data and Docker's, sampled by a worker so a scrape only reads the last sample.
    let host_metrics = Arc::new(berth_monitor::HostMetrics::default());
    host_metrics.register(&mut registry);
    // The monitors: what they notice goes to the alerts worker through one queue.
    let (alerts, alert_signals) = berth_monitor::Alerts::new();
    let sampled = (
        host_metrics.clone(),
        alerts.clone(),
        engine.runtime().clone(),
        data_dir.to_owned(),
    );
    background.spawn("host metrics", |report, stop| async move {
        let (metrics, host_alerts, runtime, data_dir) = sampled;
        // Docker's data root as the engine names it (a daemon.json may move it), else its
        // default; asked here, off the start-up path a restart's handover waits on.
        let named_root = tokio::time::timeout(Duration::from_secs(3), runtime.info())
            .await
            .ok()
            .and_then(|info| info.ok())
            .and_then(|info| info.data_root);
        let docker_root = PathBuf::from(named_root.as_deref().unwrap_or("/var/lib/docker"));
        let mut watched = vec![("berth".to_owned(), data_dir)];
        if docker_root.is_dir() {
            watched.push(("docker".to_owned(), docker_root));
        }
        berth_monitor::host::sampler(metrics, watched, host_alerts, report, stop.stopped()).await
    });
    // Every probe and check, written to the state file every 15 s (`berth uptime`).
    let uptime = Arc::new(berth_monitor::uptime::Uptime::default());
    let flushed = (engine.store().clone(), uptime.clone());
    background.spawn("uptime history", |report, stop| {
        berth_monitor::uptime::flusher(flushed.0, flushed.1, report, stop.stopped())
    });
    let watcher = (engine.clone(), alerts.clone(), uptime.clone());
    background.spawn("health checks", |report, stop| {
        berth_monitor::replicas::watch(watcher.0, watcher.1, watcher.2, report, stop.stopped())
    });
    let follower = (engine.clone(), alerts.clone());
    background.spawn("container events", |report, stop| {
        berth_monitor::events::follow(follower.0, follower.1, report, stop.stopped())
    });
    // Each watched container's cgroup and network counters, every 15 s.
    let container_metrics = Arc::new(berth_monitor::ContainerMetrics::default());
    container_metrics.register(&mut registry);
    let sampler = (engine.clone(), container_metrics.clone());
    background.spawn("container metrics", |report, stop| {
        berth_monitor::containers::sampler(sampler.0, sampler.1, report, stop.stopped())
    });
    // Every container's output, kept by berth past the container (`berth logs --release`).
    let log_store = Arc::new(berth_logs::LogStore::new(
        data_dir.join("logs").join("apps"),
        berth_logs::Retention::default(),
    ));
    // ... and sent on to the log host of an app's `[logging] syslog`, as the release that
    // wrote a line says (the first lines of a release come before it is live).
    let forwarding = engine.clone();
    let targets: berth_logs::forward::Targets = Arc::new(move |app: &str, release| {
        let release = match release {
            Some(number) => forwarding.store().release(app, number).ok()??,
            None => forwarding.store().live_release(app).ok()??,
        };
        let forward = berth_core::release_manifest(&release).ok()?.log_forward?;
        let host = if forward.host.contains(':') {
            format!("[{}]", forward.host)
        } else {
            forward.host
        };
        Some(berth_logs::forward::SyslogTarget {
            transport: if forward.transport == "tcp" {
                berth_logs::forward::Transport::Tcp
            } else {
                berth_logs::forward::Transport::Udp
            },
            address: format!("{host}:{}", forward.port),
            facility: forward.facility,
        })
    });
    let collected = (
        engine.runtime().clone(),
        log_store.clone(),
        engine.agent_id().to_owned(),
        targets,
    );
    background.spawn("container logs", |report, stop| {
        berth_logs::collector::collect(
            collected.0,
            collected.1,
            collected.2,
            collected.3,
            berth_core::names::host_name(),
            report,
            stop.stopped(),
        )
    });
    // `[monitors.NAME]` of the live releases, checked from here.
    let monitor_board = Arc::new(berth_monitor::external::MonitorBoard::default());
    let external = (
        engine.clone(),
        alerts.clone(),
        monitor_board.clone(),
        uptime.clone(),
    );
    background.spawn("monitors", |report, stop| {
        berth_monitor::external::watch(
            external.0,
            external.1,
            external.2,
            external.3,
            report,
            stop.stopped(),
        )
    });
    let counted = log_store.clone();
    let log_lines: berth_monitor::errors::LogLineCounts =
        Arc::new(move |app: &str| counted.line_counts(app));
    let rated = (engine.clone(), proxy.clone(), log_lines, alerts.clone());
    background.spawn("error rates", |report, stop| {
        berth_monitor::errors::watch(rated.0, rated.1, rated.2, rated.3, report, stop.stopped())
    });
    let thresholds = (
        engine.clone(),
        host_metrics.clone(),
        container_metrics.clone(),
        alerts.clone(),
    );
    let recorded = (
        engine.clone(),
        host_metrics.clone(),
        container_metrics.clone(),
        proxy.clone(),
    );
    background.spawn("resource history", |report, stop| {
        berth_monitor::history::recorder(
            recorded.0,
            recorded.1,
            recorded.2,
            recorded.3,
            report,
            stop.stopped(),
        )
    });
    background.spawn("thresholds", |report, stop| {
        berth_monitor::thresholds::watch(
            thresholds.0,
            thresholds.1,
            thresholds.2,
            thresholds.3,
            report,
            stop.stopped(),
        )
    });
    let checker = (engine.clone(), alerts.clone());
    background.spawn("record checks", |report, stop| {
        berth_monitor::checks::watch(checker.0, checker.1, report, stop.stopped())
    });
    let deliverer = (engine.clone(), alerts.firing.clone());
    background.spawn("alerts", |report, stop| {
        berth_monitor::alerts::deliver(
            deliverer.0,
            alert_signals,
            deliverer.1,
            report,
            stop.stopped(),
        )
    });
    // What the monitors know, read from memory at each scrape.
    registry.register_collector(Box::new(berth_monitor::metrics::WatchCollector {
        health: engine.health_board().clone(),
        monitors: monitor_board.clone(),
        firing: alerts.firing.clone(),
    }));
    let metrics = Arc::new(api::Metrics {
        registry,
        edge: edge.clone(),
        host: host_metrics.clone(),
        containers: container_metrics.clone(),
        monitors: monitor_board.clone(),
    });

    // Certificate files renewed by other tools are picked up without a restart.
    let files_edge = edge.clone();
    background.spawn("certificate files", |report, stop| async move {
        const EVERY: Duration = Duration::from_secs(60);
        loop {
            report.idle(Some(berth_state::now_ms() + EVERY.as_millis() as i64), None);
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {
                    report.running("reading certificate files again");
                    files_edge.refresh_files();
                }
                () = stop.clone().stopped() => return,
            }
        }
    });
    let mut metrics_addr = None;
    if let Some(addr) = config.metrics {
        let listener = tcp_listener(predecessor, "metrics", &addr.to_string(), addr).await?;
        succession.add_listener(handover_listener("metrics", addr.to_string(), &listener));
        metrics_addr = listener.local_addr().ok();
        let router = api::metrics_router(metrics.clone(), engine.clone(), info.clone());
        let stop = stopped(stop.clone());
        tasks.spawn(async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(%error, "the metrics server stopped");
            }
        });
    }

    let api_group = match &config.api_group {
        Some(name) => Some(group_id(name).map_err(|message| AgentError::ApiGroup {
            group: name.clone(),
            message,
        })?),
        None => None,
    };
    let api_addrs = if config.api.is_empty() {
        vec![ListenAddr::Unix(AgentConfig::socket_path(data_dir))]
    } else {
        config.api.clone()
    };
    let mut sockets = Vec::new();
    let uploads_in_progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut api_fingerprint: Option<String> = None;
    // What the listeners are actually bound to (a TCP port 0 becomes a real port).
    let mut bound: Vec<String> = Vec::new();
    for addr in &api_addrs {
        match addr {
            ListenAddr::Unix(path) => {
                let listener = match predecessor.and_then(|p| p.take("api-unix", &addr.to_string()))
                {
                    // The same socket, at the same path: clients never see it missing.
                    Some(mut fds) if fds.len() == 1 => {
                        let listener = std::os::unix::net::UnixListener::from(fds.remove(0));
                        listener
                            .set_nonblocking(true)
                            .and_then(|()| tokio::net::UnixListener::from_std(listener))
                            .map_err(|e| listen_error(&addr.to_string(), e))?
                    }
                    _ => {
                        // We hold the data directory's lock, so a socket file here is stale.
                        let _ = std::fs::remove_file(path);
                        let listener = tokio::net::UnixListener::bind(path)
                            .map_err(|e| listen_error(&addr.to_string(), e))?;
                        // Owner only (or the operator's group): whoever can talk to the agent
                        // controls the server.
                        socket_access(path, api_group)
                            .map_err(|e| listen_error(&addr.to_string(), e))?;
                        listener
                    }
                };
                succession.add_listener(handover_listener("api-unix", addr.to_string(), &listener));
                sockets.push(path.clone());
                bound.push(addr.to_string());
                let state = api::ApiState {
                    engine: engine.clone(),
                    info: info.clone(),
                    uploads: uploads.clone(),
                    upload_quota: config.upload_quota,
                    uploads_in_progress: Arc::clone(&uploads_in_progress),
                    transport: "unix",
                    token: None,
                    metrics: metrics.clone(),
                    succession: succession.clone(),
                    logs: log_store.clone(),
                };
                let stop = stopped(stop.clone());
                tasks.spawn(async move {
                    if let Err(error) = axum::serve(listener, api::router(state))
                        .with_graceful_shutdown(stop)
                        .await
                    {
                        tracing::error!(%error, "the API server stopped");
                    }
                });
            }
            ListenAddr::Tcp(socket_addr) | ListenAddr::Tls(socket_addr) => {
                let token = api_token(data_dir)?;
                let tls = match addr {
                    ListenAddr::Tls(_) => {
                        let mut names = vec!["berth-agent".to_owned()];
                        if !socket_addr.ip().is_unspecified() {
                            names.push(socket_addr.ip().to_string());
                        }
                        let (config, fingerprint) =
                            berth_tls::api_server_config(&data_dir.join("api-tls"), &names)?;
                        api_fingerprint = Some(fingerprint);
                        Some(tokio_rustls::TlsAcceptor::from(config))
                    }
                    _ => None,
                };
                let listener =
                    tcp_listener(predecessor, "api-tcp", &addr.to_string(), *socket_addr).await?;
                succession.add_listener(handover_listener("api-tcp", addr.to_string(), &listener));
                if let Ok(local) = listener.local_addr() {
                    bound.push(match addr {
                        ListenAddr::Tls(_) => format!("https://{local}"),
                        _ => local.to_string(),
                    });
                }
                let state = api::ApiState {
                    engine: engine.clone(),
                    info: info.clone(),
                    uploads: uploads.clone(),
                    upload_quota: config.upload_quota,
                    uploads_in_progress: Arc::clone(&uploads_in_progress),
                    transport: if tls.is_some() { "tls" } else { "tcp" },
                    token: Some(Arc::new(token)),
                    metrics: metrics.clone(),
                    succession: succession.clone(),
                    logs: log_store.clone(),
                };
                let stop = stopped(stop.clone());
                tasks.spawn(api_tcp::serve(listener, api::router(state), tls, stop));
            }
        }
    }
    if dashboard_listener.is_none() {
        console::gate_without_console(&engine, &proxy);
    }
    if let Some(listener) = dashboard_listener {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        succession.add_listener(handover_listener("dashboard", addr.clone(), &listener));
        let api_state = api::ApiState {
            engine: engine.clone(),
            info: info.clone(),
            uploads: uploads.clone(),
            upload_quota: config.upload_quota,
            uploads_in_progress: Arc::clone(&uploads_in_progress),
            transport: api::CONSOLE,
            token: None,
            metrics: metrics.clone(),
            succession: succession.clone(),
            logs: log_store.clone(),
        };
        console::first_admin_link(&api_state, predecessor.is_some());
        let router = console::router(api_state, config.dashboard.clone(), &proxy);
        let stop = stopped(stop.clone());
        tasks.spawn(async move {
            if let Err(error) = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stop)
            .await
            {
                tracing::error!(%error, "the console stopped");
            }
        });
    }
    if let Some(fingerprint) = &api_fingerprint {
        tracing::info!(
            fingerprint = %fingerprint,
            "the API serves TLS with the agent's own certificate; clients pin it with BERTH_AGENT_FINGERPRINT={fingerprint}"
        );
    }

    let agent_file = serde_json::json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "api": bound,
        "http": http_addr.map(|a| a.to_string()),
        "https": https_addr.map(|a| a.to_string()),
        "metrics": metrics_addr.map(|a| a.to_string()),
        "dashboard": console_url.clone(),
        "api_fingerprint": api_fingerprint,
    });
    berth_fs::write_replacing(
        &data_dir.join(AGENT_FILE),
        agent_file.to_string().as_bytes(),
        0o600,
    )
    .map_err(|e| AgentError::DataDir {
        path: data_dir.clone(),
        message: e.to_string(),
    })?;
    succession.set_agent_file(agent_file.to_string());
    tracing::info!(
        data_dir = %data_dir.display(),
        api = %bound.join(" "),
        http = %http_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        https = %https_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        console = %console_url.clone().unwrap_or_else(|| "off".to_owned()),
        pid = std::process::id(),
        took_over = predecessor.is_some(),
        "agent started"
    );

    // Under systemd (Type=notify): ready once the proxy accepts.
    let notifier = proxy.clone();
    tasks.spawn(async move {
        notifier.wait_ready().await;
        if let Err(error) = berth_handover::notify_systemd("READY=1") {
            tracing::warn!(%error, "cannot tell systemd the agent is ready");
        }
    });

    if let Some(predecessor) = predecessor {
        // Taking over a running agent: its containers run and no operation was in progress,
        // so the routes come back from one reconciliation, and the predecessor keeps serving
        // until this agent accepts. If that fails, the predecessor carries on.
        let report = engine.reconcile_all().await.map_err(|error| {
            AgentError::Handover(format!("cannot rebuild the routes: {}", error.message))
        })?;
        tracing::info!(removed = ?report.removed, started = ?report.started, recreated = ?report.recreated, "reconciled with Docker");
        proxy.set_ready(true);
        if let Err(error) = predecessor.ready().await {
            tracing::warn!(error = %error.message, "the previous agent did not hear that this one serves");
        }
        spawn_scheduler(&engine);
    } else {
        spawn_reconciler(&mut tasks, &engine, &proxy, &stop);
    }

    let retired = tokio::select! {
        () = shutdown => false,
        () = succession.stop_requested() => false,
        () = succession.retired() => true,
    };
    if retired {
        tracing::info!(
            pid = std::process::id(),
            "a new agent serves in this one's place: stopping, finishing open requests"
        );
    } else {
        tracing::info!(
            pid = std::process::id(),
            "stopping: finishing open requests"
        );
        // Nobody takes over: WebSockets and event streams end now, properly.
        proxy.end_long_lived();
    }
    let _ = stop_sender.send(true);
    let left = background
        .shutdown(config.shutdown_grace + Duration::from_secs(1))
        .await;
    if !left.is_empty() {
        tracing::warn!(workers = ?left, "background work was still running at shutdown");
    }
    let proxies = tokio::task::spawn_blocking(move || {
        for worker in workers {
            worker.join();
        }
    });
    if tokio::time::timeout(config.shutdown_grace + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("some work was still running at shutdown");
    }
    if tokio::time::timeout(config.shutdown_grace + Duration::from_secs(1), proxies)
        .await
        .is_err()
    {
        tracing::warn!("the proxy was still serving at shutdown");
    }
    // After a hand-over the socket files and agent.json are the successor's.
    if !retired {
        for socket in sockets {
            let _ = std::fs::remove_file(socket);
        }
        let _ = std::fs::remove_file(data_dir.join(AGENT_FILE));
    }
    succession.release_lock();
    Ok(())
}

/// Reconciles in the background, retrying while Docker is unreachable; then runs the backup
/// schedule (never while containers are being put back in order).
fn spawn_reconciler(
    tasks: &mut tokio::task::JoinSet<()>,
    engine: &Arc<Engine>,
    proxy: &Arc<Proxy>,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    let reconciler = engine.clone();
    let routed = proxy.clone();
    let mut ready_stop = stop.clone();
    tasks.spawn(async move {
        // Waiting longer than this for Docker serves nobody: serve what can be served.
        tokio::select! {
            () = tokio::time::sleep(ROUTES_WAIT) => {
                if !routed.is_ready() {
                    tracing::warn!("routes are not rebuilt yet after {ROUTES_WAIT:?}; serving anyway");
                }
                routed.set_ready(true);
            }
            _ = ready_stop.wait_for(|s| *s) => {}
        }
    });
    let routed = proxy.clone();
    engine.workers().spawn("reconcile", |report, stop| async move {
        loop {
            report.running("putting Docker in line with the state");
            let reconciled = reconciler.reconcile_all().await;
            routed.set_ready(true);
            match reconciled {
                Ok(report_of_changes) => {
                    tracing::info!(
                        removed = ?report_of_changes.removed,
                        started = ?report_of_changes.started,
                        recreated = ?report_of_changes.recreated,
                        interrupted = ?report_of_changes.interrupted_releases,
                        "reconciled with Docker"
                    );
                    report.idle(None, Some("reconciled".into()));
                    // Backups never run while containers are being put back in order.
                    spawn_scheduler(&reconciler);
                    return;
                }
                Err(error) => {
                    tracing::error!(error = %error.message, "cannot reconcile with Docker yet; retrying in 5s");
                    report.retrying(error.message.clone(), Some(berth_state::now_ms() + 5_000));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
                () = stop.clone().stopped() => return,
            }
        }
    });
}

/// The backup schedule, as a worker.
fn spawn_scheduler(engine: &Arc<Engine>) {
    let backups = engine.backups().clone();
    let changes = engine.subscribe_release_changes();
    engine.workers().spawn("backup schedule", |report, stop| {
        berth_backup_jobs::scheduler(backups, changes, report, stop.stopped())
    });
}

/// Serves the proxy on `addr`: on the sockets a predecessor handed over, else on new ones.
fn serve_proxy(
    proxy: &Arc<Proxy>,
    predecessor: Option<&succession::Predecessor>,
    (kind, addr): (&'static str, SocketAddr),
    scheme: Scheme,
    threads: usize,
    stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) -> Result<berth_proxy::ProxyWorkers, AgentError> {
    let inherited = predecessor
        .and_then(|p| p.take(kind, &addr.to_string()))
        .and_then(berth_proxy::InheritedListener::from_fds);
    match inherited {
        Some(sockets) => proxy.serve_inherited(sockets, scheme, stop, grace),
        None => proxy.serve_threads(addr, scheme, threads, stop, grace),
    }
    .map_err(|e| listen_error(&addr.to_string(), e))
}

/// A TCP listener: the one a predecessor handed over for `kind` at `name`, else a new one.
async fn tcp_listener(
    predecessor: Option<&succession::Predecessor>,
    kind: &str,
    name: &str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, AgentError> {
    match predecessor.and_then(|p| p.take(kind, name)) {
        Some(mut fds) if fds.len() == 1 => {
            let listener = std::net::TcpListener::from(fds.remove(0));
            listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener))
        }
        _ => tokio::net::TcpListener::bind(addr).await,
    }
    .map_err(|e| listen_error(name, e))
}

/// The proxy's sockets for `addr`, as a successor would get them.
fn proxy_listener(
    kind: &'static str,
    addr: SocketAddr,
    workers: &berth_proxy::ProxyWorkers,
) -> succession::HandoverListener {
    succession::HandoverListener {
        kind,
        name: addr.to_string(),
        fds: workers
            .handover_fds()
            .iter()
            .filter_map(|fd| fd.try_clone_to_owned().ok())
            .collect(),
    }
}

/// A listener's socket (a duplicate), as a successor would get it.
fn handover_listener(
    kind: &'static str,
    name: String,
    listener: &impl std::os::fd::AsFd,
) -> succession::HandoverListener {
    succession::HandoverListener {
        kind,
        name,
        fds: listener.as_fd().try_clone_to_owned().into_iter().collect(),
    }
}

/// Raises the soft limit on open files to the hard one: every client connection, upstream
/// connection and container log stream is a file descriptor, and the usual soft limit (1024)
/// lets a few hundred idle clients starve the proxy.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(open_files = hard, "raised the open-file limit"),
            Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
        }
    }
}

/// A random identity for this data directory, labelled on everything the agent creates.
fn agent_id(data_dir: &Path) -> Result<String, AgentError> {
    let path = data_dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = hex::encode(rand::random::<[u8; 8]>());
            berth_fs::write_replacing(&path, id.as_bytes(), 0o600).map_err(|e| {
                AgentError::DataDir {
                    path: data_dir.to_owned(),
                    message: e.to_string(),
                }
            })?;
            Ok(id)
        }
    }
}

/// The bearer token TCP API clients need, created on first use (mode 0600). An existing one
/// must be private to the agent's user and hold 64 hex digits (or at least 32 characters of
/// the operator's own choosing).
fn api_token(data_dir: &Path) -> Result<String, AgentError> {
    let path = data_dir.join("api-token");
    let bad = |message: String| AgentError::DataDir {
        path: path.clone(),
        message,
    };
    match berth_fs::read_private(&path, 1024) {
        Ok(bytes) => {
            let token = String::from_utf8(bytes).map_err(|_| {
                bad("the API token is not text; remove it so berth makes a new one".into())
            })?;
            let token = token.trim();
            if token.len() < 32 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(
                    "the API token must be at least 32 characters without spaces; remove the file so berth makes a new one".into(),
                ));
            }
            Ok(token.to_owned())
        }
        Err(berth_fs::FsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let token = hex::encode(rand::random::<[u8; 32]>());
            berth_fs::write_private_new(&path, token.as_bytes()).map_err(|e| bad(e.to_string()))?;
            Ok(token)
        }
        Err(error) => Err(bad(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_found_by_exact_name() {
        let etc_group = "root:x:0:\nberth-old:x:998:\nberth:x:999:deploy\nbroken:x:nan:\n";
        assert_eq!(group_id_in(etc_group, "berth"), Some(999));
        assert_eq!(group_id_in(etc_group, "root"), Some(0));
        assert_eq!(group_id_in(etc_group, "bert"), None);
        assert_eq!(group_id_in(etc_group, "broken"), None);
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "unix:/tmp/b.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/tmp/b.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:7070".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:7070".parse().unwrap()))
        );
        assert!(
            "localhost"
                .parse::<ListenAddr>()
                .unwrap_err()
                .contains("unix:PATH")
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
    }
}
