//! berth's watch on the server, each part a worker:
//! - [`replicas`]: continuous health checks of every current replica and accessory after the
//!   deploy's gate; unhealthy replicas leave the proxy's rotation and are replaced;
//! - [`external`]: `[monitors.NAME]`, checks of an app from outside (its public URL, a TCP
//!   port, a DNS name) with Gatus' thresholds, and the certificate they see;
//! - [`errors`]: each app's share of 5xx answers from the proxy's counters, and of error-level
//!   log lines from the log store's counts;
//! - [`thresholds`]: `[thresholds.NAME]` of the manifests (`cpu > 80% for 10m`) against the
//!   last samples of the host and the containers;
//! - [`events`]: Docker's event stream, for containers that die on their own and OOM kills;
//! - [`containers`]: each watched container's CPU, memory, network and block I/O and OOM kills
//!   from its cgroup (v2 or v1) and `/proc`, under cAdvisor's metric names;
//! - [`host`]: the host's resources from `/proc` and `statvfs`, exported under
//!   node_exporter's metric names;
//! - [`checks`]: berth's own records every 15 s: failed or overdue backups, certificates
//!   near expiry or failing to renew, failed deploys;
//! - [`history`]: the host's and each service's resources every 15 s into the state file's
//!   minute and hour buckets, for `berth top --history`;
//! - [`live`]: the live releases' manifests the others read their settings from;
//! - [`uptime`]: every probe and check recorded (raw, then in minute and hour buckets) for
//!   `berth uptime`;
//! - [`alerts`]: what those notice, turned into alerts by built-in rules, recorded, and sent
//!   through the [`channels`] each app's manifest names.
//!
//! Must not: call Docker from a metrics scrape (a scrape only reads the last sample), change
//! containers or routes except through the engine's operations (`replace_replica`) and an
//! upstream's rotation flag, or send a secret's value anywhere but its channel.

pub mod alerts;
pub mod channels;
pub mod checks;
pub mod containers;
pub mod errors;
pub mod events;
pub mod external;
pub mod history;
pub mod host;
pub mod live;
pub mod metrics;
pub mod replicas;
pub mod thresholds;
pub mod top;
pub mod uptime;

pub use alerts::{Alerts, Signal};
pub use containers::ContainerMetrics;
pub use host::{FilesystemUse, HostMetrics, HostSample, sample_host};
