//! A directory on the server: its files as a tar archive; put back by unpacking beside it
//! and swapping it in while every service bind-mounting it is stopped.

use super::*;

pub(crate) struct HostDirectory<'a> {
    pub path: &'a Path,
}

#[async_trait]
impl SourceKind for HostDirectory<'_> {
    fn content(&self) -> ContentKind {
        ContentKind::Tar
    }

    fn users(&self, manifest: &Manifest) -> Vec<String> {
        directory_users(manifest, self.path)
    }

    async fn prepare(&self, backups: &Backups, _manifest: &Manifest) -> Result<Prepared, OpError> {
        let source = Directory {
            path: self.path.to_owned(),
            label: format!("directory {}", self.path.display()),
            kind: ContentKind::Tar,
        };
        Ok(Prepared::builtin(backups, Box::new(source), self.content()))
    }

    async fn restore(&self, _backups: &Backups, job: &mut dyn Restoring) -> Result<(), OpError> {
        job.set_target(format!("directory {}", self.path.display()));
        std::fs::create_dir_all(self.path)
            .map_err(|e| OpError::failed(format!("cannot create {}: {e}", self.path.display())))?;
        let users = self.users(job.manifest());
        job.restore_directory(self.path, &users).await
    }
}
