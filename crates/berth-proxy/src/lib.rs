//! berth's edge: an HTTP reverse proxy (HTTP/1.1 and HTTP/2 from clients, over plain TCP or
//! TLS) that routes by host and path prefix to the live release's containers.
//!
//! What makes deploys lose no requests:
//! - the route table is immutable and swapped atomically ([`Proxy::set_app_routes`]), so each
//!   request sees either the old release or the new one, never a mix or a gap;
//! - every upstream counts its in-flight requests, WebSockets and streams included, so the
//!   agent can wait for the old release to drain ([`Upstream::wait_drained`]) before its
//!   containers get SIGTERM;
//! - a request that could not be delivered (connection refused, a pooled connection closed
//!   before the request was written) is retried on another replica, re-reading the route
//!   table, for up to [`ProxyConfig::retry_budget`]; a request that reached an upstream is
//!   never sent twice unless it is a body-less idempotent one.
//!
//! What protects it: limits on header size and time (slowloris), body size, response time,
//! open connections and (per route) requests per client; malformed requests get a 400 from
//! hyper's parser, which refuses ambiguous framing (request smuggling).

mod access_log;
mod admission;
mod body;
mod forwarding;
mod framing;
mod h1;
mod limits;
mod listeners;
mod login;
mod metrics;
mod pages;
mod routes;
mod splice;
mod upstream;

pub use access_log::{AccessLog, AccessRecord};
pub use limits::RateLimit;
pub use login::{BasicVerdict, LoginGate, RouteAuth, Verdict as LoginVerdict};

/// The apps' public status pages, which the proxy serves itself.
pub trait StatusPages: Send + Sync + 'static {
    /// The status page of `app` as HTML; `None` when it has none. May block (the proxy calls
    /// it off its event loops).
    fn page(&self, app: &str) -> Option<String>;
}

/// Where a route with `auth` takes its logins ([`Proxy::route_login`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLogin {
    /// The route's path prefix (`/` or `/admin`).
    pub prefix: String,
    pub auth: RouteAuth,
    /// `scheme://host[:port]` of this proxy for the host.
    pub origin: String,
}
pub use metrics::ProxyMetrics;
pub use routes::{Balance, RouteSettings, RouteSpec, RouteSummary};
pub use upstream::Upstream;

use admission::{Admission, Deadlines, Noticed, Refusal, RequestActivity, Verdict};
use arc_swap::ArcSwap;
use bytes::Bytes;
use forwarding::{ClientIdentity, prepare_request_headers, strip_hop_by_hop};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use limits::{ConcurrencyLimit, RateLimiter, RouteLimiters};

use routes::{Route, RouteTable};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use upstream::InflightGuard;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub use body::ProxyBody;

/// Listener-wide settings (per-route ones are in [`RouteSettings`]).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long to wait for a TCP connection to an upstream.
    pub connect_timeout: Duration,
    /// How long a request may keep looking for an upstream that accepts it before a 502.
    pub retry_budget: Duration,
    /// How long a client may take to send request headers (slowloris protection): measured
    /// from `accept` for a connection's first request (TLS handshake and protocol detection
    /// included), and from the end of the previous response for later HTTP/1.1 requests.
    pub header_read_timeout: Duration,
    /// How long a new connection may stay silent before its first byte.
    pub first_byte_timeout: Duration,
    /// How long a connection with no request in progress stays open (HTTP/1.1 keep-alive
    /// and HTTP/2 alike).
    pub idle_timeout: Duration,
    /// How long a client may take nothing of a response that is ready for it (it stopped
    /// reading, or left an HTTP/2 flow-control window at zero) before its connection is
    /// closed, as nginx's `send_timeout`.
    pub send_timeout: Duration,
    /// Largest request head accepted (431 beyond it).
    pub max_header_size: usize,
    /// Client connections open at once. At the cap, the connection idle the longest is
    /// closed for a new client; only when every one has a request in progress do new clients
    /// wait in the listen queue.
    pub max_connections: usize,
    /// Client connections one client address (an IPv6 /64) may hold; more are closed.
    pub max_connections_per_client: usize,
    /// How long an upstream that refused a connection is skipped.
    pub passive_down_time: Duration,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            retry_budget: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(30),
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_header_size: 32 * 1024,
            max_connections: 10_000,
            max_connections_per_client: 256,
            passive_down_time: Duration::from_secs(2),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// How often each event loop wakes when idle (see `serve_threads`): shorter than every
/// request timer (connect, TLS handshake, header, response timeouts).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// What the proxy asks of the TLS side.
pub trait TlsHooks: Send + Sync {
    /// The key authorization for a pending ACME HTTP-01 token.
    fn http01_response(&self, token: &str) -> Option<String>;
    /// Whether HTTPS can be served for `host` now (plain HTTP redirects only then).
    fn serves_https(&self, host: &str) -> bool;
}

/// The threads serving one listener address.
pub struct ProxyWorkers {
    /// The address bound (a real port when port 0 was asked for).
    pub addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The threads' sockets (duplicates), to hand over to the agent that replaces this one.
    sockets: Vec<std::os::fd::OwnedFd>,
    /// No other process may serve the address while the threads do.
    claim: listeners::AddressClaim,
}

impl ProxyWorkers {
    /// Waits until every thread has stopped (after the stop signal and grace period).
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }

    /// The listening sockets and then the address claim, for a successor to serve from.
    pub fn handover_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        let mut fds: Vec<_> = self.sockets.iter().map(|s| s.as_fd()).collect();
        fds.push(self.claim.fd());
        fds
    }
}

/// Sockets a predecessor handed over: its listening sockets for one address (one per event
/// loop) and, last, its claim on the address.
pub struct InheritedListener {
    pub sockets: Vec<std::os::fd::OwnedFd>,
    pub claim: std::os::fd::OwnedFd,
}

impl InheritedListener {
    /// From the descriptors in the order [`ProxyWorkers::handover_fds`] gives them.
    pub fn from_fds(mut fds: Vec<std::os::fd::OwnedFd>) -> Option<Self> {
        let claim = fds.pop()?;
        (!fds.is_empty()).then_some(InheritedListener {
            sockets: fds,
            claim,
        })
    }
}

/// Where an event loop's listening socket comes from.
enum Source {
    Bind(SocketAddr),
    Inherited(std::os::fd::OwnedFd),
}

/// How long before the end of a shutdown's grace period WebSockets and event streams are
/// closed (so the close completes before the process exits).
const LONG_LIVED_MARGIN: Duration = Duration::from_secs(2);
/// How long a keep-alive HTTP/1 connection may go on after the listeners stop: long enough
/// for a busy client to get a response saying `Connection: close` and leave on its own,
/// rather than have its connection closed under a request it is sending.
const RETIRE_LINGER: Duration = Duration::from_secs(1);

/// Only this process's event loops may share an address (see `listeners`).
fn address_taken(taken: listeners::AddressTaken) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::AddrInUse, taken.to_string())
}

/// An event loop's listening socket (inside its runtime).
fn open_listener(source: Source) -> std::io::Result<TcpListener> {
    match source {
        Source::Bind(addr) => bind_shared(addr),
        Source::Inherited(fd) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)
        }
    }
}

/// A listening socket other threads may bind too (the kernel spreads connections).
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How a listener's connections arrive.
#[derive(Clone)]
pub enum Scheme {
    Http,
    Https(Arc<rustls::ServerConfig>),
}

impl Scheme {
    fn name(&self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https(_) => "https",
        }
    }
}

