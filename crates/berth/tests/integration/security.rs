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

fn api_address(agent: &Agent, scheme_prefix: &str) -> String {
    agent.agent_file()["api"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.starts_with(scheme_prefix))
        .unwrap_or_else(|| panic!("no {scheme_prefix} API listener: {}", agent.agent_file()))
        .to_owned()
}

#[test]
fn the_api_beyond_loopback_is_tls_pinned_by_fingerprint() {
    // Plain HTTP on a public address is refused before anything is bound.
    let refused = Agent::unstarted().berth(&[
        "agent",
        "--data-dir",
        "/nonexistent/never-created",
        "--api",
        "0.0.0.0:7070",
    ]);
    refused.failure(2);
    assert!(
        refused.stderr.contains("https://0.0.0.0:7070"),
        "the fix is named: {}",
        refused.stderr
    );

    let agent = Agent::start_with(
        &[],
        &[
            "--api",
            "unix:{dir}/berth.sock",
            "--api",
            "https://127.0.0.1:0",
        ],
    );
    let api = api_address(&agent, "https://");
    let fingerprint = agent.agent_file()["api_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(fingerprint.starts_with("sha256:"), "{fingerprint}");
    assert!(agent.log().contains(&fingerprint), "the agent prints it");
    let token = std::fs::read_to_string(agent.dir.path().join("api-token")).unwrap();
    let token = token.trim();

    let ok = agent.berth_env(
        agent.dir.path(),
        &[
            ("BERTH_TOKEN", token),
            ("BERTH_AGENT_FINGERPRINT", &fingerprint),
        ],
        &["status", "--json", "--agent", &api],
    );
    ok.success();
    assert_eq!(ok.json()["agent"]["pid"], agent.agent_file()["pid"]);

    // Another certificate (a man in the middle) is refused before the token is sent.
    let other = format!("sha256:{}", "ab".repeat(32));
    let wrong = agent.berth_env(
        agent.dir.path(),
        &[("BERTH_TOKEN", token), ("BERTH_AGENT_FINGERPRINT", &other)],
        &["status", "--agent", &api],
    );
    assert_ne!(wrong.code, 0);
    assert!(wrong.stderr.contains("not the pinned"), "{}", wrong.stderr);
    let unpinned = agent.berth_env(
        agent.dir.path(),
        &[("BERTH_TOKEN", token)],
        &["status", "--agent", &api],
    );
    assert_ne!(unpinned.code, 0);
    assert!(
        unpinned.stderr.contains("BERTH_AGENT_FINGERPRINT"),
        "{}",
        unpinned.stderr
    );

    // Plain HTTP to the TLS port gets no HTTP answer.
    let addr = api.trim_start_matches("https://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /v1/info HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[test]
fn the_tcp_api_caps_connections_and_cuts_silent_ones_before_authentication() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let agent = Agent::start_with(
        &[],
        &["--api", "unix:{dir}/berth.sock", "--api", "127.0.0.1:0"],
    );
    let api = api_address(&agent, "127.0.0.1:");
    let port: u16 = api.rsplit(':').next().unwrap().parse().unwrap();
    let connect_from = |source: u8| {
        let socket = connect_from_loopback(source, port);
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        socket
    };
    let closed_at_once = |stream: &mut std::net::TcpStream| {
        let mut buf = [0u8; 16];
        matches!(stream.read(&mut buf), Ok(0))
    };
    // One address holds at most 8: the ninth is closed at once.
    let mut silent: Vec<std::net::TcpStream> = (0..8).map(|_| connect_from(11)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut ninth = connect_from(11);
    assert!(
        closed_at_once(&mut ninth),
        "a ninth connection from one address"
    );
    // 64 in all: seven more addresses fill the cap, and the next is closed at once.
    for source in 12..19 {
        silent.extend((0..8).map(|_| connect_from(source)));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect_from(30);
    assert!(closed_at_once(&mut extra), "a connection beyond 64");
    // The silent ones are cut by the head deadline (10 s), with nothing sent.
    let started = Instant::now();
    for stream in &mut silent {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "silent connections were cut after {:?}",
        started.elapsed()
    );
    drop(silent);
    // A request without the token is answered 401 and its connection closed.
    let mut stream = connect_from(11);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /v1/info HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let token = std::fs::read_to_string(agent.dir.path().join("api-token")).unwrap();
    agent
        .berth_env(
            agent.dir.path(),
            &[("BERTH_TOKEN", token.trim())],
            &["status", "--agent", &api],
        )
        .success();
}

/// A TCP connection to 127.0.0.1:`port` from 127.0.0.`source`.
fn connect_from_loopback(source: u8, port: u16) -> std::net::TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("127.0.0.{source}:0").parse().unwrap())
            .unwrap();
        socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Sends one HTTP request over the agent's unix socket and returns the status code.
fn raw_api_request(agent: &Agent, head: &str, body_size: usize) -> u16 {
    use std::io::{Read, Write};
    let mut stream =
        std::os::unix::net::UnixStream::connect(agent.dir.path().join("berth.sock")).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(
            format!("{head}content-length: {body_size}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let chunk = vec![b'{'; 64 * 1024];
    let mut sent = 0;
    while sent < body_size {
        let n = chunk.len().min(body_size - sent);
        if stream.write_all(&chunk[..n]).is_err() {
            break; // the agent answered and closed early
        }
        sent += n;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"))
}

#[test]
fn request_bodies_are_bounded_and_uploads_have_a_quota() {
    let agent = Agent::start_with(&[], &["--upload-quota", "3MiB"]);
    // JSON requests: at most 4 MiB.
    let status = raw_api_request(
        &agent,
        "POST /v1/deploy HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n",
        6 << 20,
    );
    assert_eq!(status, 413, "a 6 MiB JSON body");
    // Build contexts: within the quota, then refused beyond it, leaving nothing behind.
    let upload = "POST /v1/uploads HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-tar\r\n";
    assert_eq!(raw_api_request(&agent, upload, 2 << 20), 200);
    assert_eq!(
        raw_api_request(&agent, upload, 2 << 20),
        413,
        "over the quota"
    );
    let uploads: Vec<_> = std::fs::read_dir(agent.dir.path().join("uploads"))
        .unwrap()
        .collect();
    assert_eq!(uploads.len(), 1, "the refused upload left no file");
}

#[test]
fn an_agent_told_to_serve_loopback_binds_nothing_public() {
    // As root, with only a loopback HTTP address given: no HTTPS on 0.0.0.0:443.
    let dir = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut child = Command::new(crate::harness::BERTH)
        .args(["agent", "--data-dir"])
        .arg(dir.path())
        .args(["--http", "127.0.0.1:0", "--acme-directory", "off"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent_file = dir.path().join("agent.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let json = loop {
        if let Ok(text) = std::fs::read_to_string(&agent_file)
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        {
            break json;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the agent exited: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        json["http"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{json}"
    );
    assert!(json["https"].is_null(), "nothing public: {json}");
}
