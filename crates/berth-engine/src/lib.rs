//! berth's engine: the release lifecycle (build or load images, accessories, the release
//! command, new replicas beside the old, the health gate, the switch, drain), rollback and
//! restart through the same path, reconciliation after a crash or restart, stop/start/destroy,
//! the routing state, an app's secrets, and the health probes. The agent crate wires it up and
//! serves the API on it; the backups (`berth-backup-jobs`) are a component it holds and tells
//! of release changes.
//!
//! Must not: serve HTTP itself (the API is the agent's), know about the agent's process
//! hand-over, or reach into the backups beyond `Backups`' public operations.

use berth_core::{error, locks, names, progress, secrets};

pub mod edge;
pub mod engine;
pub mod health;
pub mod routing;
pub mod subnets;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod unit_tests;

pub use berth_core::{ErrorKind, OpError};
pub use edge::{Edge, LiveApp};
pub use engine::{Engine, WatchTarget, secret_files, status};
pub use routing::Routing;
