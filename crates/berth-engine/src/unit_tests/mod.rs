//! Unit tests of the agent's decisions on the in-memory runtime (`crate::testing`): they
//! need neither Docker nor sockets. The integration tests in `crates/berth/tests` cover the
//! same paths against the real Docker Engine.

mod backups;
mod deploy;
mod lifecycle;
mod reconcile;
mod rollback;
mod routing;
mod secrets;
mod watch;
