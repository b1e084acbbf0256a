//! berth's own data directory (state, keys, certificates): taken while the agent runs, never
//! restored over the running agent's, only to a new data directory.

use super::*;

pub(crate) struct BerthData;

#[async_trait]
impl SourceKind for BerthData {
    fn content(&self) -> ContentKind {
        ContentKind::BerthState
    }

    async fn prepare(&self, backups: &Backups, _manifest: &Manifest) -> Result<Prepared, OpError> {
        let source = StateArchive {
            data_dir: backups.data_dir.clone(),
        };
        Ok(Prepared::builtin(backups, Box::new(source), self.content()))
    }

    async fn restore(&self, _backups: &Backups, _job: &mut dyn Restoring) -> Result<(), OpError> {
        Err(
            OpError::invalid("berth's own state cannot be restored over the running agent's")
                .hint(
                    "restore it to a new data directory (berth restore NAME --to /var/lib/berth-restored) and start an agent there (berth agent --data-dir …)",
                ),
        )
    }
}

/// berth's own data directory: a consistent copy of the state file, the keys, and the
/// certificates, as one tar archive. Logs, uploads and local backups are left out.
pub(super) struct StateArchive {
    pub(super) data_dir: PathBuf,
}

/// What a state backup holds besides `state.db`.
pub(super) const STATE_FILES: &[&str] =
    &["secrets.key", "backup.key", "agent-id", "api-token", "tls"];

#[async_trait]
impl Source for StateArchive {
    fn kind(&self) -> ContentKind {
        ContentKind::BerthState
    }

    fn describe(&self) -> String {
        format!("berth state in {}", self.data_dir.display())
    }

    async fn produce(&mut self, out: PlainSender) -> Result<String, BackupError> {
        let data_dir = self.data_dir.clone();
        berth_backup::source::produce_blocking(out, move |writer| {
            let scratch = data_dir.join("tmp");
            std::fs::create_dir_all(&scratch)
                .map_err(|e| BackupError::io(format!("cannot create {}", scratch.display()), e))?;
            let snapshot = tempfile::NamedTempFile::new_in(&scratch)
                .map_err(|e| BackupError::io("cannot create a scratch file", e))?;
            let info = {
                let mut file = std::io::BufWriter::new(snapshot.as_file());
                // SQLite refuses a link anywhere in the path; the data directory may be one.
                let state = std::fs::canonicalize(&data_dir)
                    .unwrap_or_else(|_| data_dir.clone())
                    .join("state.db");
                let info = berth_backup::sqlite::snapshot(&state, &mut file)?;
                std::io::Write::flush(&mut file)
                    .map_err(|e| BackupError::io("cannot write the state snapshot", e))?;
                info
            };
            let mut builder = tar::Builder::new(writer);
            builder.follow_symlinks(false);
            builder
                .append_path_with_name(snapshot.path(), "state.db")
                .map_err(|e| BackupError::io("cannot archive the state", e))?;
            let mut files = 1;
            for name in STATE_FILES {
                let path = data_dir.join(name);
                if path.is_dir() {
                    builder
                        .append_dir_all(name, &path)
                        .map_err(|e| BackupError::io(format!("cannot archive {name}"), e))?;
                    files += walkdir::WalkDir::new(&path).into_iter().count();
                } else if path.is_file() {
                    builder
                        .append_path_with_name(&path, name)
                        .map_err(|e| BackupError::io(format!("cannot archive {name}"), e))?;
                    files += 1;
                }
            }
            builder
                .into_inner()
                .map_err(|e| BackupError::io("cannot finish the archive", e))?;
            Ok(format!(
                "state.db ({} pages) and {} more files",
                info.pages,
                files - 1
            ))
        })
        .await
    }
}
