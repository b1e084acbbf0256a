//! SQLite: a consistent copy of a live database, its check, and putting one back.
//!
//! The copy is read page by page through SQLite itself (the `sqlite_dbpage` table) inside one
//! read transaction, so it is the database as of one instant however many writers are busy:
//! in WAL mode writers carry on while it runs, in rollback mode they wait for it. It is never
//! a raw copy of the file, which could mix pages from before and after a write.

use crate::error::{BackupError, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub pages: u64,
    pub page_size: u64,
    pub journal_mode: String,
}

/// Writes a consistent image of the database at `path` to `out`.
///
/// A database in a container's volume is the container's to shape: berth never follows a
/// symbolic link to it (it could point at a host file the agent may read and the container
/// may not), and gives back the `-wal` and `-shm` files it may have created without
/// following links either. SQLite refuses a link anywhere in `path`, so callers pass the
/// trusted part of it (a volume's directory, a host path the operator named) canonical.
pub fn snapshot(path: &Path, out: &mut dyn Write) -> Result<SnapshotInfo> {
    let owner = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(BackupError::Source(format!(
                "the SQLite database {} is a symbolic link; berth does not follow links in a                  container's data (one could point at a host file). Point the backup's path at                  the database file itself",
                path.display()
            )));
        }
        Ok(meta) => (meta.uid(), meta.gid()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::Source(format!(
                "the SQLite database {} does not exist; check the path in the backup's source \
                 (it is the path inside the service's container)",
                path.display()
            )));
        }
        Err(e) => {
            return Err(BackupError::io(
                format!("cannot read {}", path.display()),
                e,
            ));
        }
    };
    for suffix in ["-wal", "-shm", "-journal"] {
        let side = sidecar(path, suffix);
        if std::fs::symlink_metadata(&side).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(BackupError::Source(format!(
                "{} (SQLite's {suffix} file beside the database) is a symbolic link; berth does                  not follow links in a container's data (one could point at a host file).                  Remove it, and find out what created it",
                side.display()
            )));
        }
    }
    let result = snapshot_open(path, out);
    // Opening a WAL database may have created its -wal and -shm files as this (root) process;
    // give them back to the database's owner or the app could no longer open its database.
    restore_owner(path, owner);
    result
}

fn snapshot_open(path: &Path, out: &mut dyn Write) -> Result<SnapshotInfo> {
    let failed = |e: rusqlite::Error| {
        BackupError::Source(format!(
            "cannot read the SQLite database {}: {}",
            path.display(),
            describe(&e)
        ))
    };
    // Read-write without create: a reader of a WAL database must be able to use its -shm
    // file; `query_only` keeps this connection from ever writing.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(failed)?;
    conn.busy_timeout(Duration::from_secs(60)).map_err(failed)?;
    // Closing the last connection would otherwise checkpoint the WAL under an exclusive lock,
    // and an app writing without a busy timeout would see SQLITE_BUSY because of a backup.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(failed)?;
    conn.execute_batch("PRAGMA query_only = 1; BEGIN;")
        .map_err(failed)?;
    let journal_mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(failed)?;
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .map_err(failed)?;
    let mut statement = conn
        .prepare("SELECT pgno, data FROM sqlite_dbpage('main') ORDER BY pgno")
        .map_err(|e| {
            if e.to_string().contains("no such table") {
                BackupError::Invalid(
                    "this berth was built without SQLite's sqlite_dbpage table \
                     (SQLITE_ENABLE_DBPAGE_VTAB); build it from the repository, whose \
                     .cargo/config.toml enables it"
                        .to_owned(),
                )
            } else {
                failed(e)
            }
        })?;
    let mut rows = statement.query([]).map_err(failed)?;
    let mut pages = 0u64;
    while let Some(row) = rows.next().map_err(failed)? {
        let number: i64 = row.get(0).map_err(failed)?;
        let data = row.get_ref(1).map_err(failed)?;
        let bytes = data.as_blob().map_err(|e| failed(e.into()))?;
        if number != pages as i64 + 1 || bytes.len() as i64 != page_size {
            return Err(BackupError::Source(format!(
                "the SQLite database {} returned page {number} of {} bytes where page {} of \
                 {page_size} bytes was expected",
                path.display(),
                bytes.len(),
                pages + 1
            )));
        }
        out.write_all(bytes)
            .map_err(|e| BackupError::io("cannot pass the database on", e))?;
        pages += 1;
    }
    drop(rows);
    drop(statement);
    conn.execute_batch("COMMIT").map_err(failed)?;
    if pages == 0 {
        return Err(BackupError::Source(format!(
            "the SQLite database {} is empty (0 pages)",
            path.display()
        )));
    }
    Ok(SnapshotInfo {
        pages,
        page_size: page_size as u64,
        journal_mode,
    })
}

