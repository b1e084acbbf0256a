//! A journal of the staging directories restores make next to live data (inside an app's
//! volume or a bind-mounted directory, hundreds of MB at times): each is recorded in
//! `DATA_DIR/restoring/` while it exists, so an agent that stops mid-restore removes it at its
//! next start instead of leaving it in the app's data for good.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

const DIR: &str = "restoring";

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    app: String,
    /// The directory the staging directory is in.
    parent: PathBuf,
    /// Its name's bytes, hex-encoded (a target's name need not be UTF-8).
    name_hex: String,
    /// Set once its contents started moving into the live directory: from then on it holds
    /// the only copy of part of the restored data, and is kept.
    #[serde(default)]
    swapping: bool,
}

/// A staging directory on record; [`Journal::forget`] it once it is gone.
pub(crate) struct Recorded {
    file: Option<PathBuf>,
}

pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DIR),
        }
    }

    /// Records `parent/name`. A journal that cannot be written only costs the cleanup after
    /// a crash, so it never stops a restore.
    pub(crate) fn record(&self, app: &str, parent: &Path, name: &OsStr) -> Recorded {
        let record = Record {
            app: app.to_owned(),
            parent: parent.to_owned(),
            name_hex: hex::encode(name.as_bytes()),
            swapping: false,
        };
        let file = self
            .dir
            .join(format!("{}.json", hex::encode(rand::random::<[u8; 8]>())));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| serde_json::to_vec(&record).map_err(std::io::Error::other))
            .and_then(|json| {
                berth_fs::write_replacing(&file, &json, 0o600).map_err(std::io::Error::other)
            });
        match written {
            Ok(()) => Recorded { file: Some(file) },
            Err(error) => {
                tracing::warn!(%error, "cannot record a restore's staging directory");
                Recorded { file: None }
            }
        }
    }

    /// Notes that the staged contents start moving into the live directory.
    pub(crate) fn mark_swapping(&self, recorded: &Recorded) {
        let Some(file) = &recorded.file else { return };
        let record: Option<Record> = std::fs::read(file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if let Some(mut record) = record {
            record.swapping = true;
            if let Ok(json) = serde_json::to_vec(&record) {
                let _ = berth_fs::write_replacing(file, &json, 0o600);
            }
        }
    }

    pub(crate) fn forget(&self, recorded: Recorded) {
        if let Some(file) = recorded.file {
            let _ = std::fs::remove_file(file);
        }
    }

    /// At start: removes every staging directory a stopped agent left, and says so in each
    /// app's events. Returns what was removed, as `app: path`.
    pub fn clean_up(&self, store: &berth_state::Store) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let record: Option<Record> = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            if let Some(record) = record
                && let Ok(name) = hex::decode(&record.name_hex)
            {
                let name = OsString::from_vec(name);
                let shown = record.parent.join(&name);
                if record.swapping {
                    // Part of the restored data is already live, the rest only here.
                    let message = format!(
                        "a restore was interrupted while it moved the restored data in: the live data is partly restored, and the rest of the restored copy is in {}; restore again (or move it in by hand) and then remove it",
                        shown.display()
                    );
                    tracing::error!(app = %record.app, path = %shown.display(), "a restore was interrupted mid-swap");
                    let _ = store.add_event(&record.app, None, "error", &message);
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                match remove_staging(&record.parent, &name) {
                    Ok(true) => {
                        let message = format!(
                            "removed {} left by a restore the agent was in the middle of when it stopped",
                            shown.display()
                        );
                        tracing::warn!(app = %record.app, path = %shown.display(), "removed an interrupted restore's staging directory");
                        let _ = store.add_event(&record.app, None, "warn", &message);
                        removed.push(format!("{}: {}", record.app, shown.display()));
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, path = %shown.display(), "cannot remove an interrupted restore's staging directory");
                        continue;
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        removed
    }
}

/// Removes `parent/name` if it is one of berth's staging names (`.NAME.berth-` and 16 hex
/// digits), through descriptors that follow no link; false when it is not there.
fn remove_staging(parent: &Path, name: &OsStr) -> Result<bool, berth_fs::FsError> {
    if !is_staging_name(name) {
        return Ok(false);
    }
    let dir = match berth_fs::Dir::open(parent) {
        Ok(dir) => dir,
        Err(_) if !parent.exists() => return Ok(false),
        Err(error) => return Err(error),
    };
    if dir.entry(name)?.is_none() {
        return Ok(false);
    }
    dir.remove_any(name)?;
    Ok(true)
}

fn is_staging_name(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    let Some(at) = bytes.windows(7).rposition(|w| w == b".berth-") else {
        return false;
    };
    let suffix = &bytes[at + 7..];
    bytes.first() == Some(&b'.') && suffix.len() == 16 && suffix.iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_berths_staging_names_are_removed() {
        assert!(is_staging_name(OsStr::new("._data.berth-0123456789abcdef")));
        assert!(!is_staging_name(OsStr::new("_data")));
        assert!(!is_staging_name(OsStr::new("._data.berth-0123")));
        assert!(!is_staging_name(OsStr::new("x.berth-0123456789abcdef")));
    }

    #[test]
    fn a_recorded_staging_directory_is_removed_at_the_next_start() {
        let data = tempfile::tempdir().unwrap();
        let volume = tempfile::tempdir().unwrap();
        let store = berth_state::Store::in_memory().unwrap();
        let journal = Journal::new(data.path());
        let (staging, name) = berth_fs::Dir::open(volume.path())
            .unwrap()
            .create_temp_dir(OsStr::new("_data"))
            .unwrap();
        std::fs::write(staging.path().join("big.bin"), b"partial").unwrap();
        let kept = std::fs::create_dir(volume.path().join("_data"));
        assert!(kept.is_ok());
        let recorded = journal.record("shop", volume.path(), &name);
        assert!(recorded.file.is_some());

        // The agent stops here; the next one cleans up.
        let removed = Journal::new(data.path()).clean_up(&store);
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(!volume.path().join(&name).exists());
        assert!(volume.path().join("_data").exists(), "live data untouched");
        assert!(Journal::new(data.path()).clean_up(&store).is_empty());

        // Cut off while moving in: the staged copy is kept, and the app's events say where.
        let (_staging, name) = berth_fs::Dir::open(volume.path())
            .unwrap()
            .create_temp_dir(OsStr::new("_data"))
            .unwrap();
        let recorded = journal.record("shop", volume.path(), &name);
        journal.mark_swapping(&recorded);
        assert!(Journal::new(data.path()).clean_up(&store).is_empty());
        assert!(volume.path().join(&name).exists(), "the only copy is kept");
    }
}
