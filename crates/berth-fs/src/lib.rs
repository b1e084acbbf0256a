//! File operations for places another party can write.
//!
//! The agent runs as root and writes into directories that others can write too: a
//! container's volume, a bind-mounted host directory, a `--to` path in a shared directory. A
//! process there can plant a symbolic link where berth is about to write, hoping the agent
//! follows it onto a host file. Everything here works on open directory descriptors:
//! - no symbolic link is followed below a directory berth trusts (the volume's root, a
//!   directory the operator named): each component is opened with `O_NOFOLLOW`;
//! - files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` under a random name, written,
//!   given their owner and mode on the open descriptor (`fchown`, `fchmod`), synced, and
//!   renamed into place; afterwards the name must still point at the file berth wrote;
//! - a symbolic link where a file or directory is expected is refused with an error that
//!   says so.
//!
//! Also here: the checks for berth's own private files and directories (the data
//! directory, key files), which must belong to the agent's user and be closed to others.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(
        "{path} is a symbolic link where berth expects a {expected}; berth never follows links in places others can write (a container's volume, a shared directory). Remove it, and find out what created it"
    )]
    Symlink {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{path} is a {found}, not a {expected}")]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "{path} was replaced while berth was writing it: something else writes to this directory (a process in a container?), so berth stopped"
    )]
    Interference { path: PathBuf },
    #[error("{path} {problem}; {fix}")]
    NotPrivate {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    #[error("{path} must be a relative path without `..`")]
    OutsideRoot { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

fn io(action: &'static str, path: &Path) -> impl FnOnce(rustix::io::Errno) -> FsError + use<> {
    let path = path.to_owned();
    move |errno| FsError::Io {
        action,
        path,
        source: errno.into(),
    }
}

fn std_io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FsError + use<> {
    let path = path.to_owned();
    move |source| FsError::Io {
        action,
        path,
        source,
    }
}

/// What kind of thing a directory entry is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Symlink,
    Other,
}

impl Kind {
    fn of(file_type: FileType) -> Self {
        match file_type {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Directory,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Directory => "directory",
            Kind::Symlink => "symbolic link",
            Kind::Other => "special file",
        }
    }
}

/// A directory entry as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (including setuid, setgid and sticky).
    pub mode: u32,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
}

impl Entry {
    fn of(stat: &rustix::fs::Stat) -> Self {
        Entry {
            kind: Kind::of(FileType::from_raw_mode(stat.st_mode)),
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode & 0o7777,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            dev: stat.st_dev,
            ino: stat.st_ino,
            mtime: stat.st_mtime,
        }
    }
}

/// An open directory: every operation names an entry in it, never a path through it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn single_name(name: &OsStr) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.as_bytes().contains(&b'/')
}

