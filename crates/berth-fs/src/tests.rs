#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

/// A "host file" only root may touch, and a directory a container writes, side by side.
fn victim_and_volume() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let victim = root.path().join("shadow");
    std::fs::write(&victim, b"root:secret\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let volume = root.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    (root, victim, volume)
}

fn untouched(victim: &Path) {
    assert_eq!(std::fs::read(victim).unwrap(), b"root:secret\n");
    assert_eq!(std::fs::metadata(victim).unwrap().mode() & 0o7777, 0o600);
}

#[test]
fn replacing_a_planted_link_replaces_the_link_and_never_writes_through_it() {
    let (_root, victim, volume) = victim_and_volume();
    symlink(&victim, volume.join("app.db")).unwrap();
    let dir = Dir::open(&volume).unwrap();
    dir.replace(OsStr::new("app.db"), None, 0o640, |f| {
        f.write_all(b"new database")
    })
    .unwrap();
    untouched(&victim);
    let placed = std::fs::symlink_metadata(volume.join("app.db")).unwrap();
    assert!(placed.is_file(), "the link itself was replaced by a file");
    assert_eq!(placed.mode() & 0o7777, 0o640);
    assert_eq!(
        std::fs::read(volume.join("app.db")).unwrap(),
        b"new database"
    );
    let leftovers: Vec<_> = dir.names().unwrap();
    assert_eq!(
        leftovers,
        [OsString::from("app.db")],
        "no temporary file left"
    );
}

#[test]
fn a_planted_link_at_a_new_files_name_is_refused() {
    let (_root, victim, volume) = victim_and_volume();
    symlink(&victim, volume.join("restored.db")).unwrap();
    let dir = Dir::open(&volume).unwrap();
    let error = dir.create_new(OsStr::new("restored.db")).unwrap_err();
    assert!(matches!(error, FsError::Symlink { .. }), "{error}");
    assert!(error.to_string().contains("symbolic link"), "{error}");
    assert!(dir.file_entry(OsStr::new("restored.db")).is_err());
    assert!(dir.open_file(OsStr::new("restored.db")).is_err());
    untouched(&victim);
}

#[test]
fn directories_below_a_root_are_opened_without_following_links() {
    let (root, victim, volume) = victim_and_volume();
    std::fs::create_dir(volume.join("data")).unwrap();
    symlink(root.path(), volume.join("escape")).unwrap();
    let inside = Dir::open_beneath(&volume, Path::new("data"), false).unwrap();
    assert_eq!(inside.path(), volume.join("data"));
    let error = Dir::open_beneath(&volume, Path::new("escape"), false).unwrap_err();
    assert!(matches!(error, FsError::Symlink { .. }), "{error}");
    let error = Dir::open_beneath(&volume, Path::new("../volume"), false).unwrap_err();
    assert!(matches!(error, FsError::OutsideRoot { .. }), "{error}");
    let made = Dir::open_beneath(&volume, Path::new("a/b"), true).unwrap();
    assert!(made.path().ends_with("a/b") && volume.join("a/b").is_dir());
    untouched(&victim);
}

#[test]
fn removing_a_tree_removes_links_not_what_they_point_to() {
    let (_root, victim, volume) = victim_and_volume();
    std::fs::create_dir_all(volume.join("tree/inner")).unwrap();
    symlink(&victim, volume.join("tree/inner/link")).unwrap();
    symlink(victim.parent().unwrap(), volume.join("tree/dirlink")).unwrap();
    Dir::open(&volume)
        .unwrap()
        .remove_any(OsStr::new("tree"))
        .unwrap();
    assert!(!volume.join("tree").exists());
    untouched(&victim);
}

#[test]
fn owner_and_mode_are_set_on_the_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Dir::open(dir.path()).unwrap();
    let file = opened.create_new(OsStr::new("f")).unwrap();
    let me = effective_uid();
    let gid = std::fs::metadata(dir.path()).unwrap().gid();
    set_owner_and_mode(&file, Some((me, gid)), 0o6750).unwrap();
    let meta = std::fs::metadata(dir.path().join("f")).unwrap();
    assert_eq!(
        meta.mode() & 0o7777,
        0o6750,
        "setuid survives: owner first, then mode"
    );
    assert_eq!(meta.uid(), me);
}

#[test]
fn a_private_directory_is_made_or_tightened() {
    let parent = tempfile::tempdir().unwrap();
    let fresh = parent.path().join("new/data");
    assert_eq!(private_dir(&fresh).unwrap(), PrivateDir::Created);
    assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
    assert_eq!(private_dir(&fresh).unwrap(), PrivateDir::AlreadyPrivate);
    let open = parent.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(private_dir(&open).unwrap(), PrivateDir::Tightened(0o755));
    assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn private_files_must_be_private_regular_and_small() {
    let (_root, victim, volume) = victim_and_volume();
    let key = volume.join("key");
    write_private_new(&key, b"secret").unwrap();
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    assert_eq!(read_private(&key, 64).unwrap(), b"secret");
    assert!(
        write_private_new(&key, b"again").is_err(),
        "never over a file"
    );

    let error = read_private(&key, 3).unwrap_err();
    assert!(error.to_string().contains("more than"), "{error}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = read_private(&key, 64).unwrap_err();
    assert!(error.to_string().contains("chmod 600"), "{error}");
    let link = volume.join("link");
    symlink(&victim, &link).unwrap();
    assert!(matches!(
        read_private(&link, 64).unwrap_err(),
        FsError::Symlink { .. }
    ));
}

#[test]
fn a_read_only_file_is_replaced_by_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    write_replacing(&path, b"new", 0o444).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o444);
}

#[test]
fn a_tree_deeper_than_any_stack_is_removed() {
    let root = tempfile::tempdir().unwrap();
    let mut dir = Dir::open(root.path()).unwrap();
    let top = dir.subdirectory(OsStr::new("deep"), true).unwrap();
    dir = top;
    // Deeper than a small stack holds frames for (and within the usual descriptor limit,
    // since each level is held open while its contents go).
    for _ in 0..900 {
        dir = dir.subdirectory(OsStr::new("d"), true).unwrap();
    }
    dir.create_new(OsStr::new("leaf")).unwrap();
    drop(dir);
    let handle = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn({
            let root = root.path().to_owned();
            move || Dir::open(&root).unwrap().remove_any(OsStr::new("deep"))
        })
        .unwrap();
    handle.join().unwrap().unwrap();
    assert!(!root.path().join("deep").exists());
}
