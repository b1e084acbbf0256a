//! Directories as tar streams: writing one, checking one reads cleanly to its end, and
//! unpacking one.

use crate::error::{BackupError, Result};
use std::io::{self, Read, Write};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
    /// Sockets, FIFOs and devices, which a tar of data has no use for.
    pub skipped: u64,
}

impl std::fmt::Display for ArchiveInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files, {} directories, {} bytes",
            self.files, self.directories, self.bytes
        )?;
        if self.skipped > 0 {
            write!(f, ", {} special files skipped", self.skipped)?;
        }
        Ok(())
    }
}

/// Writes `dir`'s contents (not `dir` itself) as a tar stream. Symbolic links are stored as
/// links, never followed; ownership, modes and times are kept.
pub fn write_dir(dir: &Path, out: &mut dyn Write) -> Result<ArchiveInfo> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        BackupError::Source(format!("cannot read the directory {}: {e}", dir.display()))
    })?;
    if !meta.is_dir() {
        return Err(BackupError::Source(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut info = ArchiveInfo::default();
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1);
    for entry in walk {
        let entry = entry
            .map_err(|e| BackupError::Source(format!("cannot read {}: {e}", dir.display())))?;
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let kind = entry.file_type();
        if kind.is_dir() {
            info.directories += 1;
        } else if kind.is_file() {
            info.files += 1;
            info.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        } else if !kind.is_symlink() {
            info.skipped += 1;
            continue;
        }
        if kind.is_file() {
            append_file(&mut builder, entry.path(), relative)?;
        } else {
            builder
                .append_path_with_name(entry.path(), relative)
                .map_err(|e| archive_error(entry.path(), e))?;
        }
    }
    builder
        .into_inner()
        .and_then(|out| out.flush())
        .map_err(|e| BackupError::io("cannot pass the archive on", e))?;
    Ok(info)
}

/// Archives a regular file through one open descriptor: opened without following a link,
/// checked to be a regular file, its header taken from that same descriptor. A container that
/// swaps the file for a link (or a FIFO) between the directory listing and the read gets the
/// backup refused, never a host file read into it.
fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    relative: &Path,
) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                BackupError::Source(format!(
                    "{} became a symbolic link while it was archived; berth does not follow links in a container's data",
                    path.display()
                ))
            } else {
                archive_error(path, e)
            }
        })?;
    let metadata = file.metadata().map_err(|e| archive_error(path, e))?;
    if !metadata.is_file() {
        return Err(BackupError::Source(format!(
            "{} stopped being a regular file while it was archived",
            path.display()
        )));
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
    builder
        .append_data(&mut header, relative, file)
        .map_err(|e| archive_error(path, e))
}

fn archive_error(path: &Path, error: io::Error) -> BackupError {
    if error.kind() == io::ErrorKind::NotFound {
        BackupError::Source(format!(
            "{} disappeared while it was archived; pause the service during the backup \
             (pause = true) if files come and go",
            path.display()
        ))
    } else {
        BackupError::Source(format!("cannot archive {}: {error}", path.display()))
    }
}

/// Reads a tar stream to its end, checking every header and entry.
pub fn check(input: &mut dyn Read) -> std::result::Result<ArchiveInfo, String> {
    let mut archive = tar::Archive::new(input);
    let mut info = ArchiveInfo::default();
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the archive is damaged or cut short: {e}"))?;
        let kind = entry.header().entry_type();
        let path = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if kind.is_dir() {
            info.directories += 1;
        } else if kind.is_file() {
            info.files += 1;
        }
        info.bytes += io::copy(&mut entry, &mut io::sink())
            .map_err(|e| format!("the archive is cut short in {path}: {e}"))?;
    }
    Ok(info)
}

