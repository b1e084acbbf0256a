//! Which client connections the edge keeps, and for how long.
//!
//! A connection costs a file descriptor and a slot under `max_connections` whether or not the
//! client ever sends anything, so the edge does not wait on clients:
//! - every connection must send its first byte within `first_byte_timeout` and a whole first
//!   request (TLS handshake, protocol detection, HTTP/2 preface and SETTINGS, request head)
//!   within `header_read_timeout` of being accepted, or it is closed;
//! - a connection with no request in progress for `idle_timeout` is closed gracefully
//!   (hyper's own header timeout already bounds HTTP/1's later request heads);
//! - a connection whose client takes nothing of a response ready for it for `send_timeout`
//!   (a full TCP window, an HTTP/2 flow-control window left at zero) is closed: otherwise it
//!   would count as busy forever;
//! - an upgraded connection (a WebSocket) keeps its slot until it ends;
//! - one client address (an IPv6 /64 counts as one) may hold at most
//!   `max_connections_per_client`; more are closed at once;
//! - at `max_connections`, the connection idle the longest (silent ones included) is closed to
//!   make room for a new client; only when every connection has a request in progress do new
//!   clients wait in the listen queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// The address a per-client cap counts by: an IPv4 address, or an IPv6 /64 (one subscriber's
/// prefix; a client can pick any address in it at will).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(u32::from(v4)),
                None => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was not admitted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// This client already holds its share; the new connection is closed.
    ClientCap,
    /// The edge holds `max_connections`; room is being made (or awaited).
    Full,
}

/// The limits a connection lives under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    pub first_byte: Duration,
    pub first_request: Duration,
    pub idle: Duration,
    pub send: Duration,
}

/// A clock read on the request path costs more than everything else this module does per
/// request, and the deadlines here are tens of seconds: requests note times from this one,
/// which every event loop's heartbeat advances twice a second.
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
static COARSE_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Advances the coarse clock (the heartbeat calls this).
pub(crate) fn tick() {
    let ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
    COARSE_MS.fetch_max(ms, Ordering::Relaxed);
}

/// Milliseconds after the epoch, as of the last tick.
fn coarse_ms() -> u64 {
    COARSE_MS.load(Ordering::Relaxed)
}

fn at_ms(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms)
}

/// At the connection cap, a connection whose client has taken nothing for this long may be
/// closed for a new client when none is idle.
const EVICTABLE_STALL: Duration = Duration::from_secs(1);

/// Every open client connection of one proxy (all its listeners and threads).
pub(crate) struct Admission {
    max_total: usize,
    max_per_client: usize,
    registry: Mutex<Registry>,
    /// Signalled whenever a connection leaves.
    freed: Notify,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    live: HashMap<u64, Arc<Liveness>>,
    per_client: HashMap<ClientKey, u32>,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_client: max_per_client.max(1),
            registry: Mutex::new(Registry::default()),
            freed: Notify::new(),
        })
    }

    /// Takes a slot for a new connection from `client`.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, Refusal> {
        let key = ClientKey::of(client);
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let held = registry.per_client.get(&key).copied().unwrap_or(0);
        if held as usize >= self.max_per_client {
            return Err(Refusal::ClientCap);
        }
        if registry.live.len() >= self.max_total {
            return Err(Refusal::Full);
        }
        registry.next_id += 1;
        let id = registry.next_id;
        let liveness = Arc::new(Liveness::new());
        registry.live.insert(id, Arc::clone(&liveness));
        *registry.per_client.entry(key).or_insert(0) += 1;
        Ok(Admitted {
            admission: Arc::clone(self),
            id,
            key,
            liveness,
        })
    }

    /// Asks the connection idle the longest to close, so a new client can be served. Returns
    /// false when every connection has a request in progress.
    pub(crate) fn evict_idlest(&self) -> bool {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let candidates = || {
            registry
                .live
                .values()
                .filter(|l| !l.evicted.load(Ordering::Acquire))
        };
        let now = Instant::now();
        // The idlest; failing that, the one whose client has been taking nothing longest.
        let idlest = candidates()
            .filter(|l| l.in_progress.load(Ordering::Acquire) == 0)
            .min_by_key(|l| l.idle_since())
            .or_else(|| {
                candidates()
                    .filter(|l| l.waiting_on_client.load(Ordering::Acquire) > 0)
                    .filter(|l| {
                        now.saturating_duration_since(l.client_progress()) >= EVICTABLE_STALL
                    })
                    .min_by_key(|l| l.client_progress())
            });
        match idlest {
            Some(liveness) => {
                liveness.evicted.store(true, Ordering::Release);
                liveness.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Resolves once some connection has left (or soon after, to look again).
    pub(crate) async fn wait_freed(&self) {
        let _ = tokio::time::timeout(Duration::from_millis(100), self.freed.notified()).await;
    }

    /// Resolves once no connection is left.
    pub(crate) async fn wait_empty(&self) {
        while self.open() > 0 {
            self.wait_freed().await;
        }
    }

    pub(crate) fn open(&self) -> usize {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .len()
    }
}

/// A connection's slot: given back when dropped, that is when the connection and every request
/// it started (an upgraded connection's splice included) are done.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    id: u64,
    key: ClientKey,
    pub(crate) liveness: Arc<Liveness>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut registry = self
            .admission
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        registry.live.remove(&self.id);
        if let Some(count) = registry.per_client.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                registry.per_client.remove(&self.key);
            }
        }
        drop(registry);
        self.admission.freed.notify_waiters();
    }
}

