//! A SQLite database file, in a service's volume or on the server: read with SQLite's online
//! backup (consistent while the app writes), checked with `integrity_check`, put back by
//! replacing the file while every service using it is stopped.

use super::*;

pub(crate) struct SqliteDatabase<'a> {
    /// The service whose volume holds the file; `None`: the path is on the server.
    pub service: Option<&'a str>,
    pub path: &'a str,
}

impl SqliteDatabase<'_> {
    fn label(&self) -> String {
        match self.service {
            Some(service) => format!("{} in service {service}", self.path),
            None => self.path.to_owned(),
        }
    }
}

#[async_trait]
impl SourceKind for SqliteDatabase<'_> {
    fn content(&self) -> ContentKind {
        ContentKind::Sqlite
    }

    fn users(&self, manifest: &Manifest) -> Vec<String> {
        match self.service {
            Some(service) => data_users(manifest, service, self.path),
            None => directory_users(manifest, Path::new(self.path)),
        }
    }

    async fn prepare(&self, backups: &Backups, manifest: &Manifest) -> Result<Prepared, OpError> {
        let host = match self.service {
            Some(service) => {
                let (base, relative) = backups
                    .host_path(manifest, service, self.path, false)
                    .await?;
                base.join(relative)
            }
            // The operator's own host path: trusted as named.
            None => std::fs::canonicalize(self.path).unwrap_or_else(|_| PathBuf::from(self.path)),
        };
        let source = SqliteFile {
            path: host,
            label: self.label(),
        };
        Ok(Prepared::builtin(backups, Box::new(source), self.content()))
    }

    async fn restore(&self, backups: &Backups, job: &mut dyn Restoring) -> Result<(), OpError> {
        let manifest = job.manifest().clone();
        // The database's directory, opened without following a link below the volume's root
        // (the container shapes what is inside it).
        let (root, relative) = match self.service {
            Some(service) => {
                backups
                    .host_path(&manifest, service, self.path, true)
                    .await?
            }
            None => (PathBuf::from("/"), PathBuf::from(self.path)),
        };
        let name = relative.file_name().map(|n| n.to_owned()).ok_or_else(|| {
            OpError::invalid(format!("{} does not name a database file", self.path))
        })?;
        let parent = relative.parent().unwrap_or(Path::new("")).to_owned();
        let dir = match self.service {
            Some(_) => berth_fs::Dir::open_beneath(&root, &parent, true)?,
            // A host path the operator named: trusted as named.
            None => berth_fs::Dir::open(&root.join(&parent))?,
        };
        job.set_target(self.label());
        let live = dir
            .file_entry(&name)?
            .filter(|entry| entry.size > 0)
            .map(|entry| format!("a database of {}", human_bytes(entry.size)));
        job.guard(live).await?;
        // Staged and checked where only the agent writes; copied into the volume only once it
        // is known good.
        let staged = job.stage().await?;
        let step = job.progress().step("check the database");
        let checked = check_sqlite(&staged).await;
        if checked.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        let report = step.finish(checked)?;
        job.did(format!("checked the restored database: {report}"));
        // Every service using the same data stops, not only the one named.
        let services = self.users(&manifest);
        let target = dir.path().join(&name);
        let install = staged.clone();
        let change = Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                berth_backup::sqlite::install(&install, &dir, &name)
            })
            .await
            .map_err(|e| OpError::failed(format!("the install stopped: {e}")))?
            .map_err(OpError::from)?;
            Ok(format!("replaced {}", target.display()))
        });
        let outcome = job.with_services_stopped(&services, change).await;
        let _ = std::fs::remove_file(&staged);
        outcome
    }
}

pub(crate) async fn check_sqlite(path: &Path) -> Result<String, OpError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || berth_backup::sqlite::check(&path))
        .await
        .map_err(|e| OpError::failed(format!("the check stopped: {e}")))?
        .map(|report| report.to_string())
        .map_err(|detail| {
            OpError::failed(format!(
                "the restored database fails its check ({detail}); nothing was replaced"
            ))
        })
}