pub struct Proxy {
    config: ProxyConfig,
    table: ArcSwap<RouteTable>,
    /// The routes of every app; the table is rebuilt from these on each change.
    apps: Mutex<BTreeMap<String, Vec<RouteSpec>>>,
    /// Rate limiters by (app, service, path), kept across table rebuilds so a deploy does not
    /// reset them.
    limiters: Mutex<HashMap<(String, String, String), RouteLimiters>>,
    metrics: ProxyMetrics,
    /// Metrics of requests no route matched.
    unrouted: metrics::AppMetrics,
    access_log: OnceLock<AccessLog>,
    tls: OnceLock<Arc<dyn TlsHooks>>,
    /// Answers for routes with `auth` (unset: such routes refuse everyone).
    login_gate: OnceLock<Arc<dyn LoginGate>>,
    /// The apps' status pages (unset: their routes answer 404).
    status_pages: OnceLock<Arc<dyn StatusPages>>,
    /// Where HTTPS is served, for redirects (unset: no redirects).
    https_port: OnceLock<u16>,
    /// Where plain HTTP is served, for the address of a route's login landing.
    http_port: OnceLock<u16>,
    admission: Arc<Admission>,
    /// Whether the listeners accept connections yet: the agent holds them off until its
    /// routes are rebuilt, so a restart never answers "no app is routed" (clients wait in
    /// the listen queue meanwhile).
    ready: tokio::sync::watch::Sender<bool>,
    /// When rate-limit buckets were last swept, in seconds after `started`.
    last_sweep: std::sync::atomic::AtomicU64,
    started: Instant,
    /// Set once the listeners stop accepting: HTTP/1 responses say `Connection: close`, so
    /// busy keep-alive clients move to the process that accepts now.
    retiring: AtomicBool,
    /// Turned true to end every WebSocket and event stream properly (a 1012 close frame, the
    /// last whole chunk), whatever its upstream.
    end_long_lived: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Arc<Self> {
        let admission = Admission::new(config.max_connections, config.max_connections_per_client);
        let metrics = ProxyMetrics::default();
        Arc::new(Self {
            config,
            table: ArcSwap::from_pointee(RouteTable::default()),
            apps: Mutex::new(BTreeMap::new()),
            limiters: Mutex::new(HashMap::new()),
            unrouted: metrics.for_app("-"),
            metrics,
            access_log: OnceLock::new(),
            tls: OnceLock::new(),
            login_gate: OnceLock::new(),
            status_pages: OnceLock::new(),
            https_port: OnceLock::new(),
            http_port: OnceLock::new(),
            admission,
            ready: tokio::sync::watch::Sender::new(true),
            last_sweep: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
            retiring: AtomicBool::new(false),
            end_long_lived: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Ends every WebSocket and event stream properly now (at a shutdown with no successor,
    /// for instance); a stopping proxy otherwise lets them run for most of its grace period.
    pub fn end_long_lived(&self) {
        self.end_long_lived.send_replace(true);
    }

    /// Client connections open now, upgraded ones included.
    pub fn open_connections(&self) -> usize {
        self.admission.open()
    }

    /// Resolves when `upstream` must end its long-lived connections, or the whole proxy must.
    fn long_lived_closing(
        &self,
        upstream: &Upstream,
    ) -> impl Future<Output = ()> + Send + Sync + 'static {
        let wait = |mut signal: tokio::sync::watch::Receiver<bool>| async move {
            if signal.wait_for(|closing| *closing).await.is_err() {
                // The sender went away without asking: never.
                std::future::pending::<()>().await;
            }
        };
        let (one, all) = (
            wait(upstream.closing_signal()),
            wait(self.end_long_lived.subscribe()),
        );
        async move {
            tokio::select! {
                () = one => {}
                () = all => {}
            }
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// Starts writing access logs (once).
    pub fn set_access_log(&self, log: AccessLog) {
        let _ = self.access_log.set(log);
    }

    /// Holds off (false) or starts (true) accepting connections on every listener; bound
    /// sockets queue new clients meanwhile. Ready unless told otherwise.
    pub fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
    }

    /// Whether the listeners accept connections.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once the listeners accept connections.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await.map(|_| ());
    }

    /// Says where HTTPS is served, so plain HTTP can redirect there (once).
    pub fn set_https_port(&self, port: u16) {
        let _ = self.https_port.set(port);
    }

    /// Where plain HTTP is served (for the address a route's login comes back to).
    pub fn set_http_port(&self, port: u16) {
        let _ = self.http_port.set(port);
    }

    /// Serves `scheme` on `addr` with `threads` event loops, each on its own thread with its
    /// own listening socket (SO_REUSEPORT, as nginx's workers do), so a request and its
    /// upstream connection never cross threads. Stops when `stop` turns true, letting open
    /// requests finish for up to `grace`.
    pub fn serve_threads(
        self: &Arc<Self>,
        addr: SocketAddr,
        scheme: Scheme,
        threads: usize,
        stop: tokio::sync::watch::Receiver<bool>,
        grace: Duration,
    ) -> std::io::Result<ProxyWorkers> {
        let early_claim = match addr.port() {
            0 => None,
            _ => Some(listeners::claim(addr).map_err(address_taken)?),
        };
        let sources = (0..threads.max(1)).map(|_| Source::Bind(addr)).collect();
        let (bound, threads, sockets) = self.spawn_loops(addr, sources, scheme, stop, grace)?;
        let claim = match early_claim {
            Some(claim) => claim,
            None => listeners::lock(bound).map_err(address_taken)?,
        };
        Ok(ProxyWorkers {
            addr: bound,
            threads,
            sockets,
            claim,
        })
    }

    /// Like [`Proxy::serve_threads`], on the sockets a predecessor handed over: one event
    /// loop per socket. Connections already waiting in their queue are served.
    pub fn serve_inherited(
        self: &Arc<Self>,
        inherited: InheritedListener,
        scheme: Scheme,
        stop: tokio::sync::watch::Receiver<bool>,
        grace: Duration,
    ) -> std::io::Result<ProxyWorkers> {
        let claim = listeners::AddressClaim::inherited(inherited.claim);
        let first = std::net::TcpListener::from(
            inherited
                .sockets
                .first()
                .ok_or_else(|| std::io::Error::other("no socket was handed over"))?
                .try_clone()?,
        );
        let addr = first.local_addr()?;
        let sources = inherited
            .sockets
            .into_iter()
            .map(Source::Inherited)
            .collect();
        let (bound, threads, sockets) = self.spawn_loops(addr, sources, scheme, stop, grace)?;
        Ok(ProxyWorkers {
            addr: bound,
            threads,
            sockets,
            claim,
        })
    }

    /// One thread with its own event loop per socket source.
    #[allow(clippy::type_complexity)]
    fn spawn_loops(
        self: &Arc<Self>,
        addr: SocketAddr,
        sources: Vec<Source>,
        scheme: Scheme,
        stop: tokio::sync::watch::Receiver<bool>,
        grace: Duration,
    ) -> std::io::Result<(
        SocketAddr,
        Vec<std::thread::JoinHandle<()>>,
        Vec<std::os::fd::OwnedFd>,
    )> {
        type Started = std::io::Result<(SocketAddr, std::os::fd::OwnedFd)>;
        let mut bound = addr;
        let mut handles = Vec::new();
        let mut sockets = Vec::new();
        for (index, source) in sources.into_iter().enumerate() {
            let (ready, started) = std::sync::mpsc::channel::<Started>();
            // Port 0: every later thread binds the port the first one got.
            let source = match source {
                Source::Bind(_) => Source::Bind(bound),
                inherited => inherited,
            };
            let (proxy, scheme, mut stop) = (Arc::clone(self), scheme.clone(), stop.clone());
            let handle = std::thread::Builder::new()
                .name(format!("berth-proxy-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let listener = match open_listener(source) {
                            Ok(listener) => listener,
                            Err(error) => {
                                let _ = ready.send(Err(error));
                                return;
                            }
                        };
                        use std::os::fd::AsFd;
                        let kept = listener
                            .local_addr()
                            .and_then(|local| Ok((local, listener.as_fd().try_clone_to_owned()?)));
                        let _ = ready.send(kept);
                        let shutdown = async move {
                            let _ = stop.wait_for(|s| *s).await.map(|_| ());
                        };
                        proxy.serve(listener, scheme, shutdown, grace).await;
                    });
                })?;
            match started.recv() {
                Ok(Ok((local, socket))) => {
                    bound = local;
                    handles.push(handle);
                    sockets.push(socket);
                }
                Ok(Err(error)) => {
                    let _ = handle.join();
                    return Err(error);
                }
                Err(_) => {
                    return Err(std::io::Error::other(
                        "a proxy thread stopped while starting",
                    ));
                }
            }
        }
        Ok((bound, handles, sockets))
    }

