//! What every part of berth's agent shares, so the engine, the backups and the API can live in
//! crates of their own without depending on each other: the operation error ([`OpError`]: a
//! kind, the library's classified cause, a fix), [`progress`] events streamed to the client and
//! the event log, per-app [`locks`], the [`names`] and labels berth gives Docker objects, and the
//! [`secrets`] box that encrypts values at rest, and the few [`shared`] operations (the audit
//! log, a release's stored manifest, a service's running containers, the release-change
//! message) both sides do the same way, and the [`health_board`] the health monitor writes and
//! the status reads.
//!
//! Must not: change anything in Docker or the proxy, or decide anything about a release: it is
//! shared vocabulary and lookups, not behaviour.

pub mod error;
pub mod health_board;
pub mod locks;
pub mod names;
pub mod progress;
pub mod secrets;
pub mod shared;

pub use error::{ErrorKind, OpError};
pub use health_board::{HealthBoard, WatchedHealth};
pub use shared::{ReleaseChange, audit, release_manifest, service_containers};
