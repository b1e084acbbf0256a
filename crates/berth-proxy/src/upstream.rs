//! One upstream (a container's address): its pooled keep-alive connections, in-flight count
//! and passive health.

use crate::{ProxyBody, h1};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Idle connections older than this are dropped rather than reused: the upstream may be
/// about to close them, and a request sent just as it does would be lost.
const IDLE_LIMIT: Duration = Duration::from_secs(20);
const MAX_IDLE: usize = 128;

/// One thread's idle connections to an upstream, and when each became idle.
#[derive(Default)]
struct IdleConnections {
    /// Driven by hyper's client (requests with a body, upgrades).
    hyper: Vec<(SendRequest<ProxyBody>, Instant)>,
    /// Plain sockets for the proxy's own HTTP/1.1 exchanges (body-less requests).
    direct: Vec<(h1::Connection, Instant)>,
}

pub struct Upstream {
    addr: SocketAddr,
    name: Arc<str>,
    inflight: AtomicUsize,
    /// Idle connections by the thread whose event loop drives them: a request only reuses
    /// its own thread's, so no response crosses threads.
    idle: Mutex<HashMap<ThreadId, IdleConnections>>,
    /// Milliseconds since `epoch` until which the upstream is skipped after refusing a
    /// connection (passive health).
    down_until: AtomicU64,
    epoch: Instant,
    retired: AtomicBool,
    /// Failing its health checks (berth's monitor): skipped while another upstream is
    /// available, like one marked down.
    unhealthy: AtomicBool,
    drained: Notify,
    /// Of `inflight`, the WebSockets (and other upgraded connections) and event streams:
    /// they drain on their own limit, and end properly when `closing` turns true.
    long_lived: AtomicUsize,
    closing: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {name} ({addr}) timed out after {timeout:?}")]
    Timeout {
        name: String,
        addr: SocketAddr,
        timeout: Duration,
    },
    #[error("cannot connect to {name} ({addr}): {message}")]
    Failed {
        name: String,
        addr: SocketAddr,
        message: String,
    },
}

impl Upstream {
    pub fn new(addr: SocketAddr, name: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            addr,
            name: Arc::from(name.into()),
            inflight: AtomicUsize::new(0),
            idle: Mutex::new(HashMap::new()),
            down_until: AtomicU64::new(0),
            epoch: Instant::now(),
            retired: AtomicBool::new(false),
            unhealthy: AtomicBool::new(false),
            drained: Notify::new(),
            long_lived: AtomicUsize::new(0),
            closing: tokio::sync::watch::Sender::new(false),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// Requests sent to this upstream whose responses have not finished.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Of those, the WebSockets (and other upgraded connections) and event streams.
    pub fn long_lived(&self) -> usize {
        self.long_lived.load(Ordering::Acquire)
    }

    /// Ordinary requests in flight: all but the long-lived ones.
    pub fn requests_in_flight(&self) -> usize {
        self.inflight().saturating_sub(self.long_lived())
    }

    /// Waits until no request is in flight, or the timeout passes. Returns whether it drained.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, Self::inflight).await
    }

