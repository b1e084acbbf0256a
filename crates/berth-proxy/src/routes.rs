//! The route table: which upstreams serve a request, by host and path prefix. Tables are
//! immutable; a switch builds a new one and swaps it in atomically.

use crate::limits::{ConcurrencyLimit, RateLimit, RateLimiter, RouteLimiters};
use crate::metrics::{AppMetrics, ProxyMetrics};
use crate::upstream::Upstream;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How a route picks among its upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The upstream with the fewest requests in flight (round robin among equals).
    LeastConnections,
}

/// Per-route behaviour, from the manifest's `route` table.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSettings {
    /// Remove the path prefix before forwarding.
    pub strip_prefix: bool,
    /// Largest request body accepted (413 beyond it).
    pub max_body: u64,
    /// How long the upstream may take to send response headers (504 beyond it).
    pub response_timeout: Duration,
    /// Requests per client address (429 beyond it).
    pub rate_limit: Option<RateLimit>,
    /// Requests served at once, WebSockets and streams included until they end (503 beyond
    /// it). The route's own cap on connections to the app, where the agent-wide
    /// `max_connections` caps client connections before any route is known.
    pub max_concurrent: Option<usize>,
    pub balance: Balance,
    /// Redirect plain HTTP to HTTPS when HTTPS can be served for the host.
    pub redirect_https: bool,
    /// Send Strict-Transport-Security over HTTPS.
    pub hsts: bool,
    /// Serve a 503 maintenance page with this message instead of proxying.
    pub maintenance: Option<String>,
    /// Only logged-in console users may pass (checked by the proxy's [`crate::LoginGate`]).
    pub auth: Option<crate::login::RouteAuth>,
    /// Plain HTTP gets a 503 until HTTPS can be served (then a redirect): for the console,
    /// whose login form must never be served in clear text.
    pub https_only: bool,
    /// The proxy answers with the app's public status page ([`crate::StatusPages`]) instead
    /// of proxying (the route has no upstreams).
    pub status_page: bool,
}

impl Default for RouteSettings {
    fn default() -> Self {
        Self {
            strip_prefix: false,
            max_body: 10 << 20,
            response_timeout: Duration::from_secs(60),
            rate_limit: None,
            max_concurrent: None,
            balance: Balance::RoundRobin,
            redirect_https: true,
            hsts: true,
            maintenance: None,
            auth: None,
            https_only: false,
            status_page: false,
        }
    }
}

/// What the agent asks the proxy to route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub app: String,
    pub service: String,
    pub release: i64,
    /// Lower-case host names, optionally `*.example.com`; empty routes every host.
    pub domains: Vec<String>,
    /// `/` or a prefix without a trailing slash.
    pub path: String,
    pub upstreams: Vec<Arc<Upstream>>,
    pub settings: RouteSettings,
}

#[derive(Debug)]
pub(crate) struct Route {
    pub spec: RouteSpec,
    pub limiter: Option<Arc<RateLimiter>>,
    pub concurrency: Option<Arc<ConcurrencyLimit>>,
    /// Shared copies of names the access log records for every request.
    pub app: Arc<str>,
    pub service: Arc<str>,
    pub metrics: Arc<AppMetrics>,
    next: AtomicUsize,
}

impl Route {
    /// Picks an upstream that is not marked down; `skip` excludes ones already tried for this
    /// request.
    pub fn pick(&self, skip: &[usize]) -> Option<(usize, Arc<Upstream>)> {
        let upstreams = &self.spec.upstreams;
        if upstreams.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        let mut fallback = None;
        for offset in 0..upstreams.len() {
            let index = (start + offset) % upstreams.len();
            if skip.contains(&index) {
                continue;
            }
            let upstream = &upstreams[index];
            if !upstream.is_available() {
                fallback.get_or_insert(index);
                continue;
            }
            match self.spec.settings.balance {
                Balance::RoundRobin => return Some((index, Arc::clone(upstream))),
                Balance::LeastConnections => {
                    let load = upstream.inflight();
                    if best.is_none_or(|(_, least)| load < least) {
                        best = Some((index, load));
                    }
                }
            }
        }
        // Every untried upstream is marked down: try one anyway rather than fail outright.
        best.map(|(index, _)| index)
            .or(fallback)
            .map(|index| (index, Arc::clone(&upstreams[index])))
    }

    fn matches_path(&self, path: &str) -> bool {
        let prefix = &self.spec.path;
        prefix == "/"
            || path == prefix
            || path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    exact: HashMap<String, Vec<Arc<Route>>>,
    wildcard: Vec<(String, Arc<Route>)>,
    any_host: Vec<Arc<Route>>,
}

/// A route as shown by `berth status`.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSummary {
    pub app: String,
    pub service: String,
    pub release: i64,
    pub domains: Vec<String>,
    pub path: String,
    pub upstreams: Vec<String>,
    /// Only logged-in console users may pass.
    pub auth: bool,
}

type LimiterKey = (String, String, String);