impl Dir {
    /// Opens a directory berth trusts as named (the operator's or Docker's path): links in
    /// the path itself are followed, as its owner meant them.
    pub fn open(path: &Path) -> Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io("open the directory", path))?;
        Ok(Dir {
            fd,
            path: path.to_owned(),
        })
    }

    /// Opens `relative` below the trusted `root`, one component at a time, never following a
    /// link; with `create`, missing directories are made (mode 0755, owned by the agent).
    pub fn open_beneath(root: &Path, relative: &Path, create: bool) -> Result<Dir> {
        let mut dir = Dir::open(root)?;
        for component in relative.components() {
            match component {
                Component::Normal(name) => dir = dir.subdirectory(name, create)?,
                Component::CurDir => {}
                _ => {
                    return Err(FsError::OutsideRoot {
                        path: relative.to_owned(),
                    });
                }
            }
        }
        Ok(dir)
    }

    /// Opens the directory `name` in this one without following a link.
    pub fn subdirectory(&self, name: &OsStr, create: bool) -> Result<Dir> {
        let path = self.path.join(name);
        if !single_name(name) {
            return Err(FsError::OutsideRoot { path });
        }
        if create {
            match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(errno) => return Err(io("create the directory", &path)(errno)),
            }
        }
        match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Dir { fd, path }),
            Err(rustix::io::Errno::LOOP) => Err(FsError::Symlink {
                path,
                expected: "directory",
            }),
            Err(rustix::io::Errno::NOTDIR) => {
                let found = self.entry(name)?.map_or(Kind::Other, |e| e.kind);
                Err(match found {
                    Kind::Symlink => FsError::Symlink {
                        path,
                        expected: "directory",
                    },
                    found => FsError::WrongKind {
                        path,
                        expected: "directory",
                        found: found.name(),
                    },
                })
            }
            Err(errno) => Err(io("open the directory", &path)(errno)),
        }
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the same directory (whatever is renamed or swapped around it).
    pub fn try_clone(&self) -> Result<Dir> {
        let fd = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(io("open", &self.path))?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// A path that names this very directory for as long as this handle is open, however
    /// its name changes: `/proc/self/fd/N`. For libraries that only take paths.
    pub fn pinned_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// What `name` is, without following it; `None` when there is nothing there.
    pub fn entry(&self, name: &OsStr) -> Result<Option<Entry>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(Entry::of(&stat))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(errno) => Err(io("look at", &self.path.join(name))(errno)),
        }
    }

    /// What the directory itself is.
    pub fn stat(&self) -> Result<Entry> {
        rustix::fs::fstat(&self.fd)
            .map(|stat| Entry::of(&stat))
            .map_err(io("look at", &self.path))
    }

    /// `name` when it is a regular file (or nothing); a link or anything else is refused.
    pub fn file_entry(&self, name: &OsStr) -> Result<Option<Entry>> {
        let path = || self.path.join(name);
        match self.entry(name)? {
            None => Ok(None),
            Some(entry) if entry.kind == Kind::File => Ok(Some(entry)),
            Some(entry) if entry.kind == Kind::Symlink => Err(FsError::Symlink {
                path: path(),
                expected: "file",
            }),
            Some(entry) => Err(FsError::WrongKind {
                path: path(),
                expected: "file",
                found: entry.kind.name(),
            }),
        }
    }

    /// Creates the file `name`, which must not exist (not even as a link), readable and
    /// writable by the agent only until [`set_owner_and_mode`] says otherwise.
    pub fn create_new(&self, name: &OsStr) -> Result<File> {
        let path = self.path.join(name);
        if !single_name(name) {
            return Err(FsError::OutsideRoot { path });
        }
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|errno| match errno {
            rustix::io::Errno::EXIST => match self.entry(name) {
                Ok(Some(entry)) if entry.kind == Kind::Symlink => FsError::Symlink {
                    path: path.clone(),
                    expected: "new file",
                },
                _ => io("create", &path)(errno),
            },
            errno => io("create", &path)(errno),
        })?;
        // The umask may have narrowed 0600; the descriptor is what counts.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))
            .map_err(io("set the mode of", &path))?;
        Ok(File::from(fd))
    }

    /// Creates a new file with a random name starting `.PREFIX.berth-`, exclusively.
    pub fn create_temp(&self, prefix: &OsStr) -> Result<(File, OsString)> {
        let name = temp_name(prefix);
        let file = self.create_new(&name)?;
        Ok((file, name))
    }

    /// Creates a new directory (0700) with a random name starting `.PREFIX.berth-`, and opens
    /// it.
    pub fn create_temp_dir(&self, prefix: &OsStr) -> Result<(Dir, OsString)> {
        let name = temp_name(prefix);
        let path = self.path.join(&name);
        rustix::fs::mkdirat(&self.fd, &name, Mode::from_raw_mode(0o700))
            .map_err(io("create the directory", &path))?;
        let dir = self.subdirectory(&name, false)?;
        Ok((dir, name))
    }

    /// Opens the regular file `name` for reading; a link or anything else is refused.
    pub fn open_file(&self, name: &OsStr) -> Result<File> {
        let path = self.path.join(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| match errno {
            rustix::io::Errno::LOOP => FsError::Symlink {
                path: path.clone(),
                expected: "file",
            },
            errno => io("open", &path)(errno),
        })?;
        let found = Kind::of(FileType::from_raw_mode(
            rustix::fs::fstat(&fd)
                .map_err(io("look at", &path))?
                .st_mode,
        ));
        if found != Kind::File {
            return Err(FsError::WrongKind {
                path,
                expected: "file",
                found: found.name(),
            });
        }
        Ok(File::from(fd))
    }

    /// Removes the entry `name` (a link itself, never what it points to); false when there
    /// was none.
    pub fn remove_file(&self, name: &OsStr) -> Result<bool> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(errno) => Err(io("remove", &self.path.join(name))(errno)),
        }
    }

    /// Removes the entry `name` whatever it is: a directory with everything in it (links
    /// inside are removed, not followed), or a file or link. Iterative, so a hostile tree
    /// thousands of levels deep costs descriptors (and fails cleanly when they run out),
    /// never the stack.
    pub fn remove_any(&self, name: &OsStr) -> Result<()> {
        match self.entry(name)? {
            None => return Ok(()),
            Some(entry) if entry.kind != Kind::Directory => {
                return self.remove_file(name).map(|_| ());
            }
            Some(_) => {}
        }
        // Each level: the directory and the names left to remove in it.
        let mut levels: Vec<(Dir, Vec<OsString>)> = Vec::new();
        let top = self.subdirectory(name, false)?;
        let names = top.names()?;
        levels.push((top, names));
        loop {
            let next = levels.last_mut().and_then(|(_, pending)| pending.pop());
            match next {
                Some(child) => {
                    let Some((dir, _)) = levels.last() else {
                        break;
                    };
                    match dir.entry(&child)? {
                        Some(entry) if entry.kind == Kind::Directory => {
                            let inner = dir.subdirectory(&child, false)?;
                            let names = inner.names()?;
                            levels.push((inner, names));
                        }
                        Some(_) => {
                            dir.remove_file(&child)?;
                        }
                        None => {}
                    }
                }
                None => {
                    let Some((done, _)) = levels.pop() else {
                        break;
                    };
                    let parent = levels.last().map_or(self, |(parent, _)| parent);
                    let done_name = match levels.last() {
                        Some(_) => done.path.file_name().map(OsStr::to_owned),
                        None => Some(name.to_owned()),
                    };
                    let Some(done_name) = done_name else {
                        return Err(FsError::OutsideRoot { path: done.path });
                    };
                    rustix::fs::unlinkat(&parent.fd, &done_name, AtFlags::REMOVEDIR)
                        .map_err(io("remove the directory", &done.path))?;
                }
            }
        }
        Ok(())
    }

    /// Where the link `name` points.
    pub fn read_link(&self, name: &OsStr) -> Result<PathBuf> {
        rustix::fs::readlinkat(&self.fd, name, Vec::new())
            .map(|target| PathBuf::from(OsStr::from_bytes(target.as_bytes())))
            .map_err(io("read the link", &self.path.join(name)))
    }

    /// The names in this directory (without `.` and `..`).
    pub fn names(&self) -> Result<Vec<OsString>> {
        let failed = io("list", &self.path);
        let dup = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(failed)?;
        let mut listing = rustix::fs::Dir::read_from(dup).map_err(io("list", &self.path))?;
        let mut names = Vec::new();
        while let Some(entry) = listing.read() {
            let entry = entry.map_err(io("list", &self.path))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        Ok(names)
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to)
            .map_err(io("rename into place", &self.path.join(to)))
    }

    /// Moves `name` from this directory into `target` under the same name.
    pub fn move_to(&self, name: &OsStr, target: &Dir) -> Result<()> {
        rustix::fs::renameat(&self.fd, name, &target.fd, name)
            .map_err(io("move into place", &target.path.join(name)))
    }

    /// Changes the owner of `name` itself (a link's own owner, never its target's).
    pub fn set_owner_nofollow(&self, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
        rustix::fs::chownat(
            &self.fd,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io("change the owner of", &self.path.join(name)))
    }

    /// Makes what was written to the directory durable (renames, removals).
    pub fn sync(&self) -> Result<()> {
        rustix::fs::fsync(&self.fd).map_err(io("sync", &self.path))
    }

    /// Replaces `name` with what `fill` writes, atomically: a new file under a random name,
    /// owner and mode set on its descriptor, synced, renamed over `name`, then checked to be
    /// the one in place. Whatever `name` was (a file, a link planted there) is replaced, never
    /// written through.
    pub fn replace(
        &self,
        name: &OsStr,
        owner: Option<(u32, u32)>,
        mode: u32,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<()> {
        self.prepare(name, owner, mode, fill)?.commit()
    }

    /// The first half of [`Dir::replace`]: the new file, written and synced under its
    /// temporary name, for a caller with something to do before it takes `name` (dropping
    /// the result removes it).
    pub fn prepare(
        &self,
        name: &OsStr,
        owner: Option<(u32, u32)>,
        mode: u32,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<Prepared<'_>> {
        let path = self.path.join(name);
        if !single_name(name) {
            return Err(FsError::OutsideRoot { path });
        }
        let (file, temp) = self.create_temp(name)?;
        // From here on, dropping `prepared` removes the temporary file.
        let mut prepared = Prepared {
            dir: self,
            file: Some(file),
            temp,
            name: name.to_owned(),
        };
        let Some(file) = prepared.file.as_mut() else {
            return Err(FsError::Interference { path });
        };
        fill(file)
            .and_then(|()| file.flush())
            .map_err(std_io("write", &path))?;
        set_owner_and_mode(file, owner, mode)
            .map_err(std_io("set the owner and mode of", &path))?;
        file.sync_all().map_err(std_io("sync", &path))?;
        Ok(prepared)
    }

    /// Replaces `name` with a copy of `source` (see [`Dir::replace`]).
    pub fn replace_with_copy(
        &self,
        name: &OsStr,
        source: &mut File,
        owner: Option<(u32, u32)>,
        mode: u32,
    ) -> Result<()> {
        self.replace(name, owner, mode, |file| {
            std::io::copy(source, file).map(|_| ())
        })
    }
}

