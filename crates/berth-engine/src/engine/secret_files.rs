//! `secret_files`: each secret a file at `/run/secrets/NAME`, kept in memory on the host (a
//! tmpfs), readable only by the user the container runs as (mode 0400, owned by the image's
//! user), and gone with the containers that use it. A reboot empties the tmpfs; reconciling
//! an app writes its live release's files again before its containers start.

use crate::engine::{Engine, ReleaseContext, release_manifest};
use crate::error::OpError;
use berth_manifest::{SecretDelivery, Service};
use std::path::{Path, PathBuf};

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where secret files live: a directory of the agent's on the first tmpfs among `/run`,
/// `$XDG_RUNTIME_DIR` and `/dev/shm`; `DATA_DIR/run/secrets` (on disk, with a warning) when
/// there is none. Returns the directory and whether it is in memory.
pub fn choose_root(data_dir: &Path, agent_id: &str) -> (PathBuf, bool) {
    let mut candidates: Vec<PathBuf> = vec![PathBuf::from("/run")];
    if let Some(runtime_dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        candidates.push(PathBuf::from(runtime_dir));
    }
    candidates.push(PathBuf::from("/dev/shm"));
    for base in candidates {
        if !is_tmpfs(&base) {
            continue;
        }
        let dir = base.join(format!("berth-{agent_id}"));
        if own_private_dir(&dir) {
            return (dir.join("secrets"), true);
        }
    }
    (data_dir.join("run").join("secrets"), false)
}

// `f_type`'s width differs between targets.
#[allow(clippy::useless_conversion)]
fn is_tmpfs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| i64::from(s.f_type) == TMPFS_MAGIC)
}

/// Creates `dir` (0700), or accepts it only if it is a real directory of this user's with
/// nobody else allowed in: `/dev/shm` is writable by everyone, who could plant a name first.
fn own_private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            meta.file_type().is_dir()
                && meta.uid() == rustix::process::geteuid().as_raw()
                && meta.permissions().mode() & 0o077 == 0
        }
        Err(_) => false,
    }
}

impl Engine {
    /// The user id a service's secret files belong to: the one its image runs as. `None`
    /// when the service has no file secrets.
    pub(crate) async fn secret_owner(
        &self,
        service: &Service,
        image: &str,
    ) -> Result<Option<u32>, OpError> {
        if !service
            .secrets
            .iter()
            .any(|s| s.delivery == SecretDelivery::File)
        {
            return Ok(None);
        }
        let info = self.runtime().inspect_image(image).await?.ok_or_else(|| {
            OpError::failed(format!(
                "the image of {} ({image}) is not on this host",
                service.name
            ))
        })?;
        let user = info.user.split(':').next().unwrap_or("").trim();
        if user.is_empty() || user == "root" {
            return Ok(Some(0));
        }
        if let Ok(uid) = user.parse::<u32>() {
            return Ok(Some(uid));
        }
        let key = (info.id.clone(), user.to_owned());
        let known = self
            .image_uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        if let Some(uid) = known {
            return Ok(Some(uid));
        }
        let passwd = self
            .runtime()
            .read_image_file(image, "/etc/passwd", 1 << 20)
            .await?
            .unwrap_or_default();
        let uid = uid_of(&String::from_utf8_lossy(&passwd), user).ok_or_else(|| {
                OpError::failed(format!(
                    "the image of {} runs as user `{user}`, which its /etc/passwd does not name, so its secret files would have no owner to give them to",
                    service.name
                ))
                .hint("set a numeric USER in the Dockerfile (USER 1000), or add the user to the image")
        })?;
        self.image_uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, uid);
        Ok(Some(uid))
    }

    /// Writes an app's live file secrets that are missing (after a reboot emptied the
    /// tmpfs) before its stopped containers start again.
    pub(crate) async fn restore_secret_files(&self, app: &str) -> Result<(), OpError> {
        let Some(live) = self.store().live_release(app)? else {
            return Ok(());
        };
        let manifest = release_manifest(&live)?;
        let uses_files =
            |s: &&Service| s.secrets.iter().any(|r| r.delivery == SecretDelivery::File);
        if !manifest
            .services
            .values()
            .chain(manifest.accessories.values())
            .any(|s| uses_files(&s))
        {
            return Ok(());
        }
        let ctx = self.context_for(&live, &manifest)?;
        for service in manifest.services.values().filter(uses_files) {
            let Some(image) = live.images.get(&service.name) else {
                continue;
            };
            self.write_missing_secret_files(&ctx, service, image)
                .await?;
        }
        for accessory in manifest.accessories.values().filter(uses_files) {
            let containers = self.service_containers(app, &accessory.name, true).await?;
            let Some((id, _)) = containers.first() else {
                continue;
            };
            let Some(info) = self.runtime().inspect_container(id).await? else {
                continue;
            };
            self.write_missing_secret_files(&ctx, accessory, &info.image_id)
                .await?;
        }
        Ok(())
    }

    async fn write_missing_secret_files(
        &self,
        ctx: &ReleaseContext<'_>,
        service: &Service,
        image: &str,
    ) -> Result<(), OpError> {
        let owner = self.secret_owner(service, image).await?;
        for secret in service
            .secrets
            .iter()
            .filter(|s| s.delivery == SecretDelivery::File)
        {
            let path = self.secret_scope_dir(ctx, service).join(&secret.name);
            if path.exists() {
                continue;
            }
            if let Some(value) = ctx.secret_values.get(&secret.name) {
                self.write_secret_file(ctx, service, &secret.name, value, owner)?;
            }
        }
        Ok(())
    }
}