/// What the edge knows of one connection's activity, shared by its task, its requests and the
/// registry.
pub(crate) struct Liveness {
    accepted: Instant,
    got_bytes: AtomicBool,
    started_a_request: AtomicBool,
    in_progress: AtomicU32,
    /// When the last request in progress ended (coarse milliseconds after the epoch).
    idle_since_ms: AtomicU64,
    /// Responses with something ready for the client that it has not asked for yet.
    waiting_on_client: AtomicU32,
    /// When the client last took part of a response or a request began (coarse
    /// milliseconds after the epoch).
    client_progress_ms: AtomicU64,
    evicted: AtomicBool,
    evict: Notify,
}

/// Why the edge closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not one byte within the first-byte deadline.
    Silent,
    /// No whole first request within the deadline (a partial head or preface).
    NoRequest,
    /// No request in progress for the idle timeout.
    Idle,
    /// Closed to make room for a new client.
    Evicted,
    /// The client took nothing of a ready response for the send timeout.
    Stalled,
}

impl Verdict {
    /// Whether the connection may be closed gracefully (no request was ever started, so there
    /// is nothing to finish otherwise).
    pub(crate) fn graceful(self) -> bool {
        matches!(self, Verdict::Idle | Verdict::Evicted)
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            Verdict::Silent => "silent",
            Verdict::NoRequest => "no_request",
            Verdict::Idle => "idle",
            Verdict::Evicted => "evicted",
            Verdict::Stalled => "stalled",
        }
    }
}