/// A new file written under a temporary name, waiting to take its name; removed when dropped
/// uncommitted.
pub struct Prepared<'a> {
    dir: &'a Dir,
    file: Option<File>,
    temp: OsString,
    name: OsString,
}

impl Prepared<'_> {
    /// Renames the file over its name, checks that the name now holds it, and syncs the
    /// directory.
    pub fn commit(mut self) -> Result<()> {
        let dir = self.dir;
        let path = dir.path.join(&self.name);
        dir.rename(&self.temp, &self.name)?;
        self.temp.clear();
        let Some(file) = self.file.take() else {
            return Err(FsError::Interference { path });
        };
        let ours = rustix::fs::fstat(&file).map_err(io("look at", &path))?;
        match dir.entry(&self.name)? {
            Some(entry) if entry.dev == ours.st_dev && entry.ino == ours.st_ino => {}
            _ => return Err(FsError::Interference { path }),
        }
        dir.sync()
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        if !self.temp.is_empty() {
            let _ = self.dir.remove_file(&self.temp);
        }
    }
}

fn temp_name(prefix: &OsStr) -> OsString {
    let mut name = OsString::from(".");
    // Long names are cut so the temporary name stays within NAME_MAX.
    let bytes = prefix.as_bytes();
    name.push(OsStr::from_bytes(&bytes[..bytes.len().min(200)]));
    name.push(".berth-");
    name.push(hex::encode(rand::random::<[u8; 8]>()));
    name
}