fn describe(error: &rusqlite::Error) -> String {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "the file is not a SQLite database (or is encrypted)".to_owned()
        }
        Some(rusqlite::ErrorCode::DatabaseBusy) => {
            "the database stayed locked by a writer for 60 s".to_owned()
        }
        Some(rusqlite::ErrorCode::CannotOpen) => {
            "it cannot be opened (permissions, or a missing directory)".to_owned()
        }
        _ => error.to_string(),
    }
}

fn restore_owner(database: &Path, (uid, gid): (u32, u32)) {
    for suffix in ["-wal", "-shm"] {
        let path = sidecar(database, suffix);
        // lstat and lchown: a link planted under the sidecar's name is left alone.
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && meta.is_file()
            && (meta.uid() != uid || meta.gid() != gid)
            && let Err(e) = std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot give a SQLite file back to its owner");
        }
    }
}

fn sidecar(database: &Path, suffix: &str) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// What checking a database found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub tables: u64,
    pub pages: u64,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "integrity_check ok, {} tables, {} pages",
            self.tables, self.pages
        )
    }
}

/// Runs `PRAGMA integrity_check` on a database file (a restored copy, never the live one).
pub fn check(path: &Path) -> std::result::Result<CheckReport, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| describe(&e))?;
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check(10)")
        .and_then(|mut s| {
            s.query_map([], |row| row.get::<_, String>(0))?
                .collect::<std::result::Result<Vec<_>, _>>()
        })
        .map_err(|e| describe(&e))?;
    if problems != ["ok"] {
        return Err(format!("integrity_check: {}", problems.join("; ")));
    }
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |row| row.get(0),
        )
        .map_err(|e| describe(&e))?;
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .map_err(|e| describe(&e))?;
    Ok(CheckReport {
        tables: tables as u64,
        pages: pages as u64,
    })
}

/// Checkpoints `database`'s WAL into its main file and truncates the log (its users are
/// stopped). A failure is logged, not fatal: the restore replaces this data anyway, and a
/// safety backup of it was taken first.
fn fold_wal(database: &Path) {
    let has_wal = std::fs::symlink_metadata(sidecar(database, "-wal"))
        .is_ok_and(|m| m.is_file() && m.len() > 0);
    if !has_wal {
        return;
    }
    let folded = Connection::open_with_flags(
        database,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .and_then(|conn| {
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        })
    });
    match folded {
        Ok(0) => {}
        Ok(_) => {
            tracing::warn!(database = %database.display(), "the old database's log could not be folded in whole (still in use?)")
        }
        Err(error) => {
            tracing::warn!(database = %database.display(), %error, "cannot fold the old database's log in before the restore")
        }
    }
}

