//! berth's watch on the server. Today: the host's resources ([`host`]), sampled from `/proc`
//! and `statvfs` by a worker ([`sample_host`]) and exported under node_exporter's metric names,
//! so an existing Prometheus and Grafana setup reads them unchanged. The health probes, uptime
//! history, per-container resources and alerts of the "Watch and warn" issue come here too,
//! each a worker.
//!
//! Must not: call Docker from a metrics scrape (a scrape only reads the last sample), or know
//! about releases beyond what it is told.

pub mod host;

pub use host::{FilesystemUse, HostMetrics, HostSample, sample_host};