/// Sets an open file's owner (when given) and then its mode: in this order, because a change
/// of owner clears setuid and setgid bits.
pub fn set_owner_and_mode(
    file: &File,
    owner: Option<(u32, u32)>,
    mode: u32,
) -> std::io::Result<()> {
    if let Some((uid, gid)) = owner {
        rustix::fs::fchown(
            file,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    rustix::fs::fchmod(file, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Makes every file and directory this process creates closed to group and others unless a
/// mode is set explicitly afterwards (files berth hands to containers are).
pub fn restrict_umask() {
    rustix::process::umask(Mode::from_raw_mode(0o077));
}

/// What [`private_dir`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateDir {
    Created,
    AlreadyPrivate,
    /// It was open to group or others (the old mode); now it is 0700.
    Tightened(u32),
}

/// Makes `path` a directory only this process's user can enter: created 0700 (with its
/// parents) when missing; an existing one must belong to this user and is closed to group
/// and others if it was open.
pub fn private_dir(path: &Path) -> Result<PrivateDir> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(std_io("create the directory", path))?;
            let dir = Dir::open(path)?;
            rustix::fs::fchmod(&dir.fd, Mode::from_raw_mode(0o700))
                .map_err(io("set the mode of", path))?;
            return Ok(PrivateDir::Created);
        }
        Err(e) => return Err(std_io("look at", path)(e)),
        Ok(_) => {}
    }
    // The path itself may be a link the operator made (/var/lib/berth -> /data/berth); the
    // directory it names is what must be private.
    let dir = Dir::open(path)?;
    let entry = dir.stat()?;
    let me = effective_uid();
    if entry.uid != me {
        return Err(FsError::NotPrivate {
            path: path.to_owned(),
            problem: format!(
                "belongs to uid {}, not to uid {me} that runs berth",
                entry.uid
            ),
            fix: format!(
                "give it to this user (chown -R {me} {}) or choose another --data-dir",
                path.display()
            ),
        });
    }
    if entry.mode & 0o077 == 0 {
        return Ok(PrivateDir::AlreadyPrivate);
    }
    rustix::fs::fchmod(&dir.fd, Mode::from_raw_mode(entry.mode & 0o700 | 0o700))
        .map_err(io("set the mode of", path))?;
    Ok(PrivateDir::Tightened(entry.mode))
}