    /// Forgets idle rate-limit buckets, at most every 10 seconds (whichever event loop asks
    /// first does it).
    fn sweep_rate_limits(&self) {
        let now = self.started.elapsed().as_secs();
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now < last + 10
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let rates: Vec<Arc<RateLimiter>> = self
            .limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|l| l.rate.clone())
            .collect();
        let at = Instant::now();
        for rate in rates {
            rate.sweep(at);
        }
    }

    /// Connects the TLS side (once).
    pub fn set_tls_hooks(&self, hooks: Arc<dyn TlsHooks>) {
        let _ = self.tls.set(hooks);
    }

    /// Connects the apps' status pages (once).
    pub fn set_status_pages(&self, pages: Arc<dyn StatusPages>) {
        let _ = self.status_pages.set(pages);
    }

    /// Connects the accounts that routes with `auth` check (once).
    pub fn set_login_gate(&self, gate: Arc<dyn LoginGate>) {
        let _ = self.login_gate.set(gate);
    }

    /// The path prefix and login rule of the route that serves `host` and `path`, when that
    /// route asks for a login and names `host` among its domains. Only a named domain counts:
    /// a route for every host (or a wildcard) would make any host a place the console sends
    /// a login ticket to.
    ///
    /// The answer's origin is where the login lands: this proxy's own scheme and port for the
    /// host (HTTPS once it has a certificate), never what a link asked for, so a ticket only
    /// ever goes to the proxy that serves the route.
    pub fn route_login(&self, host: &str, path: &str) -> Option<RouteLogin> {
        let host = host.to_ascii_lowercase();
        let route = self.table.load().lookup(&host, path)?;
        let auth = route
            .spec
            .settings
            .auth
            .clone()
            .filter(|auth| auth.basic.is_none())?;
        if !route.spec.domains.contains(&host) {
            return None;
        }
        let https = self.https_port.get().copied().filter(|_| {
            route.spec.settings.redirect_https
                && self.tls.get().is_some_and(|tls| tls.serves_https(&host))
        });
        let origin = match (https, self.http_port.get().copied()) {
            (Some(443), _) => format!("https://{host}"),
            (Some(port), _) => format!("https://{host}:{port}"),
            (None, Some(80) | None) => format!("http://{host}"),
            (None, Some(port)) => format!("http://{host}:{port}"),
        };
        Some(RouteLogin {
            prefix: route.spec.path.clone(),
            auth,
            origin,
        })
    }

    /// Replaces all routes of one app in a single atomic step.
    pub fn set_app_routes(&self, app: &str, routes: Vec<RouteSpec>) {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        if routes.is_empty() {
            apps.remove(app);
        } else {
            apps.insert(app.to_owned(), routes);
        }
        let limiters = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
            let mut wanted = HashMap::new();
            for spec in apps.values().flatten() {
                let settings = &spec.settings;
                if settings.rate_limit.is_none() && settings.max_concurrent.is_none() {
                    continue;
                }
                let key = (spec.app.clone(), spec.service.clone(), spec.path.clone());
                let existing = limiters.get(&key).cloned().unwrap_or_default();
                let rate = settings.rate_limit.map(|limit| match existing.rate {
                    Some(rate) if rate.limit() == limit => rate,
                    _ => Arc::new(RateLimiter::new(limit)),
                });
                let concurrency = settings
                    .max_concurrent
                    .map(|max| match existing.concurrency {
                        Some(concurrency) => {
                            concurrency.set_max(max);
                            concurrency
                        }
                        None => ConcurrencyLimit::new(max),
                    });
                wanted.insert(key, RouteLimiters { rate, concurrency });
            }
            *limiters = wanted.clone();
            wanted
        };
        self.table.store(Arc::new(RouteTable::build(
            apps.values().flatten(),
            &limiters,
            &self.metrics,
        )));
    }

    pub fn routes(&self) -> Vec<RouteSummary> {
        let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.values()
            .flatten()
            .map(|spec| RouteSummary {
                app: spec.app.clone(),
                service: spec.service.clone(),
                release: spec.release,
                domains: spec.domains.clone(),
                path: spec.path.clone(),
                upstreams: spec
                    .upstreams
                    .iter()
                    .map(|u| format!("{} ({})", u.name(), u.addr()))
                    .collect(),
                auth: spec.settings.auth.is_some(),
            })
            .collect()
    }

    /// Serves `scheme` on `listener` until `shutdown` resolves, then lets open requests
    /// finish for up to `grace`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        scheme: Scheme,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) {
        let connections = tokio_util::task::TaskTracker::new();
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let builders = Arc::new(Builders::new(&self.config));
        // tokio wakes its event loop through an eventfd whenever a timer is armed earlier
        // than the loop's next planned wake-up, which hyper's per-request header timer would
        // do on almost every request. A heartbeat keeps that planned wake-up under a second
        // away, earlier than any request timer, so arming one costs no system call. It also
        // advances the coarse clock requests note their times by, and does housekeeping off
        // the request path.
        let beating = Arc::clone(&self);
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                admission::tick();
                beating.sweep_rate_limits();
            }
        });
        let _heartbeat = scopeguard(move || heartbeat.abort());
        let deadlines = Deadlines {
            first_byte: self.config.first_byte_timeout,
            first_request: self.config.header_read_timeout,
            idle: self.config.idle_timeout,
            send: self.config.send_timeout,
        };
        let acceptor = match &scheme {
            Scheme::Https(config) => Some(tokio_rustls::TlsAcceptor::from(config.clone())),
            Scheme::Http => None,
        };
        tokio::pin!(shutdown);
        let mut ready = self.ready.subscribe();
        let started = tokio::select! {
            result = ready.wait_for(|ready| *ready) => result.is_ok(),
            () = &mut shutdown => false,
        };
        'accepting: loop {
            if !started {
                break;
            }
            let (stream, client) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let admitted = loop {
                match self.admission.admit(client.ip()) {
                    Ok(admitted) => break admitted,
                    Err(Refusal::ClientCap) => {
                        tracing::debug!(%client, "client at its connection cap; closing");
                        self.metrics.closed_by_edge("client_cap");
                        continue 'accepting;
                    }
                    // At the cap: make room by closing the idlest connection; while every one
                    // is busy, wait (later clients wait in the listen queue meanwhile).
                    Err(Refusal::Full) => {
                        self.admission.evict_idlest();
                        tokio::select! {
                            () = self.admission.wait_freed() => {}
                            () = &mut shutdown => break 'accepting,
                        }
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let admitted = Arc::new(admitted);
            let proxy = Arc::clone(&self);
            let builders = Arc::clone(&builders);
            let acceptor = acceptor.clone();
            let scheme_name = scheme.name();
            let mut stopping = stopping.clone();
            connections.spawn(async move {
                proxy.metrics.open_connections.inc();
                // The watchdog runs as a task of its own and speaks once, through a oneshot:
                // the connection's task then polls only that cheap receiver on each wake-up,
                // not the timers and notifications behind it.
                let liveness = Arc::clone(&admitted.liveness);
                let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
                let watching = tokio::spawn(async move {
                    let verdict = tokio::select! {
                        verdict = liveness.watch(deadlines) => Some(verdict),
                        // The guard `wait_for` returns is not Send: dropped at once.
                        _ = stopping.wait_for(|stop| *stop) => None,
                    };
                    let _ = verdict_tx.send(verdict);
                });
                let _stop_watching = scopeguard(move || watching.abort());
                let watchdog = async move {
                    match verdict_rx.await {
                        Ok(verdict) => verdict,
                        Err(_) => std::future::pending().await,
                    }
                };
                let connection = Arc::new(ClientConnection {
                    addr: client,
                    identity: ClientIdentity::new(client, scheme_name),
                    framing_violation: AtomicBool::new(false),
                });
                let stream = Noticed::new(stream, Arc::clone(&admitted.liveness));
                let result = serve_client(
                    &proxy,
                    &builders,
                    acceptor,
                    stream,
                    connection,
                    &admitted,
                    watchdog,
                )
                .await;
                match result {
                    Ok(Some(verdict)) => {
                        tracing::debug!(%client, reason = verdict.reason(), "closed the connection");
                        proxy.metrics.closed_by_edge(verdict.reason());
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(%client, %error, "client connection ended with an error")
                    }
                }
                proxy.metrics.open_connections.dec();
                drop(admitted);
            });
        }
        drop(listener);
        self.retiring.store(true, Ordering::Relaxed);
        let _ = stop.send(true);
        connections.close();
        // Requests finish; WebSockets and event streams keep going for most of the grace
        // period (a successor may be accepting already), then end properly, never cut.
        let margin = LONG_LIVED_MARGIN.min(grace / 2);
        let all_gone = || async {
            connections.wait().await;
            self.admission.wait_empty().await;
        };
        if tokio::time::timeout(grace.saturating_sub(margin), all_gone())
            .await
            .is_err()
        {
            self.end_long_lived();
            if tokio::time::timeout(margin, all_gone()).await.is_err() {
                tracing::warn!(
                    open = self.admission.open(),
                    "some connections were still open after the shutdown grace period"
                );
            }
        }
    }

    /// An app's public status page, at its route's path exactly (and with a trailing `/`).
    async fn status_page(
        &self,
        request: &Request<Incoming>,
        route: &routes::Route,
    ) -> Response<ProxyBody> {
        let path = request.uri().path();
        let prefix = route.spec.path.as_str();
        let exact = path == prefix || (prefix != "/" && path.strip_prefix(prefix) == Some("/"));
        let host = host_sent(request).unwrap_or_default().to_owned();
        if !exact {
            return pages::no_route(&host);
        }
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return pages::method_not_allowed(request.method().as_str());
        }
        let Some(pages) = self.status_pages.get().cloned() else {
            return pages::no_route(&host);
        };
        let app = route.spec.app.clone();
        match tokio::task::spawn_blocking(move || pages.page(&app)).await {
            Ok(Some(html)) => pages::status_page(html),
            _ => pages::no_route(&host),
        }
    }

    /// A route with `auth`: the logged-in user's name and role for the app, or the response
    /// that stands instead of the app's (a login redirect, a refusal, or the end of a login
    /// hand-off from the console). The route's session cookie is taken out of the request.
    async fn check_login(
        &self,
        request: &mut Request<Incoming>,
        route: &routes::Route,
        auth: &RouteAuth,
        host: &forwarding::RequestHost,
        scheme: &'static str,
        client: SocketAddr,
    ) -> Result<(HeaderValue, HeaderValue), Response<ProxyBody>> {
        let https = scheme == "https";
        let Some(gate) = self.login_gate.get().cloned() else {
            return Err(pages::login_unavailable());
        };
        if let Some(users_secret) = &auth.basic {
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let (app, users_secret) = (route.spec.app.clone(), users_secret.clone());
            let ip = client.ip().to_string();
            let verdict = tokio::task::spawn_blocking(move || {
                gate.check_basic(&app, &users_secret, authorization.as_deref(), &ip)
            })
            .await
            .unwrap_or(login::BasicVerdict::Unavailable);
            return match verdict {
                login::BasicVerdict::Allow { user } => {
                    // The password stays at the edge.
                    request.headers_mut().remove(header::AUTHORIZATION);
                    match login::header_value(&user) {
                        Some(user) => Ok((user, HeaderValue::from_static("basic"))),
                        None => Err(pages::denied("this user's name cannot be passed on")),
                    }
                }
                login::BasicVerdict::Refused => Err(pages::basic_required(&route.spec.app)),
                login::BasicVerdict::Locked(wait) => Err(pages::too_many_requests(wait)),
                login::BasicVerdict::Unavailable => Err(pages::basic_unavailable()),
            };
        }
        let path = request.uri().path();
        let below_route = match route.spec.path.as_str() {
            "/" => path,
            prefix => path.strip_prefix(prefix).unwrap_or(path),
        };
        let query = request.uri().query().unwrap_or_default();
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let name = host.name.to_string();
        if below_route == login::LOGIN_PATH {
            let ticket = login::query_param(query, "ticket").unwrap_or_default();
            let back_to = login::query_param(query, "to")
                .filter(|to| login::local_target(to).is_some())
                .unwrap_or_else(|| "/".to_owned());
            let user_agent = request
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let ip = client.ip().to_string();
            let state =
                login::request_cookie(request.headers(), login::STATE_COOKIE).unwrap_or_default();
            let redeemed = if login::plausible_session(&ticket) && !state.is_empty() {
                tokio::task::spawn_blocking(move || {
                    gate.redeem(&name, &ticket, &state, &ip, &user_agent)
                })
                .await
                .ok()
                .flatten()
            } else {
                None
            };
            return Err(match redeemed {
                Some(cookie) => pages::see_other(
                    &back_to,
                    &[
                        &login::set_cookie(&cookie, https),
                        &login::clear_state_cookie(https),
                    ],
                ),
                None => pages::login_link_spent(&back_to),
            });
        }
        let cookie = login::session_cookie(request.headers(), https);
        if below_route == login::LOGOUT_PATH {
            if let Some(cookie) = cookie {
                let _ = tokio::task::spawn_blocking(move || gate.logout(&cookie)).await;
            }
            return Err(pages::logged_out(&login::set_cookie("", https)));
        }
        let verdict = match cookie {
            Some(cookie) if login::plausible_session(&cookie) => {
                let (auth, gate) = (auth.clone(), Arc::clone(&gate));
                tokio::task::spawn_blocking(move || gate.check(&name, &cookie, &auth))
                    .await
                    .unwrap_or(login::Verdict::Login)
            }
            _ => login::Verdict::Login,
        };
        match verdict {
            login::Verdict::Allow { user, role } => {
                login::strip_session_cookie(request.headers_mut());
                match (login::header_value(&user), login::header_value(&role)) {
                    (Some(user), Some(role)) => Ok((user, role)),
                    _ => Err(pages::denied("this account's name cannot be passed on")),
                }
            }
            login::Verdict::Denied(reason) => Err(pages::denied(&reason)),
            login::Verdict::Login => {
                let navigable = matches!(*request.method(), Method::GET | Method::HEAD);
                let return_to = format!("{scheme}://{}{target}", host.sent);
                let state = login::new_state();
                match gate.login_url(&login::percent_encode(&return_to), &state) {
                    Some(url) if navigable => Err(pages::see_other(
                        &url,
                        &[&login::set_state_cookie(&state, https)],
                    )),
                    Some(_) => Err(pages::login_required()),
                    None => Err(pages::login_unavailable()),
                }
            }
        }
    }

    /// Proxies one request. Never fails: problems become error pages.
    /// `activity` counts the request as in progress on its connection: it rides on the
    /// response body, or on an upgraded connection's splice.
    async fn handle(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        connection: &ClientConnection,
        activity: &mut Option<RequestActivity>,
    ) -> Response<ProxyBody> {
        let (client, scheme) = (connection.addr, connection.identity.scheme());
        let started = Instant::now();
        let sent_host = host_sent(&request);
        let request_host = connection.identity.host(sent_host.unwrap_or_default());
        let host: &str = &request_host.name;
        let uri = request.uri().clone();
        let path = uri.path();
        let mut log = LogContext {
            started,
            client,
            version: request.version(),
            host: Arc::clone(&request_host.name),
            method: request.method().clone(),
            uri: uri.clone(),
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
            route: None,
            upstream: None,
        };
        if let Err(problem) = sent_host {
            return self.finish_local(pages::bad_request(problem), log);
        }
        // A tunnel through the edge is never offered; an HTTP/2 extended CONNECT (a
        // WebSocket, RFC 8441) names its protocol and is turned into an upgrade below.
        if request.method() == Method::CONNECT
            && request.extensions().get::<hyper::ext::Protocol>().is_none()
        {
            return self.finish_local(pages::method_not_allowed("CONNECT"), log);
        }

        if scheme == "http"
            && let Some(token) = path.strip_prefix("/.well-known/acme-challenge/")
            && let Some(answer) = self.tls.get().and_then(|tls| tls.http01_response(token))
        {
            return self.finish_local(pages::text(StatusCode::OK, answer), log);
        }

        let smuggling = connection.framing_violation.load(Ordering::Acquire)
            && request.headers().contains_key(header::TRANSFER_ENCODING);
        if smuggling {
            return self.finish_local(
                pages::bad_request("the request has both Content-Length and Transfer-Encoding"),
                log,
            );
        }
        if let Some(problem) = framing_problem(request.headers()) {
            return self.finish_local(pages::bad_request(problem), log);
        }
        let Some(mut route) = self.table.load().lookup(host, path) else {
            return self.finish_local(pages::no_route(host), log);
        };
        log.route = Some(Arc::clone(&route));
        // The settings of the route first matched hold for the whole request, retries included.
        let matched = Arc::clone(&route);
        let settings = &matched.spec.settings;

        if scheme == "http"
            && settings.redirect_https
            && let (Some(port), Some(tls)) = (self.https_port.get().copied(), self.tls.get())
            && tls.serves_https(host)
        {
            let authority = if port == 443 {
                host.to_owned()
            } else {
                format!("{host}:{port}")
            };
            let target = format!(
                "https://{authority}{}",
                log.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
            );
            return self.finish_local(pages::redirect(&target), log);
        }
        if scheme == "http" && settings.https_only {
            return self.finish_local(pages::certificate_pending(host), log);
        }
        if let Some(limiter) = &route.limiter
            && let Err(wait) = limiter.check(client.ip(), Instant::now())
        {
            return self.finish_local(pages::too_many_requests(wait), log);
        }
        if settings.status_page {
            let response = self.status_page(&request, &route).await;
            return self.finish_local(response, log);
        }
        // Before the maintenance page and the app: an anonymous client learns nothing more.
        let logged_in = match &settings.auth {
            None => None,
            Some(auth) => {
                let checked = self
                    .check_login(&mut request, &route, auth, &request_host, scheme, client)
                    .await;
                match checked {
                    Ok(user) => Some(user),
                    Err(response) => return self.finish_local(response, log),
                }
            }
        };
        // No app is sent a login of its host, whatever its route.
        login::strip_session_cookie(request.headers_mut());
        if let Some(message) = &settings.maintenance {
            return self.finish_local(pages::maintenance(&route.spec.app, message), log);
        }
        // Held until the response (or the upgraded connection) ends, by the in-flight guard.
        let mut permit = match &route.concurrency {
            None => None,
            Some(limit) => match limit.try_acquire() {
                Some(permit) => Some(permit),
                None => {
                    return self.finish_local(pages::at_capacity(&route.spec.app), log);
                }
            },
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > settings.max_body) {
            return self.finish_local(pages::too_large(settings.max_body), log);
        }

        extended_connect_as_upgrade(&mut request);
        let upgrade = is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        parts.uri = upstream_uri(&parts.uri, &route.spec.path, settings.strip_prefix);
        let hsts = settings.hsts && scheme == "https";
        let body_fault = Arc::new(body::ClientBodyFault::default());
        // Body-less requests (nearly all GETs) go the short way, written and read by this task
        // on a plain pooled socket (see `h1`); the rest through hyper's client.
        let mut outgoing = if upgrade.is_none() && body.is_end_stream() {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut head = h1::RequestHead::new(&parts.method, path);
            forwarding::for_each_upstream_header(
                &parts.headers,
                &request_host,
                &connection.identity,
                |name, value| head.field(name, value),
            );
            if let Some((user, role)) = &logged_in {
                head.field(&login::USER_HEADER, user);
                head.field(&login::ROLE_HEADER, role);
            }
            Outgoing::Direct {
                head: head.finish(&parts.method),
                method: parts.method,
            }
        } else {
            prepare_request_headers(&mut parts.headers, &request_host, &connection.identity);
            if let Some((user, role)) = logged_in {
                parts.headers.insert(login::USER_HEADER, user);
                parts.headers.insert(login::ROLE_HEADER, role);
            }
            parts.version = http::Version::HTTP_11;
            let limited = http_body_util::Limited::new(
                body,
                usize::try_from(settings.max_body).unwrap_or(usize::MAX),
            );
            let upload = ProxyBody::upload(limited, Arc::clone(&body_fault));
            Outgoing::Hyper(Some(Request::from_parts(parts, upload)))
        };

        let in_flight = route.metrics.in_flight.clone();
        in_flight.inc();
        let _in_flight = scopeguard(move || {
            in_flight.dec();
        });

        let deadline = tokio::time::Instant::now() + self.config.retry_budget;
        let mut tried: Vec<usize> = Vec::new();
        let mut replays = 0;
        let mut last_error = String::from("no replica is running");
        loop {
            let Some((index, upstream)) = route.pick(&tried) else {
                // Every replica of this route was tried. The table may have been switched since
                // (a deploy in progress): wait a moment, re-read it and start over.
                if tokio::time::Instant::now() >= deadline {
                    self.metrics.upstream_error(&route.spec.app, "connect");
                    return self.finish_local(
                        pages::bad_gateway(&route.spec.app, &route.spec.service, &last_error),
                        log,
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
                match self.table.load().lookup(host, path) {
                    // A route that now asks for a login (or another one) is not this
                    // request's: it was let in under the old rule.
                    Some(fresh) if fresh.spec.settings.auth == settings.auth => route = fresh,
                    _ => return self.finish_local(pages::no_route(host), log),
                }
                tried.clear();
                continue;
            };
            tried.push(index);
            let mut guard = upstream.begin_request();
            let failure = match &mut outgoing {
                Outgoing::Direct { head, method } => {
                    let (connection, reused) = match upstream
                        .direct_connection(self.config.connect_timeout)
                        .await
                    {
                        Ok(connection) => connection,
                        Err(error) => {
                            last_error = self.refused(&upstream, error);
                            continue;
                        }
                    };
                    log.upstream = Some(upstream.shared_name());
                    let exchanged = tokio::time::timeout(
                        settings.response_timeout,
                        connection.exchange(head, method),
                    )
                    .await;
                    match exchanged {
                        Ok(Ok((parts, body))) => {
                            guard.hold(permit.take());
                            return self.finish_response(
                                parts,
                                UpstreamBody::Direct(body),
                                guard,
                                log,
                                hsts,
                            );
                        }
                        // A pooled connection the upstream closed as the request was written
                        // (its keep-alive timeout): an idempotent request can go again.
                        Ok(Err(h1::Failure::NoResponse(message)))
                            if reused && is_idempotent(method) && replays < 2 =>
                        {
                            replays += 1;
                            tried.pop();
                            last_error = message;
                            continue;
                        }
                        Ok(Err(failure)) => Failed::Broken(failure.to_string()),
                        Err(_) => Failed::TimedOut,
                    }
                }
                Outgoing::Hyper(request) => {
                    let mut sender = match upstream.connection(self.config.connect_timeout).await {
                        Ok(sender) => sender,
                        Err(error) => {
                            last_error = self.refused(&upstream, error);
                            continue;
                        }
                    };
                    let Some(outgoing) = request.take() else {
                        return self.finish_local(
                            pages::bad_gateway(&route.spec.app, &route.spec.service, &last_error),
                            log,
                        );
                    };
                    log.upstream = Some(upstream.shared_name());
                    let sent = tokio::time::timeout(
                        settings.response_timeout,
                        sender.try_send_request(outgoing),
                    )
                    .await;
                    match sent {
                        Ok(Ok(mut response)) => {
                            guard.hold(permit.take());
                            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                                && let Some(client_upgrade) = upgrade
                            {
                                return self.splice_upgrade(
                                    client_upgrade,
                                    &mut response,
                                    (guard, activity.take()),
                                    log,
                                );
                            }
                            let (parts, body) = response.into_parts();
                            return self.finish_response(
                                parts,
                                UpstreamBody::Hyper {
                                    body,
                                    sender: Some(sender),
                                },
                                guard,
                                log,
                                hsts,
                            );
                        }
                        Ok(Err(mut error)) => {
                            if let Some(unsent) = error.take_message() {
                                // Never written: safe to send elsewhere.
                                *request = Some(unsent);
                                tried.pop();
                                last_error = error.error().to_string();
                                continue;
                            }
                            // The client's body failed on the way: its fault, not the
                            // upstream's.
                            match body_fault.get() {
                                Some(body::BodyFault::TooLarge) => {
                                    return self
                                        .finish_local(pages::too_large(settings.max_body), log);
                                }
                                Some(body::BodyFault::Broken) => {
                                    return self.finish_local(
                                        pages::bad_request(
                                            "the request body is malformed or ended early",
                                        ),
                                        log,
                                    );
                                }
                                None if body_too_large(error.error()) => {
                                    return self
                                        .finish_local(pages::too_large(settings.max_body), log);
                                }
                                None => Failed::Broken(error.error().to_string()),
                            }
                        }
                        Err(_) => Failed::TimedOut,
                    }
                }
            };
            return match failure {
                Failed::Broken(message) => {
                    tracing::warn!(upstream = upstream.name(), error = %message, "upstream failed mid-request");
                    self.metrics.upstream_error(&route.spec.app, "broken");
                    self.finish_local(
                        pages::bad_gateway(&route.spec.app, &route.spec.service, &message),
                        log,
                    )
                }
                Failed::TimedOut => {
                    self.metrics.upstream_error(&route.spec.app, "timeout");
                    self.finish_local(
                        pages::gateway_timeout(
                            &route.spec.app,
                            &route.spec.service,
                            settings.response_timeout,
                        ),
                        log,
                    )
                }
            };
        }
    }

    /// An upstream refused a connection: skipped for a while (passive health); returns why,
    /// for the 502 page if no other replica answers.
    fn refused(&self, upstream: &Upstream, error: upstream::ConnectError) -> String {
        upstream.mark_down(self.config.passive_down_time);
        tracing::debug!(upstream = upstream.name(), %error, "upstream refused; trying another");
        error.to_string()
    }

    /// Finishes a response the proxy made itself.
    fn finish_local(&self, response: Response<ProxyBody>, log: LogContext) -> Response<ProxyBody> {
        let bytes = response.body().size_hint().exact().unwrap_or(0);
        self.record(log, response.status().as_u16(), bytes);
        response
    }

    /// Counts a finished request and queues its access log line.
    fn record(&self, log: LogContext, status: u16, bytes: u64) {
        let elapsed = log.started.elapsed();
        let metrics = log
            .route
            .as_ref()
            .map(|r| &*r.metrics)
            .unwrap_or(&self.unrouted);
        metrics.record(status, elapsed.as_secs_f64());
        if let Some(access_log) = self.access_log.get() {
            let route = log.route.as_ref();
            access_log.record(AccessRecord {
                at: std::time::SystemTime::now(),
                client: log.client.ip(),
                version: log.version,
                host: log.host,
                method: log.method,
                uri: log.uri,
                status,
                bytes,
                duration: elapsed,
                app: route.map(|r| Arc::clone(&r.app)),
                service: route.map(|r| Arc::clone(&r.service)),
                release: route.map(|r| r.spec.release),
                upstream: log.upstream,
                user_agent: log.user_agent,
            });
        }
    }

    fn finish_response(
        self: &Arc<Self>,
        mut parts: http::response::Parts,
        body: UpstreamBody,
        guard: InflightGuard,
        log: LogContext,
        hsts: bool,
    ) -> Response<ProxyBody> {
        strip_hop_by_hop(&mut parts.headers);
        login::strip_login_set_cookie(&mut parts.headers);
        if hsts {
            parts.headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
        }
        let status = parts.status.as_u16();
        // An event stream stays open like a WebSocket: it drains on the long-lived limit and
        // ends after its last whole chunk when that limit is reached.
        let mut guard = guard;
        let closing = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|t| t.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"))
            .then(|| {
                guard.mark_long_lived();
                let closing: Pin<Box<dyn Future<Output = ()> + Send + Sync>> =
                    Box::pin(self.long_lived_closing(guard.upstream()));
                closing
            });
        let mut body = TrackedBody {
            inner: body,
            guard: Some(guard),
            bytes: 0,
            log: Some((log, status)),
            proxy: Arc::clone(self),
            closing,
        };
        if body.inner.is_end_stream() {
            // No body will be polled (204, 304, HEAD): done now.
            body.complete(true);
        }
        Response::from_parts(parts, ProxyBody::tracked(body))
    }

    /// Connects an upgraded client connection (a WebSocket) to the upgraded upstream one.
    /// The upstream counts it as in flight until it closes, so a deploy's drain waits for it;
    /// so does the client's connection (an HTTP/2 one carrying it is never idle meanwhile).
    fn splice_upgrade(
        &self,
        client: hyper::upgrade::OnUpgrade,
        response: &mut Response<Incoming>,
        (guard, activity): (InflightGuard, Option<RequestActivity>),
        log: LogContext,
    ) -> Response<ProxyBody> {
        let upstream = hyper::upgrade::on(&mut *response);
        let mut guard = guard;
        guard.mark_long_lived();
        let name = guard.upstream().name().to_owned();
        let closing = self.long_lived_closing(guard.upstream());
        let websocket = response
            .headers()
            .get(header::UPGRADE)
            .and_then(|u| u.to_str().ok())
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        tokio::spawn(async move {
            let _guard = guard;
            let _activity = activity;
            match tokio::try_join!(client, upstream) {
                Ok((client, upstream)) => {
                    let client = TokioIo::new(client);
                    let upstream = TokioIo::new(upstream);
                    if let Err(error) = splice::splice(client, upstream, closing, websocket).await {
                        tracing::debug!(upstream = %name, %error, "upgraded connection ended");
                    }
                }
                Err(error) => {
                    tracing::debug!(upstream = %name, %error, "the connection upgrade failed")
                }
            }
        });
        let mut out = Response::new(ProxyBody::empty());
        *out.headers_mut() = response.headers().clone();
        if log.version == http::Version::HTTP_2 {
            // An extended CONNECT (RFC 8441) succeeds with a 200 and none of HTTP/1.1's
            // handshake fields.
            for name in [
                header::CONNECTION,
                header::UPGRADE,
                header::SEC_WEBSOCKET_ACCEPT,
                header::CONTENT_LENGTH,
            ] {
                out.headers_mut().remove(name);
            }
        } else {
            *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        }
        self.record(log, out.status().as_u16(), 0);
        out
    }
}

/// The HTTP servers a connection can get: HTTP/1.1 or HTTP/2 when TLS's ALPN chose, and one
/// that tells them apart by the first bytes (plain TCP, where HTTP/2 comes with prior
/// knowledge).
struct Builders {
    sniffing: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(config: &ProxyConfig) -> Self {
        let max_header_list = u32::try_from(config.max_header_size).unwrap_or(u32::MAX);
        let mut sniffing = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // Half-closes: a client that shuts its side after a complete request (`nc -N`,
        // health checkers, scripts) still gets its response, as from nginx and HAProxy.
        sniffing
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_size.max(8192))
            .half_close(true)
            .keep_alive(true);
        sniffing
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(max_header_list)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_concurrent_streams(100)
            // WebSockets over HTTP/2 (RFC 8441): browsers use them when this is announced.
            .enable_connect_protocol();
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_size.max(8192))
            .half_close(true)
            .keep_alive(true);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(max_header_list)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_concurrent_streams(100)
            .enable_connect_protocol();
        Self {
            sniffing,
            http1,
            http2,
        }
    }
}