/// The uid `/etc/passwd` gives `name`.
fn uid_of(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_name_resolves_through_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1001::/home/app:/bin/sh\n";
        assert_eq!(uid_of(passwd, "app"), Some(1001));
        assert_eq!(uid_of(passwd, "root"), Some(0));
        assert_eq!(uid_of(passwd, "ap"), None);
        assert_eq!(uid_of("garbage", "app"), None);
    }

    /// `/dev/shm` is writable by every user: a name planted there first (a link to a place
    /// of the planter's, or a directory others may enter) is never used for secrets.
    #[test]
    fn a_planted_name_in_shared_memory_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        for (id, plant) in [("planted-link", true), ("planted-open-dir", false)] {
            let agent_id = format!("test-{id}-{}", std::process::id());
            let planted = PathBuf::from("/dev/shm").join(format!("berth-{agent_id}"));
            let _ = std::fs::remove_dir_all(&planted);
            let _ = std::fs::remove_file(&planted);
            if plant {
                std::os::unix::fs::symlink(elsewhere.path(), &planted).unwrap();
            } else {
                std::fs::create_dir(&planted).unwrap();
                std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
            }
            let (root, _) = choose_root(data.path(), &agent_id);
            assert!(!root.starts_with(&planted), "{id}: {}", root.display());
            assert!(
                std::fs::read_dir(elsewhere.path())
                    .unwrap()
                    .next()
                    .is_none(),
                "{id}: nothing written through the link"
            );
            let _ = std::fs::remove_file(&planted);
            let _ = std::fs::remove_dir_all(&planted);
            let _ = std::fs::remove_dir_all(format!("/run/berth-{agent_id}"));
        }
    }

    #[test]
    fn the_root_is_private_and_in_memory_when_the_host_has_a_tmpfs() {
        let data = tempfile::tempdir().unwrap();
        let (root, in_memory) = choose_root(data.path(), "test-agent-root");
        if in_memory {
            assert!(is_tmpfs(root.parent().unwrap()));
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(root.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
            let _ = std::fs::remove_dir_all(root.parent().unwrap());
        } else {
            assert!(root.starts_with(data.path()));
        }
    }
}
