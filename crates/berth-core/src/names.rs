//! How berth names and labels what it creates in Docker. Labels are how the agent finds its
//! containers again after a crash, so they never change meaning.

use berth_runtime::Labels;

pub const MANAGED: &str = "berth.managed";
/// Which agent (data directory) owns the object: agents sharing a Docker host never touch
/// each other's containers.
pub const AGENT: &str = "berth.agent";
pub const APP: &str = "berth.app";
pub const SERVICE: &str = "berth.service";
pub const ROLE: &str = "berth.role";
pub const RELEASE: &str = "berth.release";
pub const REPLICA: &str = "berth.replica";
/// Fingerprint of an accessory's configuration: it is recreated only when this changes.
pub const CONFIG: &str = "berth.config";

pub const ROLE_RELEASE_COMMAND: &str = "release-command";

pub fn network(app: &str) -> String {
    format!("berth-{app}")
}

pub fn volume(app: &str, name: &str) -> String {
    format!("{app}_{name}")
}

pub fn replica_container(app: &str, service: &str, release: i64) -> String {
    let suffix: u16 = rand::random();
    format!("{app}-{service}-r{release}-{suffix:04x}")
}

pub fn accessory_container(app: &str, name: &str) -> String {
    format!("{app}-{name}")
}

pub fn release_command_container(app: &str, service: &str, release: i64) -> String {
    format!("{app}-{service}-r{release}-release")
}

/// Every release's image is tagged `berth/APP/SERVICE:rN`, so rollback finds it and pruning
/// knows what to untag.
pub fn image_repository(app: &str, service: &str) -> String {
    format!("berth/{app}/{service}")
}

pub fn image_tag(release: i64) -> String {
    format!("r{release}")
}

pub fn base_labels(agent: &str, app: &str) -> Labels {
    Labels::from([
        (MANAGED.to_owned(), "true".to_owned()),
        (AGENT.to_owned(), agent.to_owned()),
        (APP.to_owned(), app.to_owned()),
    ])
}

/// This server's name (the kernel's host name), for what berth sends elsewhere: alerts, log
/// lines to a syslog host.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".to_owned())
}
