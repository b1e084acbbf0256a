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

/// The tag prefix of images built elsewhere (`berth deploy --build local`) and loaded from an
/// archive: they live in the app's own repositories but never take a release's `rN` tag, so an
/// upload cannot replace the image a rollback returns to.
pub const UPLOADED_TAG_PREFIX: &str = "local-";

/// The name an image built elsewhere for `service` is uploaded under.
pub fn uploaded_image(app: &str, service: &str, tag: &str) -> String {
    format!(
        "{}:{UPLOADED_TAG_PREFIX}{tag}",
        image_repository(app, service)
    )
}

/// Whether an image name from an uploaded archive stays inside `app`'s uploaded images
/// (`berth/APP/SERVICE:local-…`, with or without Docker Hub's implied `docker.io/`), so that
/// loading it cannot tag over another app's image, a release's image or a base image.
pub fn is_uploaded_image(app: &str, reference: &str) -> bool {
    let reference = reference.strip_prefix("docker.io/").unwrap_or(reference);
    let Some(rest) = reference.strip_prefix(&format!("berth/{app}/")) else {
        return false;
    };
    let Some((service, tag)) = rest.split_once(':') else {
        return false;
    };
    let plain = |text: &str| {
        !text.is_empty()
            && text.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
            })
    };
    plain(service)
        && tag.len() <= 128
        && tag.starts_with(UPLOADED_TAG_PREFIX)
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploaded_images_stay_in_their_app() {
        let name = uploaded_image("shop", "web", "abc123");
        assert_eq!(name, "berth/shop/web:local-abc123");
        assert!(is_uploaded_image("shop", &name));
        assert!(is_uploaded_image(
            "shop",
            "docker.io/berth/shop/web:local-1"
        ));
        for outside in [
            "berth/shop/web:r3",
            "berth/shop/web",
            "berth/other/web:local-1",
            "berth/shop-x/web:local-1",
            "berth/shop/web/deeper:local-1",
            "postgres:16",
            "docker.io/library/postgres:local-1",
            "evil.example/berth/shop/web:local-1",
            "berth/shop/web:local-1@sha256:00",
            "berth/shop/:local-1",
        ] {
            assert!(!is_uploaded_image("shop", outside), "{outside}");
        }
    }
}
