//! `berth server bootstrap` against a fresh Debian server: a container built with debootstrap
//! (`berth-test/debian-server`, scripts/test-images) running systemd as init and sshd, with
//! the capabilities to run its own firewall and its own Docker Engine. Bootstrapped twice (the
//! second run changes nothing); then root and password logins are refused, only the allowed
//! ports answer, and the agent runs as a systemd service and serves an app deployed over ssh
//! as the deploy user.

use crate::harness::BERTH;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SERVER_IMAGE: &str = "berth-test/debian-server:latest";

/// The agent's options the test asks for; later runs that leave them out keep them.
const AGENT_OPTIONS: [&str; 4] = ["--api-port", "7070", "--acme-email", "ops@example.com"];

/// Linux's capability names by number, for dropping those this machine's Docker cannot grant
/// (a container of all capabilities fails to start where Docker itself lacks one).
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn missing_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The server container, removed (with its Docker's volume) when dropped.
struct Server {
    name: String,
    ip: IpAddr,
    ssh_port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let present = docker(&["image", "inspect", SERVER_IMAGE]).status.success();
        assert!(
            present,
            "the image {SERVER_IMAGE} is missing: run scripts/test-images (scripts/test does)"
        );
        let name = berth_testkit::unique_name("berth-server");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            "berth-server",
            "--cap-add",
            "ALL",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            // A cgroup namespace of its own: systemd with the host's cgroup file system would
            // mount the controllers the host leaves unmounted, making hierarchies every later
            // container joins and Docker cannot read (no more OOM events on the host).
            "--cgroupns",
            "private",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            // The server's Docker keeps its images in a volume: overlayfs cannot nest.
            "-v",
            "/var/lib/docker",
            "-p",
            "127.0.0.1::22",
        ];
        let missing = missing_capabilities();
        for cap in &missing {
            args.extend(["--cap-drop", cap]);
        }
        args.push(SERVER_IMAGE);
        let out = docker(&args);
        assert!(out.status.success(), "docker run: {}", text(&out));
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ops@laptop", "-f"])
            .arg(dir.path().join("key"))
            .status()
            .expect("ssh-keygen: scripts/install-test-peers installs openssh-client");
        assert!(status.success());
        crate::peers::ssh_client(dir.path(), "key");

        let inspect = docker(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}} {{(index (index .NetworkSettings.Ports \"22/tcp\") 0).HostPort}}",
            &name,
        ]);
        let inspected = String::from_utf8_lossy(&inspect.stdout).into_owned();
        let (ip, port) = inspected.trim().split_once(' ').unwrap();
        let server = Server {
            ip: ip.parse().unwrap(),
            ssh_port: port.parse().unwrap(),
            name,
            dir,
        };
        // The server's Docker Engine makes cgroups for its containers, under the server's.
        server.exec(&[
            "sh",
            "-c",
            "for m in $(awk '$3 == \"cgroup\" {print $2}' /proc/mounts); do mount -o remount,bind,rw \"$m\"; done",
        ]);
        // Root's key, as a cloud provider puts it there.
        server.exec(&["sh", "-c", "mkdir -p -m 700 /root/.ssh"]);
        let out = docker(&[
            "cp",
            server.dir.path().join("key.pub").to_str().unwrap(),
            &format!("{}:/root/.ssh/authorized_keys", server.name),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        server.exec(&["chown", "root:root", "/root/.ssh/authorized_keys"]);
        // sshd is up once it says its version.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let banner = TcpStream::connect(("127.0.0.1", server.ssh_port)).and_then(|mut s| {
                use std::io::Read;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).map(|()| buf)
            });
            if matches!(banner, Ok(b) if &b == b"SSH-") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sshd in {} never answered",
                server.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn exec(&self, command: &[&str]) -> Output {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend(command);
        docker(&args)
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn berth(&self, dir: &Path, args: &[&str]) -> Output {
        let config = self.dir.path().join("config");
        Command::new(BERTH)
            .args(args)
            .current_dir(dir)
            .env("PATH", self.path())
            .env("CI", "true")
            .env("BERTH_CONFIG_DIR", &config)
            .env_remove("BERTH_AGENT")
            .env_remove("BERTH_CONTEXT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn bootstrap(&self, extra: &[&str]) -> serde_json::Value {
        let address = format!("ssh://root@127.0.0.1:{}", self.ssh_port);
        let key = self.dir.path().join("key.pub");
        let mut args = vec![
            "server",
            "bootstrap",
            address.as_str(),
            "--ssh-key",
            key.to_str().unwrap(),
            // The container sees the host's memory and could add swap to it.
            "--swap",
            "off",
            "--json",
        ];
        args.extend(extra);
        let out = self.berth(self.dir.path(), &args);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bootstrap printed no JSON ({e}): {}", text(&out)));
        assert!(
            out.status.success() && report["ok"] == true,
            "bootstrap failed: {report:#}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        report
    }

    /// An ssh login attempt that must fail; returns what ssh said.
    fn refused_login(&self, user: &str, options: &[&str]) -> String {
        let out = Command::new("ssh")
            .env("PATH", self.path())
            .args(["-o", "BatchMode=yes", "-p", &self.ssh_port.to_string()])
            .args(options)
            .arg(format!("{user}@127.0.0.1"))
            .arg("true")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{user} logged in: {}", text(&out));
        text(&out)
    }

    fn answers(&self, port: u16) -> bool {
        TcpStream::connect_timeout(&SocketAddr::new(self.ip, port), Duration::from_secs(3)).is_ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server's own containers first, so their cgroups go with them.
        let _ = self.exec(&["sh", "-c", "docker rm -f $(docker ps -aq) 2>/dev/null"]);
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

/// Each cgroup controller's hierarchy number: a server container must leave them as they were.
fn cgroup_hierarchies() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/cgroups")
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
        })
        .collect()
}

fn changes(report: &serde_json::Value, kind: &str) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|step| step["reports"].as_array().unwrap())
        .filter(|r| r["kind"] == kind)
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn bootstrap_hardens_a_fresh_debian_server_twice_without_change_and_the_agent_serves_an_app() {
    let hierarchies = cgroup_hierarchies();
    let server = Server::start();

    // How the fresh server stands: passwords allowed, any port reachable. (Logins that fail
    // are tried only at the end: fail2ban bans this client after 5.)
    let sshd = server.exec(&["/usr/sbin/sshd", "-T"]);
    assert!(
        String::from_utf8_lossy(&sshd.stdout).contains("passwordauthentication yes"),
        "{}",
        text(&sshd)
    );
    server.exec(&["/usr/sbin/sshd", "-p", "8081", "-o", "PidFile=none"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.answers(8081) {
        assert!(
            Instant::now() < deadline,
            "nothing answers on 8081 before the bootstrap"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // --check changes nothing.
    let mut check_args = vec!["--check"];
    check_args.extend(AGENT_OPTIONS);
    let check = server.bootstrap(&check_args);
    assert!(check["would_change"].as_u64().unwrap() > 5, "{check:#}");
    assert_eq!(check["changed"], 0, "{check:#}");
    assert!(
        !server.exec(&["id", "deploy"]).status.success(),
        "--check made the deploy user"
    );

    let first = server.bootstrap(&AGENT_OPTIONS);
    let changed = changes(&first, "changed");
    for expected in [
        "installed: docker.io ufw fail2ban",
        "the user deploy",
        "/usr/local/bin/berth installed",
        "the agent started now and at every boot",
        "ufw: incoming connections refused except on 22/tcp, 80/tcp, 443/tcp, 7070/tcp",
        "fail2ban bans",
        "sshd takes keys only and refuses root",
    ] {
        assert!(
            changed.iter().any(|c| c.contains(expected)),
            "no change `{expected}` in {changed:#?}"
        );
    }
    assert!(changes(&first, "would").is_empty(), "{first:#}");
    let found = changes(&first, "found");
    assert!(
        found
            .iter()
            .any(|f| f.contains("its 5-minute undo is called off")),
        "{found:#?}"
    );
    // The bootstrap asked fail2ban itself whether its sshd jail runs.
    assert!(
        found.iter().any(|f| f.starts_with("fail2ban watches sshd")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("the TLS API on port 7070, certificate sha256:")),
        "{found:#?}"
    );

    // This machine remembers the server, so the next run logs in as the deploy user first.
    let record =
        std::fs::read_to_string(server.dir.path().join("config/bootstrapped")).unwrap_or_default();
    assert_eq!(
        record.trim(),
        format!("127.0.0.1 {} deploy", server.ssh_port)
    );

    // The second run goes in as the deploy user (root may no longer log in) and changes nothing.
    let second = server.bootstrap(&AGENT_OPTIONS);
    assert_eq!(second["changed"], 0, "{second:#}");
    assert!(changes(&second, "changed").is_empty(), "{second:#}");
    assert_eq!(second["steps"].as_array().unwrap().len(), 15, "{second:#}");
    let found = changes(&second, "found");
    assert!(
        found
            .iter()
            .any(|f| f.contains("ssh://deploy@127.0.0.1") && f.contains("answers")),
        "{found:#?}"
    );
    // --check on the bootstrapped server: nothing to do, the agent's options kept although
    // this run does not repeat them.
    let check = server.bootstrap(&["--check"]);
    assert_eq!(check["would_change"], 0, "{check:#}");
    let out = server.exec(&["systemctl", "is-active", "berth-firewall-undo.timer"]);
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "active");

    // Only the allowed ports answer.
    assert!(server.answers(22), "ssh's port is closed");
    assert!(server.answers(7070), "the agent's API port is closed");
    assert!(!server.answers(8081), "the firewall lets 8081 through");

    // The agent is a systemd service, and the deploy user's group may use its socket.
    for (query, want) in [("is-active", "active"), ("is-enabled", "enabled")] {
        let out = server.exec(&["systemctl", query, "berth"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{query}");
    }
    let out = server.exec(&["systemctl", "show", "berth", "-p", "ExecStart"]);
    let exec_start = String::from_utf8_lossy(&out.stdout);
    assert!(
        exec_start.contains("--api-group berth")
            && exec_start.contains("--acme-email ops@example.com"),
        "{exec_start}"
    );
    let out = server.exec(&["stat", "-c", "%a %U %G", "/run/berth.sock"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "660 root berth"
    );

    // A deploy as the deploy user, over ssh, with a build context; served on port 80.
    let app = berth_testkit::hello_context();
    std::fs::write(
        app.path().join("berth.toml"),
        "app = \"hello\"\n\n[services.web]\nbuild = \".\"\nport = 8080\nenv = { GREETING = \"bootstrapped\" }\nhealthcheck = { path = \"/health\", interval = \"2s\" }\nroute = { domains = [] }\n",
    )
    .unwrap();
    let agent = format!("ssh://deploy@127.0.0.1:{}", server.ssh_port);
    let out = server.berth(
        app.path(),
        &["--agent", &agent, "deploy", "--version", "v1"],
    );
    assert!(out.status.success(), "deploy: {}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = berth_testkit::http_get(&format!("{}:80", server.ip), "/", "localhost");
        if matches!(&body, Ok((200, body)) if body.contains("bootstrapped")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "port 80 never served the app: {body:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // What changed is recorded on the server.
    let out = server.exec(&["cat", "/var/log/berth-bootstrap.log"]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("sshd: sshd takes keys only"), "{log}");

    // Root's login and passwords are refused.
    let said = server.refused_login("root", &[]);
    assert!(said.contains("Permission denied"), "{said}");
    let said = server.refused_login(
        "deploy",
        &[
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
    );
    assert!(said.contains("Permission denied (publickey)"), "{said}");

    // fail2ban reads the journal on its own time: its count lags the refusals under load.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = text(&server.exec(&["fail2ban-client", "status", "sshd"]));
        let failed: u32 = status
            .lines()
            .find_map(|l| l.split_once("Total failed:"))
            .map(|(_, n)| n.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("{status}"));
        if failed >= 2 {
            break;
        }
        if Instant::now() > deadline {
            let j = text(&server.exec(&[
                "journalctl",
                "-u",
                "fail2ban",
                "-u",
                "ssh",
                "--no-pager",
                "-n",
                "40",
            ]));
            panic!("never counted: {status}\n{j}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(server);
    assert_eq!(
        cgroup_hierarchies(),
        hierarchies,
        "the server container changed the host's cgroup hierarchies"
    );
}