/// Reads a secret file of berth's own (a key, a token): it must be a regular file (not a
/// link), belong to this process's user, be closed to group and others, and hold at most
/// `max_len` bytes.
pub fn read_private(path: &Path, max_len: u64) -> Result<Vec<u8>> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| match errno {
        rustix::io::Errno::LOOP => FsError::Symlink {
            path: path.to_owned(),
            expected: "file",
        },
        errno => io("read", path)(errno),
    })?;
    let entry = Entry::of(&rustix::fs::fstat(&fd).map_err(io("look at", path))?);
    let not_private = |problem: String, fix: String| FsError::NotPrivate {
        path: path.to_owned(),
        problem,
        fix,
    };
    if entry.kind != Kind::File {
        return Err(FsError::WrongKind {
            path: path.to_owned(),
            expected: "file",
            found: entry.kind.name(),
        });
    }
    let me = effective_uid();
    if entry.uid != me {
        return Err(not_private(
            format!(
                "belongs to uid {}, not to uid {me} that runs berth",
                entry.uid
            ),
            format!("chown {me} {}", path.display()),
        ));
    }
    if entry.mode & 0o077 != 0 {
        return Err(not_private(
            format!("can be read by others (mode {:o})", entry.mode),
            format!(
                "chmod 600 {}, and consider the secret in it exposed",
                path.display()
            ),
        ));
    }
    if entry.size > max_len {
        return Err(not_private(
            format!(
                "is {} bytes, more than such a file ever holds ({max_len})",
                entry.size
            ),
            "restore it from a backup, or remove it so berth makes a new one".to_owned(),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(entry.size).unwrap_or(0));
    File::from(fd)
        .take(max_len + 1)
        .read_to_end(&mut bytes)
        .map_err(std_io("read", path))?;
    Ok(bytes)
}

/// Writes a new private file of berth's own (0600, exclusively: never over an existing file
/// or through a link).
pub fn write_private_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    let mut file = Dir::open(dir)?.create_new(name)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(std_io("write", path))
}

/// Replaces a file of berth's own with `bytes` through a new file and a rename (so a reader
/// never sees half of it, and a read-only old file is no obstacle).
pub fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let (dir, name) = split(path)?;
    Dir::open(dir)?.replace(name, None, mode, |file| file.write_all(bytes))
}

/// A path's directory and file name.
pub fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            },
            name,
        )),
        _ => Err(FsError::OutsideRoot {
            path: path.to_owned(),
        }),
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests;
