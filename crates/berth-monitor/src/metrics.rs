//! What the monitors know, on the metrics endpoint: each container's health verdict and
//! place in rotation, each `[monitors]` check's result and response time, and the alerts
//! firing by rule and severity. Read from memory at scrape time (never from Docker).

use crate::alerts::FiringCounts;
use crate::external::MonitorBoard;
use berth_core::HealthBoard;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    app: String,
    service: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MonitorLabels {
    app: String,
    monitor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    rule: String,
    severity: String,
}

/// Registered once; encodes the boards' contents at each scrape.
#[derive(Debug)]
pub struct WatchCollector {
    pub health: Arc<HealthBoard>,
    pub monitors: Arc<MonitorBoard>,
    pub firing: Arc<FiringCounts>,
}

impl Collector for WatchCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let containers = self.health.all();
        let labels_of = |h: &berth_core::WatchedHealth| ContainerLabels {
            app: h.app.clone(),
            service: h.service.clone(),
            name: h.container.clone(),
        };
        let mut family = encoder.encode_descriptor(
            "berth_container_healthy",
            "1 while the container passes its health checks (berth's verdict after its failure threshold), else 0",
            None,
            MetricType::Gauge,
        )?;
        for (_, health) in &containers {
            ConstGauge::new(i64::from(health.healthy))
                .encode(family.encode_family(&labels_of(health))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "berth_container_in_rotation",
            "1 while the proxy sends the container requests, else 0",
            None,
            MetricType::Gauge,
        )?;
        for (_, health) in &containers {
            ConstGauge::new(i64::from(health.in_rotation))
                .encode(family.encode_family(&labels_of(health))?)?;
        }
        let monitors = self.monitors.all();
        let monitor_labels = |(app, name): &(String, String)| MonitorLabels {
            app: app.clone(),
            monitor: name.clone(),
        };
        let mut family = encoder.encode_descriptor(
            "berth_monitor_up",
            "1 when the last check of a [monitors] entry passed, else 0",
            None,
            MetricType::Gauge,
        )?;
        for (key, view) in &monitors {
            ConstGauge::new(i64::from(view.failure.is_none()))
                .encode(family.encode_family(&monitor_labels(key))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "berth_monitor_response_seconds",
            "How long the last check of a [monitors] entry took",
            None,
            MetricType::Gauge,
        )?;
        for (key, view) in &monitors {
            ConstGauge::new(view.latency_ms as f64 / 1000.0)
                .encode(family.encode_family(&monitor_labels(key))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "berth_alerts_firing",
            "Alerts firing now, by rule and severity",
            None,
            MetricType::Gauge,
        )?;
        for ((rule, severity), count) in self.firing.all() {
            ConstGauge::new(count)
                .encode(family.encode_family(&AlertLabels { rule, severity })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boards_are_scraped_with_their_labels() {
        let health = Arc::new(HealthBoard::default());
        health.set(
            "c1",
            berth_core::WatchedHealth {
                app: "shop".into(),
                service: "web".into(),
                container: "shop-web-1".into(),
                healthy: false,
                since_ms: 0,
                failures_in_row: 3,
                last_failure: None,
                in_rotation: false,
                cpu_limit: None,
            },
        );
        let firing = Arc::new(FiringCounts::default());
        let record = berth_state::AlertRecord {
            id: 1,
            key: "service_down:shop/web".into(),
            rule: "service_down".into(),
            severity: "critical".into(),
            app: Some("shop".into()),
            subject: "shop/web".into(),
            summary: String::new(),
            event: false,
            started_at: 0,
            resolved_at: None,
        };
        firing.set(&[record]);
        firing.set(&[]);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(WatchCollector {
            health,
            monitors: Arc::new(MonitorBoard::default()),
            firing,
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "berth_container_healthy{app=\"shop\",service=\"web\",name=\"shop-web-1\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "berth_container_in_rotation{app=\"shop\",service=\"web\",name=\"shop-web-1\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("berth_alerts_firing{rule=\"service_down\",severity=\"critical\"} 0"),
            "a rule that stopped firing reads 0: {text}"
        );
    }
}
