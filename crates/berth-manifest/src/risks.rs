//! What a valid manifest asks for that gives its containers power over the host. Not errors:
//! an operator may mean it (a backup container that reads `/`, a CI runner with the Docker
//! socket). But the manifest is code that can mount anything as root, so `berth check`
//! says so, plainly, every time.

use crate::{Manifest, VolumeSource};
use serde::Serialize;
use std::path::Path;

/// One thing in a manifest worth a second look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Risk {
    /// The service or accessory.
    pub service: String,
    /// A mount that hands the container the host (not a published port).
    pub host_mount: bool,
    pub message: String,
    pub help: String,
}

/// Host paths whose mount hands a container the host: the Docker socket (root on the host),
/// and system directories.
const SYSTEM_PATHS: [&str; 14] = [
    "/",
    "/etc",
    "/root",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/var/lib/docker",
    "/var/lib/berth",
    "/home",
];

fn docker_socket(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "docker.sock")
        || path == Path::new("/run/docker.sock")
        || path == Path::new("/var/run/docker.sock")
}

/// The risks in one resolved manifest, in service order.
pub fn risks(manifest: &Manifest) -> Vec<Risk> {
    let mut found = Vec::new();
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
    {
        for volume in &service.volumes {
            let VolumeSource::Bind(path) = &volume.source else {
                continue;
            };
            let normalized: std::path::PathBuf = path.components().collect();
            let writable = if volume.read_only { "" } else { " (writable)" };
            if docker_socket(&normalized) {
                found.push(Risk {
                    service: service.name.clone(),
                    host_mount: true,
                    message: format!(
                        "mounts the Docker socket {}{writable}: whoever controls this container controls every container and is root on the host",
                        path.display()
                    ),
                    help: "only give it to tools that need Docker, and keep them up to date".into(),
                });
            } else if SYSTEM_PATHS
                .iter()
                .any(|system| normalized == Path::new(system))
            {
                found.push(Risk {
                    service: service.name.clone(),
                    host_mount: true,
                    message: format!(
                        "mounts the host's {}{writable} into the container",
                        path.display()
                    ),
                    help: "mount the one directory the app needs, read-only (`:ro`) if it only reads it".into(),
                });
            }
        }
        for binding in &service.publish {
            if binding.host_ip.is_none() {
                found.push(Risk {
                    service: service.name.clone(),
                    host_mount: false,
                    message: format!(
                        "publishes port {} on every address of the host: Docker opens it past a host firewall such as UFW",
                        binding.host_port
                    ),
                    help: format!(
                        "publish it on loopback (\"127.0.0.1:{}:{}\") unless other machines must reach it",
                        binding.host_port, binding.container_port
                    ),
                });
            }
        }
    }
    found
}