/// Puts a checked database file (`staged`, in a directory only the agent writes) in place of
/// `name` in `dir`: copied into a new file created there exclusively, given the old file's
/// owner and mode on its descriptor, the old `-wal`, `-shm` and `-journal` files removed (they
/// belong to the old database and would corrupt the new one), then renamed over `name`. The
/// directory is usually a container's volume, which the container can write: nothing there is
/// followed, and a link where the database should be is refused. The app must not have the
/// database open.
pub fn install(staged: &Path, dir: &berth_fs::Dir, name: &std::ffi::OsStr) -> Result<()> {
    let previous = dir.file_entry(name)?;
    let (owner, mode) = match previous {
        Some(entry) => ((entry.uid, entry.gid), entry.mode & 0o777),
        // A new database belongs to whoever owns its directory (the app's user).
        None => {
            let here = dir.stat()?;
            ((here.uid, here.gid), 0o600)
        }
    };
    let mut source = std::fs::File::open(staged)
        .map_err(|e| BackupError::io(format!("cannot read {}", staged.display()), e))?;
    let prepared = dir.prepare(name, Some(owner), mode, |file| {
        std::io::copy(&mut source, file).map(|_| ())
    })?;
    // The old database's write-ahead log goes into its main file first: a crash between
    // removing the log and renaming the new file in then leaves the old data whole, never a
    // main file without its newest transactions.
    if previous.is_some() {
        fold_wal(&dir.path().join(name));
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut sidecar = name.to_owned();
        sidecar.push(suffix);
        dir.remove_file(&sidecar)?;
    }
    prepared.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(path: &Path, rows: i64, wal: bool) -> Connection {
        let conn = Connection::open(path).unwrap();
        if wal {
            conn.execute_batch("PRAGMA journal_mode = WAL").unwrap();
        }
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..rows {
            tx.execute("INSERT INTO t (body) VALUES (?1)", [format!("row {i}")])
                .unwrap();
        }
        tx.commit().unwrap();
        conn
    }

    #[test]
    fn a_snapshot_of_a_wal_database_with_uncheckpointed_writes_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        // The connection stays open, so the rows stay in the -wal file, not the main file.
        let conn = database(&path, 5000, true);
        let mut image = Vec::new();
        let info = snapshot(&path, &mut image).unwrap();
        assert_eq!(info.journal_mode, "wal");
        assert_eq!(image.len() as u64, info.pages * info.page_size);
        let copy = dir.path().join("copy.db");
        std::fs::write(&copy, &image).unwrap();
        let report = check(&copy).unwrap();
        assert_eq!(report.tables, 1);
        let restored = Connection::open(&copy).unwrap();
        let count: i64 = restored
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 5000);
        drop(conn);
    }

    #[test]
    fn missing_and_foreign_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = snapshot(&dir.path().join("nope.db"), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not exist"), "{error}");
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        let error = snapshot(&junk, &mut Vec::new()).unwrap_err().to_string();
        assert!(error.contains("not a SQLite database"), "{error}");
    }

    #[test]
    fn a_damaged_copy_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        drop(database(&path, 3000, false));
        let mut image = std::fs::read(&path).unwrap();
        // Scribble over an interior page of the table's b-tree.
        let page = 4096;
        for b in &mut image[page * 3 + 8..page * 3 + 200] {
            *b = 0xAB;
        }
        let damaged = dir.path().join("damaged.db");
        std::fs::write(&damaged, &image).unwrap();
        assert!(check(&damaged).is_err());
    }

    #[test]
    fn install_replaces_the_database_and_drops_its_old_wal() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.db");
        drop(database(&target, 10, true));
        std::fs::write(sidecar(&target, "-wal"), b"stale").unwrap();
        let restored = dir.path().join("restored.db");
        drop(database(&restored, 20, false));
        let opened = berth_fs::Dir::open(dir.path()).unwrap();
        install(&restored, &opened, "app.db".as_ref()).unwrap();
        assert!(!sidecar(&target, "-wal").exists());
        let conn = Connection::open(&target).unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 20);
    }

    #[test]
    fn the_old_log_is_folded_in_before_its_files_go() {
        // An app stopped with transactions only in its WAL (as after a crash): copy the
        // files while the writer still holds them.
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let writer = database(&live, 0, true);
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0; BEGIN; CREATE TABLE t2 (x); INSERT INTO t2 VALUES (1), (2), (3); COMMIT;")
            .unwrap();
        let stopped = dir.path().join("stopped.db");
        std::fs::copy(&live, &stopped).unwrap();
        std::fs::copy(sidecar(&live, "-wal"), sidecar(&stopped, "-wal")).unwrap();
        drop(writer);
        fold_wal(&stopped);
        // What install does next: the log goes. The old data is still whole.
        let _ = std::fs::remove_file(sidecar(&stopped, "-wal"));
        let _ = std::fs::remove_file(sidecar(&stopped, "-shm"));
        let conn = Connection::open(&stopped).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t2", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 3, "the log's transactions reached the main file");
    }
}
