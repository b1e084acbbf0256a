//! berth's operations that need no agent: `berth init` writes a manifest from what a directory
//! holds, `berth import compose` converts a Compose file, and both read `.env` files the way
//! Compose does. Every manifest written here is checked with `berth_manifest::load` first.
//! `plan` decides whether a manifest fits on a server, from the agent's `berth top` sample.
//! `bootstrap` writes the steps that make a fresh server ready (the CLI runs them over ssh).
//!
//! Must not: talk to the agent or Docker (the CLI does that), or write a secret's value into a
//! manifest.

pub mod bootstrap;
pub mod ci;
pub mod compose;
pub mod contexts;
pub mod dotenv;
pub mod draft;
pub mod files;
pub mod init;
pub mod interpolate;
pub mod plan;
pub mod runbook;
mod yaml;