impl Liveness {
    fn new() -> Self {
        tick();
        let now = coarse_ms();
        Self {
            accepted: at_ms(now),
            got_bytes: AtomicBool::new(false),
            started_a_request: AtomicBool::new(false),
            in_progress: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(now),
            waiting_on_client: AtomicU32::new(0),
            client_progress_ms: AtomicU64::new(now),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    /// The client sent something (called on the first non-empty read).
    pub(crate) fn saw_bytes(&self) {
        self.got_bytes.store(true, Ordering::Relaxed);
    }

    pub(crate) fn has_seen_bytes(&self) -> bool {
        self.got_bytes.load(Ordering::Relaxed)
    }

    fn idle_since(&self) -> Instant {
        at_ms(self.idle_since_ms.load(Ordering::Acquire))
    }

    fn client_progress(&self) -> Instant {
        at_ms(self.client_progress_ms.load(Ordering::Acquire))
    }

    fn note_client_progress(&self) {
        let ms = coarse_ms();
        // Most calls find the same coarse time: no store (and no cache-line traffic) then.
        if self.client_progress_ms.load(Ordering::Relaxed) != ms {
            self.client_progress_ms.store(ms, Ordering::Release);
        }
    }

    /// What is due at `now`: a verdict, or when to look again.
    fn due(&self, now: Instant, deadlines: &Deadlines) -> Result<Instant, Verdict> {
        if !self.started_a_request.load(Ordering::Acquire) {
            let mut next = self.accepted + deadlines.first_request;
            if now >= next {
                return Err(Verdict::NoRequest);
            }
            if !self.has_seen_bytes() {
                let first_byte = self.accepted + deadlines.first_byte;
                if now >= first_byte {
                    return Err(Verdict::Silent);
                }
                next = next.min(first_byte);
            }
            // A request may start and stall before these deadlines: look by then too.
            return Ok(next.min(now + deadlines.send));
        }
        if self.in_progress.load(Ordering::Acquire) > 0 {
            if self.waiting_on_client.load(Ordering::Acquire) == 0 {
                // A response may become ready (and stall) later: look again by then, so a
                // stall shows within twice the send timeout without a wake-up per frame.
                return Ok(now + deadlines.send.min(deadlines.idle));
            }
            let until = self.client_progress() + deadlines.send;
            if now >= until {
                return Err(Verdict::Stalled);
            }
            return Ok(until.min(now + deadlines.idle));
        }
        let until = self.idle_since() + deadlines.idle;
        if now >= until {
            return Err(Verdict::Idle);
        }
        Ok(until.min(now + deadlines.send))
    }

    /// Resolves when the connection should be closed, and says why.
    pub(crate) async fn watch(&self, deadlines: Deadlines) -> Verdict {
        loop {
            tick();
            let next = match self.due(Instant::now(), &deadlines) {
                Ok(next) => next,
                Err(verdict) => return verdict,
            };
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = self.evict.notified() => return Verdict::Evicted,
            }
        }
    }
}

impl Admitted {
    /// A request reached the handler; it counts as in progress until the guard is dropped
    /// (with the response body, or the upgraded connection), and holds the connection's slot
    /// until then.
    pub(crate) fn begin_request(self: &Arc<Self>) -> RequestActivity {
        let liveness = &self.liveness;
        if !liveness.started_a_request.load(Ordering::Relaxed) {
            liveness.started_a_request.store(true, Ordering::Relaxed);
        }
        liveness.in_progress.fetch_add(1, Ordering::AcqRel);
        liveness.note_client_progress();
        RequestActivity {
            admitted: Arc::clone(self),
            waiting: false,
        }
    }
}

/// A request in progress on a connection; dropping it ends it.
pub(crate) struct RequestActivity {
    admitted: Arc<Admitted>,
    /// Counted in `waiting_on_client`: its response has something ready for the client.
    waiting: bool,
}

impl RequestActivity {
    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting == waiting {
            return;
        }
        self.waiting = waiting;
        let counter = &self.admitted.liveness.waiting_on_client;
        if waiting {
            counter.fetch_add(1, Ordering::AcqRel);
        } else {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The response is handed to the server: ready for the client until it asks for it.
    pub(crate) fn response_ready(&mut self) {
        self.admitted.liveness.note_client_progress();
        self.set_waiting(true);
    }

    /// The server asked the response body for more (the client took what came before);
    /// `ready` says whether the body had something (so the client is waited on again) or
    /// is waiting for the upstream (so it is not), or ended.
    pub(crate) fn body_polled(&mut self, ready: bool) {
        self.admitted.liveness.note_client_progress();
        self.set_waiting(ready);
    }
}

impl Drop for RequestActivity {
    fn drop(&mut self) {
        self.set_waiting(false);
        let liveness = &self.admitted.liveness;
        if liveness.in_progress.fetch_sub(1, Ordering::AcqRel) == 1 {
            liveness.idle_since_ms.store(coarse_ms(), Ordering::Release);
        }
    }
}

/// A client's byte stream, noting the first byte it sends (for the first-byte deadline).
pub(crate) struct Noticed<S> {
    inner: S,
    liveness: Option<Arc<Liveness>>,
}

impl<S> Noticed<S> {
    pub(crate) fn new(inner: S, liveness: Arc<Liveness>) -> Self {
        Self {
            inner,
            liveness: Some(liveness),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Noticed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && let Some(liveness) = self.liveness.take()
        {
            liveness.saw_bytes();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Noticed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines() -> Deadlines {
        Deadlines {
            first_byte: Duration::from_secs(5),
            first_request: Duration::from_secs(20),
            idle: Duration::from_secs(60),
            send: Duration::from_secs(30),
        }
    }

    #[test]
    fn clients_are_counted_by_address_and_ipv6_prefix() {
        let v4 = |s: &str| ClientKey::of(s.parse().unwrap());
        assert_eq!(v4("10.0.0.1"), v4("::ffff:10.0.0.1"));
        assert_ne!(v4("10.0.0.1"), v4("10.0.0.2"));
        assert_eq!(v4("2001:db8:1:2::1"), v4("2001:db8:1:2:ffff::9"));
        assert_ne!(v4("2001:db8:1:2::1"), v4("2001:db8:1:3::1"));
    }

    #[test]
    fn a_client_over_its_share_is_refused_and_others_are_not() {
        let admission = Admission::new(10, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Refusal::ClientCap));
        let _other = admission.admit(b).unwrap();
        let _same_prefix = admission.admit("2001:db8::2".parse().unwrap()).unwrap();
        assert_eq!(
            admission.admit("2001:db8::3".parse().unwrap()).err(),
            Some(Refusal::ClientCap),
            "one /64 is one client"
        );
        drop(first);
        assert!(
            admission.admit(a).is_ok(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn when_full_the_idlest_connection_is_asked_to_leave_never_a_busy_one() {
        let admission = Admission::new(4, 10);
        let admit = |ip: &str| Arc::new(admission.admit(ip.parse().unwrap()).unwrap());
        let busy = admit("192.0.2.1");
        let _request = busy.begin_request();
        let silent = admit("192.0.2.2");
        std::thread::sleep(Duration::from_millis(5));
        let served = admit("192.0.2.3");
        drop(served.begin_request());
        // A client that takes nothing of its response.
        let stalled = admit("192.0.2.4");
        let mut stalled_request = stalled.begin_request();
        stalled_request.response_ready();
        assert_eq!(
            admission.admit("192.0.2.5".parse().unwrap()).err(),
            Some(Refusal::Full)
        );
        assert!(admission.evict_idlest());
        assert!(
            silent.liveness.evicted.load(Ordering::Acquire),
            "idle since accept: oldest"
        );
        assert!(admission.evict_idlest());
        assert!(served.liveness.evicted.load(Ordering::Acquire));
        assert!(
            !admission.evict_idlest(),
            "busy ones stay, a stalled one too while its stall is fresh"
        );
        std::thread::sleep(EVICTABLE_STALL);
        assert!(
            admission.evict_idlest(),
            "a client stalled for a while makes room"
        );
        assert!(stalled.liveness.evicted.load(Ordering::Acquire));
        assert!(!busy.liveness.evicted.load(Ordering::Acquire));
        drop(silent);
        assert_eq!(admission.open(), 3);
    }

    #[test]
    fn a_request_holds_its_connections_slot_until_it_ends() {
        let admission = Admission::new(1, 1);
        let connection = Arc::new(admission.admit("192.0.2.1".parse().unwrap()).unwrap());
        let upgraded = connection.begin_request();
        drop(connection);
        assert_eq!(admission.open(), 1, "a WebSocket's splice keeps the slot");
        drop(upgraded);
        assert_eq!(admission.open(), 0);
    }

    #[test]
    fn deadlines_run_from_accept_until_the_first_request() {
        let admission = Admission::new(1, 1);
        let admitted = Arc::new(admission.admit("192.0.2.1".parse().unwrap()).unwrap());
        let liveness = Arc::clone(&admitted.liveness);
        let at = |secs: u64| liveness.accepted + Duration::from_secs(secs);
        let d = deadlines();
        assert_eq!(liveness.due(at(1), &d), Ok(at(5)));
        assert_eq!(liveness.due(at(5), &d), Err(Verdict::Silent));
        liveness.saw_bytes();
        assert_eq!(liveness.due(at(5), &d), Ok(at(20)));
        assert_eq!(liveness.due(at(20), &d), Err(Verdict::NoRequest));
        let mut request = admitted.begin_request();
        let began = liveness.client_progress();
        assert_eq!(
            liveness.due(at(100), &d),
            Ok(at(130)),
            "busy: never idle, but looked at"
        );
        // A response ready for a client that takes nothing: cut after the send timeout.
        request.response_ready();
        let ready = liveness.client_progress();
        assert!(ready >= began);
        assert_eq!(liveness.due(ready, &d), Ok(ready + d.send));
        assert_eq!(liveness.due(ready + d.send, &d), Err(Verdict::Stalled));
        // The client takes it, and the body waits for the upstream: not the client's stall.
        request.body_polled(false);
        assert_eq!(
            liveness.due(ready + d.send, &d),
            Ok(ready + d.send + d.send)
        );
        drop(request);
        let ended = liveness.idle_since();
        assert_eq!(
            liveness.due(ended, &d),
            Ok(ended + d.send),
            "looked at again"
        );
        assert_eq!(liveness.due(ended + d.send, &d), Ok(ended + d.idle));
        assert_eq!(
            liveness.due(ended + d.idle, &d),
            Err(Verdict::Idle),
            "idle for the idle timeout"
        );
    }
}
