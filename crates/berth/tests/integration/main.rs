//! berth end to end: the real binary, the real Docker Engine, real HTTP traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

mod backups;
mod browser;
mod console;
mod contexts;
mod crash;
mod deploys;
mod edge;
mod exec;
mod failures;
mod harness;
mod imports;
mod monitor;
mod operations;
mod pebble;
mod peers;
mod plan;
mod registry;
mod secrets;
mod security;
mod server;
mod tls;
mod upgrade;
mod zero_downtime;
