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
///
/// `dir` is usually a container's volume, which the container may change while it is read:
/// the walk goes through open directories, one entry at a time without following a link, so
/// a directory swapped for a link mid-walk (to lead the agent into a host directory) is
/// refused, never descended.
pub fn write_dir(dir: &Path, out: &mut dyn Write) -> Result<ArchiveInfo> {
    let root = berth_fs::Dir::open(dir).map_err(|e| {
        BackupError::Source(format!("cannot read the directory {}: {e}", dir.display()))
    })?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut info = ArchiveInfo::default();
    // Directories still to read: the open directory and its path in the archive.
    let mut pending: Vec<(berth_fs::Dir, std::path::PathBuf)> =
        vec![(root, std::path::PathBuf::new())];
    while let Some((current, prefix)) = pending.pop() {
        let mut names = current.names().map_err(|e| walk_error(dir, e))?;
        names.sort();
        let mut subdirectories = Vec::new();
        for name in names {
            let relative = prefix.join(&name);
            let Some(entry) = current.entry(&name).map_err(|e| walk_error(dir, e))? else {
                continue; // gone since the listing
            };
            match entry.kind {
                berth_fs::Kind::Directory => {
                    info.directories += 1;
                    let mut header = header_of(&entry, tar::EntryType::Directory);
                    builder
                        .append_data(&mut header, &relative, io::empty())
                        .map_err(|e| archive_error(&current.path().join(&name), e))?;
                    let opened = current
                        .subdirectory(&name, false)
                        .map_err(|e| walk_error(dir, e))?;
                    subdirectories.push((opened, relative));
                }
                berth_fs::Kind::File => {
                    info.files += 1;
                    let file = current.open_file(&name).map_err(|e| walk_error(dir, e))?;
                    info.bytes +=
                        append_file(&mut builder, file, &current.path().join(&name), &relative)?;
                }
                berth_fs::Kind::Symlink => {
                    let target = current.read_link(&name).map_err(|e| walk_error(dir, e))?;
                    let mut header = header_of(&entry, tar::EntryType::Symlink);
                    builder
                        .append_link(&mut header, &relative, &target)
                        .map_err(|e| archive_error(&current.path().join(&name), e))?;
                }
                berth_fs::Kind::Other => info.skipped += 1,
            }
        }
        // Depth first, in name order.
        pending.extend(subdirectories.into_iter().rev());
    }
    builder
        .into_inner()
        .and_then(|out| out.flush())
        .map_err(|e| BackupError::io("cannot pass the archive on", e))?;
    Ok(info)
}

/// A tar header for a directory or link, from what `lstat` said of it.
fn header_of(entry: &berth_fs::Entry, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(entry.mode);
    header.set_uid(u64::from(entry.uid));
    header.set_gid(u64::from(entry.gid));
    header.set_mtime(u64::try_from(entry.mtime).unwrap_or(0));
    header.set_size(0);
    header
}

fn walk_error(dir: &Path, error: berth_fs::FsError) -> BackupError {
    match error {
        berth_fs::FsError::Io { source, path, .. } if source.kind() == io::ErrorKind::NotFound => {
            archive_error(&path, source)
        }
        other => BackupError::Source(format!("cannot archive {}: {other}", dir.display())),
    }
}

/// Archives a regular file through its open descriptor (opened without following a link and
/// checked to be a regular file by `berth_fs`), its header taken from that same descriptor.
/// Returns its size.
fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    file: std::fs::File,
    path: &Path,
    relative: &Path,
) -> Result<u64> {
    let metadata = file.metadata().map_err(|e| archive_error(path, e))?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
    builder
        .append_data(&mut header, relative, file)
        .map_err(|e| archive_error(path, e))?;
    Ok(metadata.len())
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
    drain(archive.into_inner())
        .map_err(|e| format!("reading past the archive's end failed: {e}"))?;
    Ok(info)
}

/// Reads what follows a tar archive's end marker (the writer's padding) to the end. A reader
/// that stopped at the marker would leave the stream's writer with a broken pipe, and the
/// backup or restore failing for a reason that is no fault of its data.
pub fn drain(mut rest: impl Read) -> io::Result<u64> {
    io::copy(&mut rest, &mut io::sink())
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
    drain(archive.into_inner()).map_err(|e| BackupError::io("cannot read the archive", e))?;
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
    fn checking_and_unpacking_read_the_stream_to_its_end_past_the_archive() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("file.txt"), b"hello").unwrap();
        let mut tar = Vec::new();
        write_dir(src.path(), &mut tar).unwrap();
        // A writer may pad past the end marker (tar pads to 10 KiB records).
        tar.extend_from_slice(&[0u8; 20 * 1024]);
        let mut checked = std::io::Cursor::new(&tar);
        check(&mut checked).unwrap();
        assert_eq!(
            checked.position(),
            tar.len() as u64,
            "check read to the end"
        );
        let dest = tempfile::tempdir().unwrap();
        let mut unpacked = std::io::Cursor::new(&tar);
        unpack(&mut unpacked, dest.path(), false).unwrap();
        assert_eq!(
            unpacked.position(),
            tar.len() as u64,
            "unpack read to the end"
        );
    }

    #[test]
    fn links_in_the_tree_are_archived_as_links_never_followed() {
        // A container's volume holding links to a host file and a host directory (or
        // swapping its own entries for them while it is read): the archive holds the links
        // themselves, and nothing of what they point to.
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("shadow"), b"root:secret").unwrap();
        let volume = tempfile::tempdir().unwrap();
        std::fs::write(volume.path().join("aaa"), b"app data").unwrap();
        std::os::unix::fs::symlink(host.path().join("shadow"), volume.path().join("file-link"))
            .unwrap();
        std::os::unix::fs::symlink(host.path(), volume.path().join("zzz")).unwrap();
        let mut tar = Vec::new();
        let info = write_dir(volume.path(), &mut tar).unwrap();
        assert_eq!(info.files, 1);
        assert!(!tar.windows(11).any(|w| w == b"root:secret"));
        let dest = tempfile::tempdir().unwrap();
        unpack(&mut &tar[..], dest.path(), false).unwrap();
        assert_eq!(
            std::fs::read_link(dest.path().join("zzz")).unwrap(),
            host.path()
        );
    }

    #[test]
    fn unpacking_through_a_pinned_directory_ignores_a_swap_of_its_name() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/file"), b"restored").unwrap();
        let mut tar = Vec::new();
        write_dir(src.path(), &mut tar).unwrap();

        let shared = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(shared.path().join("staging")).unwrap();
        let staging = berth_fs::Dir::open(&shared.path().join("staging")).unwrap();
        // Someone renames the staging directory away and plants a link in its place.
        std::fs::rename(shared.path().join("staging"), shared.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), shared.path().join("staging")).unwrap();
        unpack(&mut &tar[..], &staging.pinned_path(), false).unwrap();
        assert_eq!(
            std::fs::read(shared.path().join("moved/sub/file")).unwrap(),
            b"restored"
        );
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
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
