//! What each app has routed, in one owner: the live apps (manifest and upstreams), the
//! proxy's route table and the edge's certificate domains. Every change goes through
//! [`Routing::install`], which swaps an app's routes and recomputes the domains in one step,
//! so the three never disagree.

use crate::edge::{Edge, LiveApp};
use berth_manifest::Manifest;
use berth_proxy::{Balance, Proxy, RouteSettings, RouteSpec};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Routing {
    proxy: Arc<Proxy>,
    edge: Arc<Edge>,
    live: Mutex<HashMap<String, LiveApp>>,
    /// Base URL of the proxy's HTTP listener, for the URLs reported after a deploy.
    http_url: Option<String>,
}

impl Routing {
    pub fn new(proxy: Arc<Proxy>, edge: Arc<Edge>, http_url: Option<String>) -> Self {
        Self {
            proxy,
            edge,
            live: Mutex::new(HashMap::new()),
            http_url,
        }
    }

    /// The certificates side (listing, renewal); routes change only through `install`.
    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveApp>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is routed for `app` now.
    pub fn live_app(&self, app: &str) -> Option<LiveApp> {
        self.live_map().get(app).cloned()
    }

    /// Makes `live` the app's routed state (answering 503 with `maintenance` when given) and
    /// swaps the proxy's routes and the certificate domains in one step.
    pub fn install(&self, app: &str, live: Option<LiveApp>, maintenance: Option<&str>) {
        let routes = live
            .as_ref()
            .map(|l| routes_for(l, maintenance, self.edge.https))
            .unwrap_or_default();
        let mut map = self.live_map();
        match live {
            Some(live) => map.insert(app.to_owned(), live),
            None => map.remove(app),
        };
        self.proxy.set_app_routes(app, routes);
        self.edge.update(&map);
    }

    /// Every route the proxy serves now, of every app.
    pub fn routes(&self) -> Vec<berth_proxy::RouteSummary> {
        self.proxy.routes()
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
}

/// The proxy routes for an app's live state.
pub(crate) fn routes_for(live: &LiveApp, maintenance: Option<&str>, https: bool) -> Vec<RouteSpec> {
    // The status page is the proxy's own answer: shown in maintenance too.
    let status_page = live.manifest.status_page.as_ref().map(|page| {
        let tls = https && !page.domains.is_empty();
        RouteSpec {
            app: live.manifest.app.clone(),
            service: STATUS_PAGE_SERVICE.to_owned(),
            release: live.release,
            domains: page.domains.clone(),
            path: page.path.clone(),
            upstreams: Vec::new(),
            settings: RouteSettings {
                redirect_https: tls,
                hsts: tls,
                status_page: true,
                // Public: a client that asks more than twice a second is asked to wait.
                rate_limit: Some(berth_proxy::RateLimit {
                    requests: 120,
                    per: std::time::Duration::from_secs(60),
                }),
                ..RouteSettings::default()
            },
        }
    });
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
        .chain(status_page)
        .collect()
}

/// The service name the proxy's routes give an app's status page (no service's name can
/// start with a dot).
pub const STATUS_PAGE_SERVICE: &str = ".status";

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
        auth: route.auth.as_ref().map(|auth| berth_proxy::RouteAuth {
            role: auth.role.as_str().to_owned(),
            two_factor: auth.two_factor,
            basic: auth.basic_users_secret.clone(),
        }),
        https_only: false,
        status_page: false,
    }
}