/// Serves one client connection from `accept` to its end: the TLS handshake, then HTTP. The
/// watchdog's verdict closes it (at once before its first request; gracefully after). Returns
/// the verdict when the edge closed the connection.
async fn serve_client(
    proxy: &Arc<Proxy>,
    builders: &Builders,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stream: Noticed<tokio::net::TcpStream>,
    connection: Arc<ClientConnection>,
    admitted: &Arc<admission::Admitted>,
    watchdog: impl Future<Output = Option<Verdict>>,
) -> Result<Option<Verdict>, BoxError> {
    tokio::pin!(watchdog);
    let service = {
        let proxy = Arc::clone(proxy);
        let connection = Arc::clone(&connection);
        let admitted = Arc::clone(admitted);
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let proxy = Arc::clone(&proxy);
            let connection = Arc::clone(&connection);
            let mut activity = Some(admitted.begin_request());
            async move {
                let http1 = request.version() < http::Version::HTTP_2;
                let mut response = proxy.handle(request, &connection, &mut activity).await;
                if http1
                    && proxy.retiring.load(Ordering::Relaxed)
                    && response.status() != StatusCode::SWITCHING_PROTOCOLS
                {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                if let Some(mut activity) = activity {
                    activity.response_ready();
                    response.body_mut().hold(activity);
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let flag = FlagHandle(Arc::clone(&connection));
    let Some(acceptor) = acceptor else {
        let io = TokioIo::new(framing::Watched::new(stream, flag));
        let serving = builders
            .sniffing
            .serve_connection_with_upgrades(io, service);
        return until_closed(serving, |c| c.graceful_shutdown(), watchdog, RETIRE_LINGER).await;
    };
    let handshake =
        tokio::time::timeout(proxy.config.tls_handshake_timeout, acceptor.accept(stream));
    tokio::pin!(handshake);
    // A shutdown (a restart or upgrade of the agent) that comes during the handshake does not
    // drop the connection: this process accepted it, so it finishes the handshake and serves
    // what the client sends, as `until_closed` does for any connection at a shutdown. Only
    // the edge's own verdicts (silent, slow, evicted clients) close it here.
    let mut shutting_down = false;
    let tls = tokio::select! {
        tls = &mut handshake => tls,
        verdict = &mut watchdog => match verdict {
            Some(verdict) => return Ok(Some(verdict)),
            None => {
                shutting_down = true;
                handshake.await
            }
        },
    };
    let tls = match tls {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(client = %connection.addr, %error, "TLS handshake failed");
            return Ok(None);
        }
        Err(_) => {
            tracing::debug!(client = %connection.addr, "TLS handshake timed out");
            return Ok(None);
        }
    };
    // Once the watchdog has spoken it is not asked again: a shutdown stays a shutdown.
    let watchdog = async move { if shutting_down { None } else { watchdog.await } };
    tokio::pin!(watchdog);
    // ALPN already chose the protocol: no sniffing (HTTP/2 over TLS needs ALPN, so a client
    // that names nothing speaks HTTP/1.1).
    match tls.get_ref().1.alpn_protocol() {
        // A TLS-ALPN-01 validation: the handshake itself was the answer.
        Some(b"acme-tls/1") => Ok(None),
        Some(b"h2") => {
            let serving = builders.http2.serve_connection(TokioIo::new(tls), service);
            // HTTP/2 says GOAWAY at once: the client knows which requests were served. A
            // connection whose handshake ended after the shutdown began has sent nothing yet:
            // its first requests, on their way, are taken before the GOAWAY.
            let linger = if shutting_down {
                RETIRE_LINGER
            } else {
                Duration::ZERO
            };
            until_closed(serving, |c| c.graceful_shutdown(), watchdog, linger).await
        }
        _ => {
            let io = TokioIo::new(framing::Watched::new(tls, flag));
            let serving = builders.http1.serve_connection(io, service).with_upgrades();
            until_closed(serving, |c| c.graceful_shutdown(), watchdog, RETIRE_LINGER).await
        }
    }
}

/// Drives a connection until it ends or the watchdog speaks: a connection that never started
/// a request is dropped at once; otherwise in-progress requests finish first (bounded when
/// the edge closes an idle connection; the agent's own grace period bounds a shutdown). At a
/// shutdown the connection first gets `linger` to end by itself.
async fn until_closed<C, E>(
    connection: C,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    watchdog: Pin<&mut impl Future<Output = Option<Verdict>>>,
    linger: Duration,
) -> Result<Option<Verdict>, BoxError>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    const CLOSING_GRACE: Duration = Duration::from_secs(10);
    let mut connection = std::pin::pin!(connection);
    let verdict = tokio::select! {
        result = connection.as_mut() => return result.map(|()| None).map_err(Into::into),
        verdict = watchdog => verdict,
    };
    if verdict.is_some_and(|v| !v.graceful()) {
        return Ok(verdict);
    }
    if verdict.is_none()
        && !linger.is_zero()
        && let Ok(result) = tokio::time::timeout(linger, connection.as_mut()).await
    {
        return result.map(|()| None).map_err(Into::into);
    }
    graceful_shutdown(connection.as_mut());
    match verdict {
        None => connection.await.map_err(Into::into)?,
        Some(_) => {
            if let Ok(result) = tokio::time::timeout(CLOSING_GRACE, connection).await {
                result.map_err(Into::into)?;
            }
        }
    }
    Ok(verdict)
}

/// One client connection, as the request handler sees it.
struct ClientConnection {
    addr: SocketAddr,
    identity: ClientIdentity,
    /// Set by the framing watcher when a request head on this connection had both
    /// Content-Length and Transfer-Encoding.
    framing_violation: AtomicBool,
}

/// Lets the framing watcher raise a connection's flag.
struct FlagHandle(Arc<ClientConnection>);

impl framing::Flag for FlagHandle {
    fn raise(&self) {
        self.0.framing_violation.store(true, Ordering::Release);
    }
}

/// What the access log and metrics need to know about a request.
struct LogContext {
    started: Instant,
    client: SocketAddr,
    version: http::Version,
    host: Arc<str>,
    method: Method,
    uri: Uri,
    user_agent: Option<HeaderValue>,
    route: Option<Arc<Route>>,
    upstream: Option<Arc<str>>,
}

pub(crate) fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Runs a closure when dropped (a request leaving the in-flight gauge, however it ends).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Ambiguous message framing, the raw material of request smuggling: refused outright
/// rather than interpreted.
fn framing_problem(headers: &HeaderMap) -> Option<&'static str> {
    let transfer_encodings: Vec<&HeaderValue> =
        headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if transfer_encodings.is_empty() {
        return None;
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Some("the request has both Content-Length and Transfer-Encoding");
    }
    let only_chunked = transfer_encodings.len() == 1
        && transfer_encodings[0]
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
    if !only_chunked {
        return Some("the only Transfer-Encoding accepted is `chunked`");
    }
    None
}

/// Turns an HTTP/2 extended CONNECT (RFC 8441: a CONNECT naming a protocol, as a browser
/// opens a WebSocket over HTTP/2) into the HTTP/1.1 upgrade request an upstream understands.
fn extended_connect_as_upgrade<B>(request: &mut Request<B>) {
    if request.method() != Method::CONNECT {
        return;
    }
    let Some(protocol) = request.extensions_mut().remove::<hyper::ext::Protocol>() else {
        return;
    };
    let Ok(upgrade) = HeaderValue::from_str(protocol.as_str()) else {
        return;
    };
    *request.method_mut() = Method::GET;
    let headers = request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
    // RFC 8441 drops the key handshake; an HTTP/1.1 WebSocket server still wants a key.
    if protocol.as_str().eq_ignore_ascii_case("websocket")
        && !headers.contains_key(header::SEC_WEBSOCKET_KEY)
    {
        headers.insert(header::SEC_WEBSOCKET_KEY, websocket_key());
    }
}

/// A `Sec-WebSocket-Key`: 16 bytes, base64. It guards against caches, not attackers, so
/// std's randomly seeded hasher is random enough.
fn websocket_key() -> HeaderValue {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(i);
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = Vec::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            encoded.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]);
        }
    }
    encoded.resize(24, b'=');
    HeaderValue::from_bytes(&encoded)
        .unwrap_or_else(|_| HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn body_too_large(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// The host a request names: its one Host header, or the URI's authority (HTTP/2, or an
/// absolute-form request line), which must agree with a Host header sent too. A request
/// that names none, several, a malformed one or two different ones gets a 400 saying so:
/// routing, the access log and the forwarding headers all rest on this one value.
fn host_sent<B>(request: &Request<B>) -> Result<&str, &'static str> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host header");
    }
    let header = match header {
        Some(value) => match value.to_str() {
            Ok(text) if is_valid_host(text) => Some(text),
            _ => return Err("the Host header is not a host name or address with an optional port"),
        },
        None => None,
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    match (header, authority) {
        (Some(header), Some(authority)) if !header.eq_ignore_ascii_case(authority) => {
            Err("the Host header names another host than the request's target")
        }
        (Some(host), _) => Ok(host),
        (None, Some(authority)) if is_valid_host(authority) => Ok(authority),
        (None, Some(_)) => Err("the request's target names no valid host"),
        (None, None) if request.version() == http::Version::HTTP_10 => Ok(""),
        (None, None) => Err("an HTTP/1.1 or HTTP/2 request must name its host"),
    }
}

/// `host[:port]` as a client may name it: a DNS name (letters, digits, `-`, `.`, `_`, `~`),
/// an IPv4 address, or an IPv6 address in brackets. Empty is allowed (RFC 9112 §3.2).
fn is_valid_host(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() > 300 {
        return false;
    }
    let (name, port) = match bytes.first() {
        Some(b'[') => match text.find(']') {
            Some(end) => {
                let inside = &bytes[1..end];
                if inside.is_empty()
                    || !inside
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                {
                    return false;
                }
                (&[][..], &bytes[end + 1..])
            }
            None => return false,
        },
        _ => match text.rfind(':') {
            Some(colon) => (&bytes[..colon], &bytes[colon..]),
            None => (bytes, &[][..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    port_ok
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(host)
}

/// The origin-form URI sent upstream, without the route's prefix when it is stripped.
fn upstream_uri(uri: &Uri, prefix: &str, strip: bool) -> Uri {
    let stripping = strip && prefix != "/";
    if uri.scheme().is_none() && uri.authority().is_none() && !stripping {
        // Already origin-form (HTTP/1.1): forward as is.
        return uri.clone();
    }
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let rewritten = if strip && prefix != "/" {
        match path_and_query.strip_prefix(prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with('?') => format!("/{rest}"),
            Some(rest) if rest.starts_with('/') => rest.to_owned(),
            _ => path_and_query.to_owned(),
        }
    } else {
        path_and_query.to_owned()
    };
    rewritten.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

/// Why a request that reached an upstream got no response to pass on.
enum Failed {
    /// The connection broke or the upstream answered with something unusable.
    Broken(String),
    /// No response head within the route's response timeout.
    TimedOut,
}

/// What a request sends upstream, by the way it goes.
// One per request, inside its future: boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    /// Written by the proxy itself (see [`h1`]); kept whole so it can be sent again.
    Direct { head: Bytes, method: Method },
    /// Through hyper's client; `None` once sent.
    Hyper(Option<Request<ProxyBody>>),
}

/// An upstream's response body, with the connection it arrives on.
enum UpstreamBody {
    Direct(h1::ResponseBody),
    Hyper {
        body: Incoming,
        sender: Option<SendRequest<ProxyBody>>,
    },
}

impl UpstreamBody {
    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Direct(body) => body.is_end_stream(),
            UpstreamBody::Hyper { body, .. } => body.is_end_stream(),
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            UpstreamBody::Direct(body) => body.poll_frame(cx).map_err(Into::into),
            UpstreamBody::Hyper { body, .. } => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    /// Hands the connection back to the pool, when the body ended cleanly and it can be reused.
    fn release(&mut self, upstream: &Upstream) {
        match self {
            UpstreamBody::Direct(body) => {
                let body = std::mem::replace(body, h1::ResponseBody::ended());
                if let Some(connection) = body.into_reusable() {
                    upstream.release_direct(connection);
                }
            }
            UpstreamBody::Hyper { sender, .. } => {
                if let Some(sender) = sender.take() {
                    upstream.release(sender);
                }
            }
        }
    }

    /// Drops the connection instead of reusing it.
    fn discard(&mut self) {
        match self {
            UpstreamBody::Direct(body) => *body = h1::ResponseBody::ended(),
            UpstreamBody::Hyper { sender, .. } => *sender = None,
        }
    }
}

/// The upstream's response body on its way to the client. When it ends, the connection goes
/// back to the pool; when it ends or is dropped, the request stops counting as in flight and
/// is logged.
pub(crate) struct TrackedBody {
    inner: UpstreamBody,
    guard: Option<InflightGuard>,
    bytes: u64,
    log: Option<(LogContext, u16)>,
    proxy: Arc<Proxy>,
    /// For an event stream: resolves when its upstream's long-lived connections must end.
    closing: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl TrackedBody {
    fn complete(&mut self, clean: bool) {
        match (clean, self.guard.as_ref()) {
            (true, Some(guard)) => self.inner.release(guard.upstream()),
            _ => self.inner.discard(),
        }
        self.guard = None;
        if let Some((log, status)) = self.log.take() {
            self.proxy.record(log, status, self.bytes);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // The client went away before the end: log what was sent; don't reuse the connection.
        self.complete(false);
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.guard.is_none() {
            // Already complete (and the connection released): nothing more to read.
            return Poll::Ready(None);
        }
        if let Some(closing) = this.closing.as_mut()
            && closing.as_mut().poll(cx).is_ready()
        {
            // The release is going away: end the stream cleanly between chunks (the client
            // sees a complete response and reconnects to the new release).
            this.complete(false);
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(None) => {
                this.complete(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.complete(false);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                // The server stops polling once it has sent Content-Length bytes, so the end
                // must be noticed here for the connection to go back to the pool.
                if this.inner.is_end_stream() {
                    this.complete(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            _ if self.guard.is_none() => http_body::SizeHint::with_exact(0),
            UpstreamBody::Direct(body) => body.size_hint(),
            UpstreamBody::Hyper { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_are_16_random_bytes_in_base64() {
        let decode = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other}"),
        };
        let first = websocket_key();
        let text = first.as_bytes();
        assert_eq!(text.len(), 24);
        assert!(text.ends_with(b"=="), "16 bytes pad to two '='");
        // 22 symbols carry 132 bits; the last two bits of the 16 bytes' encoding are zero.
        assert_eq!(decode(text[21]) & 0b1111, 0);
        assert_ne!(first, websocket_key(), "each key differs");
    }

    #[test]
    fn hosts_are_names_or_addresses_with_a_port() {
        for good in [
            "example.com",
            "Example.COM:8443",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "my_host.internal",
            "",
        ] {
            assert!(is_valid_host(good), "{good}");
        }
        for bad in [
            r#"x", for=6.6.6.6;host="y"#,
            "a b",
            "a:b",
            "a:123456",
            "[::1",
            "[]",
            "[::1]x",
            "a/b",
            "a@b",
            "a%2fb",
            "x\"",
        ] {
            assert!(!is_valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn a_request_names_exactly_one_valid_host() {
        let request = |version, uri: &str, hosts: &[&str]| {
            let mut builder = Request::builder().version(version).uri(uri);
            for host in hosts {
                builder = builder.header(header::HOST, *host);
            }
            builder.body(()).unwrap()
        };
        use http::Version;
        assert_eq!(
            host_sent(&request(Version::HTTP_11, "/", &["a.com"])),
            Ok("a.com")
        );
        assert!(host_sent(&request(Version::HTTP_11, "/", &["a.com", "b.com"])).is_err());
        assert!(host_sent(&request(Version::HTTP_11, "/", &[])).is_err());
        assert_eq!(host_sent(&request(Version::HTTP_10, "/", &[])), Ok(""));
        assert_eq!(
            host_sent(&request(Version::HTTP_2, "https://a.com/x", &[])),
            Ok("a.com")
        );
        assert!(host_sent(&request(Version::HTTP_2, "https://a.com/x", &["b.com"])).is_err());
        assert!(host_sent(&request(Version::HTTP_11, "/", &["a\", x"])).is_err());
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn prefixes_are_stripped_on_segment_boundaries() {
        let uri: Uri = "/api/users?id=1".parse().unwrap();
        assert_eq!(upstream_uri(&uri, "/api", true), "/users?id=1");
        assert_eq!(upstream_uri(&uri, "/api", false), "/api/users?id=1");
        assert_eq!(upstream_uri(&"/api".parse().unwrap(), "/api", true), "/");
        assert_eq!(
            upstream_uri(&"/api?x=1".parse().unwrap(), "/api", true),
            "/?x=1"
        );
        assert_eq!(upstream_uri(&uri, "/", true), "/api/users?id=1");
    }
}