impl RouteTable {
    pub fn build<'a>(
        specs: impl Iterator<Item = &'a RouteSpec>,
        limiters: &HashMap<LimiterKey, RouteLimiters>,
        metrics: &ProxyMetrics,
    ) -> Self {
        let mut table = RouteTable::default();
        let mut per_app: HashMap<String, Arc<AppMetrics>> = HashMap::new();
        for spec in specs {
            let limiters = limiters
                .get(&(spec.app.clone(), spec.service.clone(), spec.path.clone()))
                .cloned()
                .unwrap_or_default();
            let app_metrics = per_app
                .entry(spec.app.clone())
                .or_insert_with(|| Arc::new(metrics.for_app(&spec.app)))
                .clone();
            let route = Arc::new(Route {
                spec: spec.clone(),
                limiter: limiters.rate,
                concurrency: limiters.concurrency,
                app: Arc::from(spec.app.as_str()),
                service: Arc::from(spec.service.as_str()),
                metrics: app_metrics,
                next: AtomicUsize::new(0),
            });
            if spec.domains.is_empty() {
                table.any_host.push(route);
                continue;
            }
            for domain in &spec.domains {
                match domain.strip_prefix("*.") {
                    Some(suffix) => table
                        .wildcard
                        .push((format!(".{suffix}"), Arc::clone(&route))),
                    None => table
                        .exact
                        .entry(domain.clone())
                        .or_default()
                        .push(Arc::clone(&route)),
                }
            }
        }
        // Longest prefix first, so the most specific route wins.
        let by_length = |a: &Arc<Route>, b: &Arc<Route>| b.spec.path.len().cmp(&a.spec.path.len());
        for routes in table.exact.values_mut() {
            routes.sort_by(by_length);
        }
        table.any_host.sort_by(by_length);
        table
            .wildcard
            .sort_by_key(|(_, route)| std::cmp::Reverse(route.spec.path.len()));
        table
    }

    /// Exact host, then wildcard host, then routes for every host; longest path prefix first.
    pub fn lookup(&self, host: &str, path: &str) -> Option<Arc<Route>> {
        if let Some(route) = self
            .exact
            .get(host)
            .and_then(|routes| routes.iter().find(|r| r.matches_path(path)))
        {
            return Some(Arc::clone(route));
        }
        let wildcard = self.wildcard.iter().find(|(suffix, route)| {
            // `*.example.com` matches exactly one more label.
            host.strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.'))
                && route.matches_path(path)
        });
        if let Some((_, route)) = wildcard {
            return Some(Arc::clone(route));
        }
        self.any_host.iter().find(|r| r.matches_path(path)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(service: &str, domains: &[&str], path: &str) -> RouteSpec {
        RouteSpec {
            app: "a".into(),
            service: service.into(),
            release: 1,
            domains: domains.iter().map(|d| d.to_string()).collect(),
            path: path.into(),
            upstreams: vec![],
            settings: RouteSettings::default(),
        }
    }

    fn served_by(table: &RouteTable, host: &str, path: &str) -> Option<String> {
        table.lookup(host, path).map(|r| r.spec.service.clone())
    }

    #[test]
    fn most_specific_route_wins() {
        let specs = [
            spec("site", &["example.com"], "/"),
            spec("api", &["example.com"], "/api"),
            spec("tenant", &["*.example.com"], "/"),
            spec("fallback", &[], "/"),
        ];
        let table = RouteTable::build(specs.iter(), &HashMap::new(), &ProxyMetrics::default());
        assert_eq!(served_by(&table, "example.com", "/"), Some("site".into()));
        assert_eq!(served_by(&table, "example.com", "/api"), Some("api".into()));
        assert_eq!(
            served_by(&table, "example.com", "/api/users"),
            Some("api".into())
        );
        assert_eq!(
            served_by(&table, "example.com", "/apiary"),
            Some("site".into()),
            "prefixes match whole segments"
        );
        assert_eq!(
            served_by(&table, "acme.example.com", "/"),
            Some("tenant".into())
        );
        assert_eq!(
            served_by(&table, "a.b.example.com", "/"),
            Some("fallback".into()),
            "a wildcard is one label"
        );
        assert_eq!(
            served_by(&table, "other.org", "/x"),
            Some("fallback".into())
        );
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let specs = [spec("api", &["example.com"], "/api")];
        let table = RouteTable::build(specs.iter(), &HashMap::new(), &ProxyMetrics::default());
        assert_eq!(served_by(&table, "example.com", "/"), None);
        assert_eq!(served_by(&table, "other.org", "/api"), None);
    }

    #[test]
    fn least_connections_prefers_the_idle_upstream() {
        let busy = Upstream::new("127.0.0.1:1".parse().unwrap(), "busy");
        let idle = Upstream::new("127.0.0.1:2".parse().unwrap(), "idle");
        let mut s = spec("web", &[], "/");
        s.settings.balance = Balance::LeastConnections;
        s.upstreams = vec![busy.clone(), idle.clone()];
        let table = RouteTable::build(
            std::iter::once(&s),
            &HashMap::new(),
            &ProxyMetrics::default(),
        );
        let route = table.lookup("x", "/").unwrap();
        let _held = busy.begin_request();
        for _ in 0..4 {
            assert_eq!(route.pick(&[]).unwrap().1.name(), "idle");
        }
    }

    #[test]
    fn an_upstream_out_of_rotation_is_skipped_unless_it_is_the_only_one() {
        let sick = Upstream::new("127.0.0.1:1".parse().unwrap(), "sick");
        let well = Upstream::new("127.0.0.1:2".parse().unwrap(), "well");
        let mut s = spec("web", &[], "/");
        s.upstreams = vec![sick.clone(), well.clone()];
        let table = RouteTable::build(
            std::iter::once(&s),
            &HashMap::new(),
            &ProxyMetrics::default(),
        );
        let route = table.lookup("x", "/").unwrap();
        sick.set_in_rotation(false);
        for _ in 0..4 {
            assert_eq!(route.pick(&[]).unwrap().1.name(), "well");
        }
        // With the healthy one already tried, the sick one is still better than nothing.
        assert_eq!(route.pick(&[1]).unwrap().1.name(), "sick");
        sick.set_in_rotation(true);
        let picked: Vec<String> = (0..4)
            .map(|_| route.pick(&[]).unwrap().1.name().to_owned())
            .collect();
        assert!(picked.iter().any(|n| n == "sick"), "{picked:?}");
    }
}
