//! Prometheus metrics of the edge, with typed label sets so names never drift.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub app: String,
    /// `connect`, `timeout` or `broken`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    /// `silent` (no first byte), `no_request` (no whole first request), `idle`, `evicted`
    /// (made room at the connection cap) or `client_cap`.
    pub reason: &'static str,
}

pub struct ProxyMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<AppLabels, Histogram>,
    pub in_flight: Family<AppLabels, Gauge>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub open_connections: Gauge,
    pub closed_by_edge: Family<ClosedLabels, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            in_flight: Family::default(),
            upstream_errors: Family::default(),
            open_connections: Gauge::default(),
            closed_by_edge: Family::default(),
        }
    }
}

impl ProxyMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "berth_http_requests",
            "HTTP requests served, by app and status class",
            self.requests.clone(),
        );
        registry.register(
            "berth_http_request_duration_seconds",
            "Time from request to the end of the response",
            self.duration.clone(),
        );
        registry.register(
            "berth_http_requests_in_flight",
            "Requests being served now",
            self.in_flight.clone(),
        );
        registry.register(
            "berth_upstream_errors",
            "Requests an upstream could not serve",
            self.upstream_errors.clone(),
        );
        registry.register(
            "berth_http_connections_open",
            "Client connections open now",
            self.open_connections.clone(),
        );
        registry.register(
            "berth_http_connections_closed_by_edge",
            "Client connections the edge closed: silent, no whole first request, idle, evicted at the connection cap, or over a client's cap",
            self.closed_by_edge.clone(),
        );
    }

    pub fn closed_by_edge(&self, reason: &'static str) {
        self.closed_by_edge
            .get_or_create(&ClosedLabels { reason })
            .inc();
    }

    pub fn upstream_error(&self, app: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                app: app.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }
}

pub fn status_class(status: u16) -> String {
    format!("{}xx", status / 100)
}

/// One app's metric handles, looked up once (when routes change) so requests only
/// increment counters.
#[derive(Debug)]
pub(crate) struct AppMetrics {
    /// By status class: index 1 for 1xx … 5 for 5xx.
    by_class: [Counter; 6],
    pub duration: Histogram,
    pub in_flight: Gauge,
}

impl AppMetrics {
    pub fn record(&self, status: u16, seconds: f64) {
        self.by_class[usize::from(status / 100).min(5)].inc();
        self.duration.observe(seconds);
    }
}

impl ProxyMetrics {
    /// How many requests of `app` were answered with each status class so far: index 1 for
    /// 1xx … 5 for 5xx.
    pub fn requests_by_class(&self, app: &str) -> [u64; 6] {
        let mut counts = [0; 6];
        for (class, count) in counts.iter_mut().enumerate().skip(1) {
            *count = self
                .requests
                .get_or_create(&RequestLabels {
                    app: app.to_owned(),
                    status_class: format!("{class}xx"),
                })
                .get();
        }
        counts
    }

    pub(crate) fn for_app(&self, app: &str) -> AppMetrics {
        let class = |n: u16| {
            self.requests
                .get_or_create(&RequestLabels {
                    app: app.to_owned(),
                    status_class: status_class(n * 100),
                })
                .clone()
        };
        AppMetrics {
            by_class: [class(0), class(1), class(2), class(3), class(4), class(5)],
            duration: self
                .duration
                .get_or_create(&AppLabels {
                    app: app.to_owned(),
                })
                .clone(),
            in_flight: self
                .in_flight
                .get_or_create(&AppLabels {
                    app: app.to_owned(),
                })
                .clone(),
        }
    }
}
