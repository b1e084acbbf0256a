//! What a compromised container, another local user or a hostile storage can make the root
//! agent do: the attacks a security review showed, each tried again with the real binary.

use crate::harness::{Agent, AppDir, web};
use crate::peers::volume_dir;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A host file only its owner may read: what an attacker in a container wants the agent to
/// overwrite, chmod or chown.
struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

const VICTIM_TEXT: &[u8] = b"root:only-the-host-may-read-this\n";
const VICTIM_UID: u32 = 4242;

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shadow");
        std::fs::write(&path, VICTIM_TEXT).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Owned by someone else than the database, so a chown through a link shows.
        std::os::unix::fs::chown(&path, Some(VICTIM_UID), Some(VICTIM_UID)).unwrap();
        Victim { _dir: dir, path }
    }

    fn untouched(&self, after: &str) {
        let meta = std::fs::symlink_metadata(&self.path).unwrap();
        assert!(
            meta.is_file(),
            "after {after}: the victim is no longer a file"
        );
        assert_eq!(
            std::fs::read(&self.path).unwrap(),
            VICTIM_TEXT,
            "after {after}: the victim's content changed"
        );
        assert_eq!(
            meta.mode() & 0o7777,
            0o600,
            "after {after}: its mode changed"
        );
        assert_eq!(meta.uid(), VICTIM_UID, "after {after}: its owner changed");
    }
}

fn sqlite(db: &Path, sql: &str) -> String {
    let output = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn sqlite_app(agent: &Agent) -> (AppDir, PathBuf) {
    let app = agent.app("sec");
    app.write(&format!(
        "{}volumes = [\"data:/data\"]\n\n[backups.db]\nsource = {{ sqlite = {{ service = \"web\", path = \"/data/app.db\" }} }}\nkeep = {{ last = 10 }}\n",
        web("")
    ));
    agent.berth_in(app.path(), &["deploy"]).success();
    let volume = volume_dir(&format!("{}_data", app.name));
    (app, volume)
}

#[test]
fn links_a_container_plants_in_its_volume_never_lead_the_agent_to_host_files() {
    let agent = Agent::start();
    let (app, volume) = sqlite_app(&agent);
    let live = volume.join("app.db");
    sqlite(
        &live,
        "CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3);",
    );
    let run = agent.berth_in(app.path(), &["--json", "backup", "run", "db"]);
    run.success();
    let id = run.json()["backups"]["runs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlite(&live, "INSERT INTO t VALUES (4);");
    let victim = Victim::new();

    // A link at the name a live restore used to stage its file under: not followed.
    symlink(
        &victim.path,
        volume.join(format!(".app.db.berth-restore-{id}")),
    )
    .unwrap();
    agent
        .berth_in(app.path(), &["restore", "db", "--id", &id, "--force"])
        .success();
    victim.untouched("a live restore");
    let placed = std::fs::symlink_metadata(&live).unwrap();
    assert!(placed.is_file(), "the database is a file, not a link");
    assert_eq!(
        sqlite(&live, "SELECT count(*) FROM t"),
        "3",
        "the backup is back"
    );

    // A link where SQLite's write-ahead log would be: the backup is refused rather than
    // opening the database beside it (SQLite would follow it) or giving it "back" to the
    // database's owner.
    symlink(&victim.path, volume.join("app.db-wal")).unwrap();
    let refused = agent.berth_in(app.path(), &["backup", "run", "db"]);
    refused.failure(1);
    assert!(refused.stderr.contains("app.db-wal"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("symbolic link"),
        "{}",
        refused.stderr
    );
    victim.untouched("a backup with a planted -wal link");
    std::fs::remove_file(volume.join("app.db-wal")).unwrap();

    // The database itself swapped for a link: backups and restores refuse it, and say why.
    std::fs::remove_file(&live).unwrap();
    symlink(&victim.path, &live).unwrap();
    let refused = agent.berth_in(app.path(), &["backup", "run", "db"]);
    refused.failure(1);
    assert!(
        refused.stderr.contains("symbolic link"),
        "{}",
        refused.stderr
    );
    let refused = agent.berth_in(app.path(), &["restore", "db", "--id", &id, "--force"]);
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("symbolic link"),
        "{}",
        refused.stderr
    );
    victim.untouched("a backup and a restore of a linked database");

    // `restore --to` in a directory others can write: a planted `PATH.berth-partial` and a
    // planted PATH.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = shared.path().join("out.db");
    symlink(&victim.path, shared.path().join("out.db.berth-partial")).unwrap();
    agent
        .berth_in(
            app.path(),
            &["restore", "db", "--id", &id, "--to", out.to_str().unwrap()],
        )
        .success();
    victim.untouched("restore --to beside a planted .berth-partial");
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "decrypted data is for its owner only"
    );
    assert_eq!(sqlite(&out, "SELECT count(*) FROM t"), "3");
    let planted = shared.path().join("planted.db");
    symlink(&victim.path, &planted).unwrap();
    let refused = agent.berth_in(
        app.path(),
        &[
            "restore",
            "db",
            "--id",
            &id,
            "--to",
            planted.to_str().unwrap(),
            "--force",
        ],
    );
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("symbolic link"),
        "{}",
        refused.stderr
    );
    victim.untouched("restore --to a planted link");
}

/// Every file and directory under `dir` the agent made, with its mode.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let name = entry
                .path()
                .strip_prefix(dir)
                .unwrap()
                .display()
                .to_string();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if !meta.file_type().is_socket() {
                found.push((name, meta.mode() & 0o777));
            }
        }
    }
    found
}

#[test]
fn the_data_directory_is_closed_to_other_users_fresh_or_not() {
    // A pre-existing directory open to everyone, as `mkdir` leaves it.
    let mut agent = Agent::unstarted();
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    agent.spawn_with(&[]);
    let app = agent.app("modes");
    app.write(&format!("{}secrets = [\"TOKEN\"]\n", web("")));
    agent
        .berth_in(
            app.path(),
            &["secrets", "set", "TOKEN", "--value", "s3cret"],
        )
        .success();
    agent.berth_in(app.path(), &["deploy"]).success();
    let (status, _) = agent.get("/").unwrap();
    assert!(status < 500);

    let mode = std::fs::metadata(agent.dir.path()).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory was tightened");
    assert!(
        agent.log().contains("open to other users"),
        "the agent said so:\n{}",
        agent.log()
    );
    let open: Vec<(String, u32)> = modes(agent.dir.path())
        .into_iter()
        // The test harness writes the agent's log itself.
        .filter(|(name, _)| name != "agent.log")
        .filter(|(_, mode)| mode & 0o077 != 0)
        .collect();
    assert!(open.is_empty(), "open to others: {open:?}");
    for expected in [
        "state.db",
        "secrets.key",
        "agent.json",
        "agent-id",
        "logs/access.log",
    ] {
        assert!(
            agent.dir.path().join(expected).exists(),
            "{expected} exists (and was checked)"
        );
    }
}
