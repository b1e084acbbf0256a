//! Real peers the backup tests run: an S3-compatible server (s3s-fs), Debian's PostgreSQL on
//! loopback, the Debian image with PostgreSQL and MariaDB (`scripts/test-images`), and an age
//! identity of "the user".

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image `scripts/test-images` builds: Debian with PostgreSQL 15, MariaDB and sqlite3.
pub const DB_IMAGE: &str = "berth-test/debian-db:latest";

#[track_caller]
pub fn require_db_image() {
    let present = Command::new("docker")
        .args(["image", "inspect", DB_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        present,
        "the image {DB_IMAGE} is missing: run scripts/test-images (scripts/test does)"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `s3s-fs` serving a temporary directory; `bucket` exists.
pub struct S3Server {
    pub root: tempfile::TempDir,
    pub port: u16,
    pub bucket: String,
    child: Child,
}

pub const S3_KEY: &str = "berthtestkey";
pub const S3_SECRET: &str = "berthtestsecret";

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::Builder::new()
            .prefix("berth-s3-")
            .tempdir_in("/tmp")
            .unwrap();
        let bucket = "backups".to_owned();
        std::fs::create_dir_all(root.path().join(&bucket)).unwrap();
        let port = free_port();
        let child = spawn_s3s_fs(root.path(), port);
        S3Server {
            root,
            port,
            bucket,
            child,
        }
    }

    /// Starts the server again on the same port and data, after [`S3Server::stop`]: the
    /// bucket is back after an outage.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_s3s_fs(self.root.path(), self.port);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The file s3s-fs keeps an object's bytes in.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }

    /// The ETag s3s-fs recorded for an object (multipart uploads end in `-PARTS`).
    pub fn etag(&self, key: &str) -> String {
        for entry in std::fs::read_dir(self.root.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".internal.json") {
                let text = std::fs::read_to_string(entry.path()).unwrap();
                let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                // The file name encodes the key; match by decoding is s3s-fs's business, so
                // compare against every object's etag and the key's presence in the name.
                let encoded = name
                    .split(".object-")
                    .nth(1)
                    .and_then(|rest| rest.strip_suffix(".internal.json"))
                    .unwrap_or_default();
                if base64_url_decode(encoded).as_deref() == Some(key) {
                    return json["e_tag"].as_str().unwrap_or_default().to_owned();
                }
            }
        }
        panic!("s3s-fs has no record of {key}");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_s3s_fs(root: &Path, port: u16) -> Child {
    let log_path = root.join("s3s-fs.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    // `cargo install` puts it in CARGO_HOME/bin, which need not be on PATH.
    let binary = std::env::var("S3S_FS").unwrap_or_else(|_| {
        let cargo_home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
        let installed = format!("{cargo_home}/bin/s3s-fs");
        if Path::new(&installed).exists() {
            installed
        } else {
            "s3s-fs".to_owned()
        }
    });
    let child = Command::new(&binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
        .arg(root)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {binary} ({e}): scripts/install-test-peers installs it")
        });
    wait_for_port(port, "s3s-fs", &log_path);
    child
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn base64_url_decode(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Debian's PostgreSQL server, run as the `postgres` user on a loopback port.
pub struct HostPostgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

impl HostPostgres {
    pub fn start() -> HostPostgres {
        let versions = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed: scripts/install-test-peers installs it");
        let bin = versions
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("no PostgreSQL server binaries under /usr/lib/postgresql");
        let dir = tempfile::Builder::new()
            .prefix("berth-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot give the cluster directory to postgres"
        );
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let initdb = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        let started = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .args(["-w", "-D"])
            .arg(&data)
            .args(["-l"])
            .arg(&log)
            .args(["-o", &options, "start"])
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "PostgreSQL did not start: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        HostPostgres { dir, port, bin }
    }

    /// Runs SQL with psql against `database`; returns its unaligned output.
    #[track_caller]
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                database,
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for HostPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// An age identity "the user" keeps off the server: its file and its recipient.
pub struct UserKey {
    pub file: PathBuf,
    pub recipient: String,
    _dir: tempfile::TempDir,
}

impl UserKey {
    pub fn new() -> UserKey {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user.key");
        let output = Command::new("age-keygen")
            .arg("-o")
            .arg(&file)
            .output()
            .expect("age-keygen is missing: scripts/install-test-peers installs age");
        assert!(output.status.success());
        let recipient = Command::new("age-keygen")
            .arg("-y")
            .arg(&file)
            .output()
            .unwrap();
        UserKey {
            file,
            recipient: String::from_utf8_lossy(&recipient.stdout).trim().to_owned(),
            _dir: dir,
        }
    }
}

/// Runs a command in a container and returns its standard output.
#[track_caller]
pub fn docker_exec(container: &str, command: &[&str]) -> String {
    let output = Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(command)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`{}` in {container} failed: {}",
        command.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits until `check` holds, or fails with `what`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where a Docker volume's data is on this host.
pub fn volume_dir(name: &str) -> PathBuf {
    let output = Command::new("docker")
        .args(["volume", "inspect", "-f", "{{.Mountpoint}}", name])
        .output()
        .unwrap();
    assert!(output.status.success(), "no volume {name}");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

pub fn sha256_file(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Debian's `docker-registry` (the CNCF distribution registry) on loopback with one user, and a
/// Docker CLI configuration logged in to it (the Engine treats 127.0.0.0/8 registries as
/// insecure, so plain HTTP is fine).
pub struct Registry {
    pub server: String,
    dir: tempfile::TempDir,
    child: Child,
}

pub const REGISTRY_USER: &str = "deployer";
pub const REGISTRY_PASSWORD: &str = "registry-s3cret";

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .unwrap();
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
            .output()
            .expect("htpasswd is missing: scripts/install-test-peers installs apache2-utils");
        assert!(htpasswd.status.success());
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog: {{ level: warn }}\nstorage: {{ filesystem: {{ rootdirectory: {root}/data }} }}\nhttp: {{ addr: 127.0.0.1:{port} }}\nauth: {{ htpasswd: {{ realm: berth-test, path: {root}/htpasswd }} }}\n",
            root = dir.path().display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = dir.path().join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry is missing: scripts/install-test-peers installs it");
        wait_for_port(port, "docker-registry", &dir.path().join("registry.err"));
        let registry = Registry {
            server: format!("127.0.0.1:{port}"),
            dir,
            child,
        };
        let mut login = Command::new("docker")
            .arg("--config")
            .arg(registry.docker_config())
            .args([
                "login",
                &registry.server,
                "-u",
                REGISTRY_USER,
                "--password-stdin",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        login
            .stdin
            .take()
            .unwrap()
            .write_all(REGISTRY_PASSWORD.as_bytes())
            .unwrap();
        assert!(login.wait().unwrap().success(), "docker login failed");
        registry
    }

    /// A Docker CLI configuration directory logged in to this registry (the user's own
    /// `~/.docker` is never touched).
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker-config")
    }

    /// `docker push` as the logged-in user.
    pub fn push(&self, reference: &str) {
        let output = Command::new("docker")
            .arg("--config")
            .arg(self.docker_config())
            .args(["push", reference])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "docker push {reference}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real `ssh` client for a test: `dir/bin/ssh` runs it with `dir/ssh_config`, which names
/// the key `dir/KEY_NAME`, keeps known hosts in `dir` and accepts a new host's key. Put
/// `dir/bin` first on PATH.
pub fn ssh_client(dir: &Path, key_name: &str) {
    let d = dir.display();
    std::fs::write(
        dir.join("ssh_config"),
        format!(
            "Host *\n  IdentityFile {d}/{key_name}\n  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking accept-new\n  LogLevel ERROR\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let wrapper = dir.join("bin/ssh");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec /usr/bin/ssh -F {d}/ssh_config \"$@\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
}