/// Unpacks a tar stream into `dest`, which must exist. Entries may not escape `dest`. Files
/// keep their owners and modes, but not setuid and setgid bits unless `keep_setuid`: a file a
/// container (or anyone who could write the storage) put in a backup must never come back as
/// a program that runs with its owner's rights.
pub fn unpack(input: &mut dyn Read, dest: &Path, keep_setuid: bool) -> Result<ArchiveInfo> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    if !keep_setuid {
        archive.set_mask(0o6000);
    }
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut info = ArchiveInfo::default();
    let entries = archive
        .entries()
        .map_err(|e| BackupError::io("cannot read the archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BackupError::io("cannot read the archive", e))?;
        let kind = entry.header().entry_type();
        let size = entry.size();
        let unpacked = entry
            .unpack_in(dest)
            .map_err(|e| BackupError::io(format!("cannot unpack into {}", dest.display()), e))?;
        if !unpacked {
            return Err(BackupError::Invalid(format!(
                "the archive holds a path that leads outside {}; refusing to unpack it",
                dest.display()
            )));
        }
        if kind.is_dir() {
            info.directories += 1;
        } else if kind.is_file() {
            info.files += 1;
            info.bytes += size;
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_round_trips_with_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/file.txt"), b"hello").unwrap();
        std::fs::write(src.path().join("top.bin"), vec![1u8; 100_000]).unwrap();
        std::fs::set_permissions(
            src.path().join("top.bin"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("a/b/file.txt", src.path().join("link")).unwrap();

        let mut tar = Vec::new();
        let written = write_dir(src.path(), &mut tar).unwrap();
        assert_eq!(written.files, 2);
        assert_eq!(written.directories, 2);
        let checked = check(&mut &tar[..]).unwrap();
        assert_eq!(checked.files, 2);
        assert_eq!(checked.bytes, 100_005);

        let dest = tempfile::tempdir().unwrap();
        unpack(&mut &tar[..], dest.path(), false).unwrap();
        assert_eq!(
            std::fs::read(dest.path().join("a/b/file.txt")).unwrap(),
            b"hello"
        );
        let mode = std::fs::metadata(dest.path().join("top.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(
            std::fs::read_link(dest.path().join("link")).unwrap(),
            Path::new("a/b/file.txt")
        );
    }

    #[test]
    fn a_file_swapped_for_a_link_after_the_listing_is_refused_not_read() {
        // What `write_dir` does once the walk has seen a regular file: the name now holds a
        // link to a host file (a container swapped it), or a FIFO (which would block).
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, b"root:secret").unwrap();
        let swapped = dir.path().join("app.db");
        std::os::unix::fs::symlink(&victim, &swapped).unwrap();
        let mut tar = Vec::new();
        let mut builder = tar::Builder::new(&mut tar);
        let error = append_file(&mut builder, &swapped, Path::new("app.db")).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        drop(builder);
        assert!(!tar.windows(11).any(|w| w == b"root:secret"));
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let mut builder = tar::Builder::new(Vec::new());
        let error = append_file(&mut builder, &fifo, Path::new("fifo")).unwrap_err();
        assert!(error.to_string().contains("regular file"), "{error}");
    }

    #[test]
    fn setuid_and_setgid_bits_are_stripped_unless_asked() {
        use std::os::unix::fs::PermissionsExt;
        let mut tar = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut tar);
            for (name, mode) in [("suid", 0o4755), ("sgid", 0o2750), ("sticky", 0o1777)] {
                let mut header = tar::Header::new_gnu();
                header.set_size(2);
                header.set_mode(mode);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(0);
                builder.append_data(&mut header, name, &b"#!"[..]).unwrap();
            }
            builder.finish().unwrap();
        }
        let mode = |dir: &Path, name: &str| {
            std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        let stripped = tempfile::tempdir().unwrap();
        unpack(&mut &tar[..], stripped.path(), false).unwrap();
        assert_eq!(mode(stripped.path(), "suid"), 0o755);
        assert_eq!(mode(stripped.path(), "sgid"), 0o750);
        assert_eq!(mode(stripped.path(), "sticky"), 0o1777);
        let kept = tempfile::tempdir().unwrap();
        unpack(&mut &tar[..], kept.path(), true).unwrap();
        assert_eq!(mode(kept.path(), "suid"), 0o4755);
    }

    #[test]
    fn a_cut_archive_fails_the_check() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("big"), vec![9u8; 50_000]).unwrap();
        let mut tar = Vec::new();
        write_dir(src.path(), &mut tar).unwrap();
        tar.truncate(20_000);
        let error = check(&mut &tar[..]).unwrap_err();
        assert!(error.contains("cut short"), "{error}");
    }

    #[test]
    fn a_missing_directory_is_a_source_error() {
        let error = write_dir(Path::new("/nonexistent/berth"), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/berth"), "{error}");
    }
}