    /// Waits until no ordinary request is in flight (long-lived connections may stay), or
    /// the timeout passes. Returns whether they drained.
    pub async fn wait_requests_drained(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, Self::requests_in_flight).await
    }

    async fn wait_until(&self, timeout: Duration, count: fn(&Self) -> usize) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if count(self) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return count(self) == 0;
            }
        }
    }

    /// Ends this upstream's long-lived connections properly: WebSockets get a close frame
    /// (1012) at a frame boundary, event streams end after their last whole chunk.
    pub fn close_long_lived(&self) {
        self.closing.send_replace(true);
    }

    pub(crate) fn closing_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn notify_if_drained(&self) {
        if self.requests_in_flight() == 0 {
            self.drained.notify_waiters();
        }
    }

    /// Stops reusing connections: called once the upstream is out of every route and drained,
    /// so its idle sockets close before the container gets SIGTERM.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.lock_idle().clear();
    }

    pub fn is_available(&self) -> bool {
        !self.unhealthy.load(Ordering::Acquire)
            && self.elapsed_ms() >= self.down_until.load(Ordering::Acquire)
    }

    /// Takes the upstream out of rotation (`false`) or puts it back: while out, requests go
    /// to the route's other upstreams, and to this one only when none is available.
    pub fn set_in_rotation(&self, in_rotation: bool) {
        self.unhealthy.store(!in_rotation, Ordering::Release);
    }

    pub fn in_rotation(&self) -> bool {
        !self.unhealthy.load(Ordering::Acquire)
    }

    pub(crate) fn mark_down(&self, for_how_long: Duration) {
        let until = self.elapsed_ms() + for_how_long.as_millis() as u64;
        self.down_until.store(until, Ordering::Release);
    }

    fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, HashMap<ThreadId, IdleConnections>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn begin_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard {
            upstream: Arc::clone(self),
            permit: None,
            long_lived: false,
        }
    }

    fn pop_idle<T>(
        &self,
        pick: impl FnOnce(&mut IdleConnections) -> &mut Vec<(T, Instant)>,
    ) -> Option<(T, Instant)> {
        self.lock_idle()
            .get_mut(&std::thread::current().id())
            .and_then(|idle| pick(idle).pop())
    }

    fn push_idle<T>(
        &self,
        connection: T,
        pick: impl FnOnce(&mut IdleConnections) -> &mut Vec<(T, Instant)>,
    ) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        let mut idle = self.lock_idle();
        let mine = pick(idle.entry(std::thread::current().id()).or_default());
        if mine.len() < MAX_IDLE {
            mine.push((connection, Instant::now()));
        }
    }

    /// A ready connection driven by hyper's client: a pooled one if any is fresh, else a new
    /// one.
    pub(crate) async fn connection(
        &self,
        timeout: Duration,
    ) -> Result<SendRequest<ProxyBody>, ConnectError> {
        while let Some((mut sender, since)) = self.pop_idle(|idle| &mut idle.hyper) {
            if sender.is_closed() || since.elapsed() > IDLE_LIMIT {
                continue;
            }
            if sender.is_ready() {
                return Ok(sender);
            }
            // Normally ready at once; don't wait on a stuck one.
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(50), sender.ready()).await
            {
                return Ok(sender);
            }
        }
        let stream = self.connect(timeout).await?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Failed {
                name: self.name.to_string(),
                addr: self.addr,
                message: e.to_string(),
            })?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(upstream = %name, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// A plain connection for [`h1`] exchanges: a pooled one that is still usable (and
    /// `true`, it was reused), else a new one.
    pub(crate) async fn direct_connection(
        &self,
        timeout: Duration,
    ) -> Result<(h1::Connection, bool), ConnectError> {
        while let Some((mut connection, since)) = self.pop_idle(|idle| &mut idle.direct) {
            if since.elapsed() <= IDLE_LIMIT && connection.is_usable() {
                return Ok((connection, true));
            }
        }
        Ok((h1::Connection::new(self.connect(timeout).await?), false))
    }

    async fn connect(&self, timeout: Duration) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Err(_) => Err(ConnectError::Timeout {
                name: self.name.to_string(),
                addr: self.addr,
                timeout,
            }),
            Ok(Err(e)) => Err(ConnectError::Failed {
                name: self.name.to_string(),
                addr: self.addr,
                message: e.to_string(),
            }),
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
        }
    }

    /// Returns a hyper connection whose response has finished to the pool.
    pub(crate) fn release(&self, sender: SendRequest<ProxyBody>) {
        if !sender.is_closed() {
            self.push_idle(sender, |idle| &mut idle.hyper);
        }
    }

    /// Returns a plain connection whose response ended cleanly to the pool.
    pub(crate) fn release_direct(&self, connection: h1::Connection) {
        self.push_idle(connection, |idle| &mut idle.direct);
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("inflight", &self.inflight())
            .finish()
    }
}

/// Counts a request as in flight until dropped (when its response body ends or is abandoned).
pub(crate) struct InflightGuard {
    upstream: Arc<Upstream>,
    /// The route's concurrency permit, released with the guard.
    permit: Option<crate::limits::ConcurrencyPermit>,
    /// Counted among the upstream's long-lived connections.
    long_lived: bool,
}

impl InflightGuard {
    pub(crate) fn hold(&mut self, permit: Option<crate::limits::ConcurrencyPermit>) {
        self.permit = permit;
    }

    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// This request became a WebSocket (or an event stream): it drains on the long-lived
    /// limit, not the ordinary one.
    pub(crate) fn mark_long_lived(&mut self) {
        if !self.long_lived {
            self.long_lived = true;
            self.upstream.long_lived.fetch_add(1, Ordering::AcqRel);
            self.upstream.notify_if_drained();
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.long_lived {
            self.upstream.long_lived.fetch_sub(1, Ordering::AcqRel);
        }
        self.upstream.inflight.fetch_sub(1, Ordering::AcqRel);
        self.upstream.notify_if_drained();
    }
}
