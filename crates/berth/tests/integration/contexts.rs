//! Remote contexts: a named agent over TLS with its token and pinned fingerprint, and one over
//! a real sshd (Debian's openssh-server on loopback, the same berth binary on its PATH): a
//! deploy with a build context, `logs -f` and `exec -it` through `ssh://`.

use crate::exec::{Terminal, piped};
use crate::harness::{Agent, BERTH, web};
use crate::peers::{DB_IMAGE, require_db_image};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs berth with only the environment given (a config directory of the test's, no data
/// directory of the agent's, so only the context can supply the token).
fn berth(
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&str>,
) -> (i32, String, String) {
    let empty = tempfile::tempdir().unwrap();
    let mut child = Command::new(BERTH)
        .args(args)
        .current_dir(dir)
        .env_remove("BERTH_AGENT")
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_AGENT_FINGERPRINT")
        .env_remove("BERTH_CONTEXT")
        .env("BERTH_DATA_DIR", empty.path())
        .env("CI", "true")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        std::io::Write::write_all(&mut input, text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_tls_context_keeps_the_token_and_pin_and_is_used_by_every_command() {
    let (agent, api, fingerprint, token) = Agent::start_with_tls_api();
    let config = tempfile::tempdir().unwrap();
    let config_dir = config.path().join("berth");
    let env = [("BERTH_CONFIG_DIR", config_dir.to_str().unwrap())];
    let here = config.path();

    // Without the fingerprint an https:// context is refused and nothing is written.
    let (code, _, err) = berth(
        here,
        &env,
        &["context", "add", "prod", &api, "--token-stdin"],
        Some(&token),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("fingerprint"), "{err}");

    let (code, out, err) = berth(
        here,
        &env,
        &[
            "context",
            "add",
            "prod",
            &api,
            "--fingerprint",
            &fingerprint,
            "--token-stdin",
            "--json",
        ],
        Some(&token),
    );
    assert_eq!(code, 0, "{err}");
    let added: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["reached"], true, "{added}");
    use std::os::unix::fs::PermissionsExt;
    let file = config_dir.join("contexts.toml");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (_, listed, _) = berth(here, &env, &["context", "list", "--json"], None);
    assert!(
        !listed.contains(token.trim()),
        "the token is never shown: {listed}"
    );
    assert!(listed.contains("\"has_token\": true"), "{listed}");

    // --context for one command; `use` for all of them.
    let (code, out, err) = berth(here, &env, &["status", "--json", "--context", "prod"], None);
    assert_eq!(code, 0, "{err}");
    let pid = agent.agent_file()["pid"].clone();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["agent"]["pid"],
        pid
    );
    let (code, _, err) = berth(here, &env, &["status"], None);
    assert_ne!(
        code, 0,
        "no context in use yet: the local (absent) agent: {err}"
    );
    assert_eq!(berth(here, &env, &["context", "use", "prod"], None).0, 0);
    let (code, out, err) = berth(here, &env, &["status", "--json"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["agent"]["pid"],
        pid
    );

    // --agent wins over the context; an unknown context is named.
    let (code, _, err) = berth(
        here,
        &env,
        &["status", "--agent", "unix:/nonexistent/berth.sock"],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/berth.sock"), "{err}");
    let (code, _, err) = berth(here, &env, &["status", "--context", "nope"], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("no context named `nope`") && err.contains("prod"),
        "{err}"
    );
    assert_eq!(berth(here, &env, &["context", "use", "default"], None).0, 0);
    assert_eq!(berth(here, &env, &["context", "rm", "prod"], None).0, 0);
}

/// A real sshd on a loopback port, run as the test's user, which accepts one key of the test's;
/// the sessions find this build's berth on their PATH.
struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let keygen = |name: &str| {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(name))
                .status()
                .expect("ssh-keygen: scripts/install-test-peers installs openssh-client");
            assert!(status.success());
        };
        keygen("host_key");
        keygen("client_key");
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let berth_dir = Path::new(BERTH).parent().unwrap();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\nSetEnv PATH={}:/usr/local/bin:/usr/bin:/bin CI=true\nLogLevel ERROR\n",
                berth_dir.display()
            ),
        )
        .unwrap();
        // The client: the real ssh, told where the test's key and known hosts are.
        crate::peers::ssh_client(dir.path(), "client_key");
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.path().join("sshd_config"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("sshd: scripts/install-test-peers installs openssh-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd { child, dir, port }
    }

    /// PATH with the ssh wrapper first.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn an_ssh_context_deploys_a_build_context_follows_logs_and_runs_a_terminal_through_a_real_sshd() {
    require_db_image();
    let agent = Agent::start();
    let sshd = Sshd::start();
    let app = agent.app("ssh");
    // A shell in the image, for `exec -it`.
    std::fs::write(
        app.path().join("Dockerfile"),
        format!("FROM {DB_IMAGE}\nCOPY hello /hello\nENTRYPOINT [\"/hello\"]\n"),
    )
    .unwrap();
    app.write(&web("GREETING = \"over ssh\""));
    let config = tempfile::tempdir().unwrap();
    let config_dir = config.path().join("berth");
    let path = sshd.path();
    let address = format!(
        "ssh://{}@127.0.0.1:{}{}/berth.sock",
        user(),
        sshd.port,
        agent.dir.path().display()
    );
    let env = [
        ("BERTH_CONFIG_DIR", config_dir.to_str().unwrap()),
        ("PATH", path.as_str()),
    ];

    let (code, out, err) = berth(
        app.path(),
        &env,
        &["context", "add", "box", &address, "--use"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("answers"), "{out}{err}");

    // A deploy: the build context goes up through ssh.
    let (code, _, err) = berth(app.path(), &env, &["deploy", "--version", "v1"], None);
    assert_eq!(code, 0, "{err}");
    agent.wait_serving("over ssh");

    // logs -f through ssh: a line logged now arrives.
    let mut follow = Command::new(BERTH)
        .args(["logs", "web", "-f", "-n", "0"])
        .current_dir(app.path())
        .env_remove("BERTH_AGENT")
        .env("BERTH_CONFIG_DIR", &config_dir)
        .env("PATH", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = false;
    while Instant::now() < deadline && !found {
        let _ = agent.get("/log/sshmarker");
        while let Ok(line) = seen.recv_timeout(Duration::from_millis(300)) {
            if line.contains("sshmarker") {
                found = true;
                break;
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(found, "logs -f over ssh never showed the line");

    // exec -i with piped input, and exec -it in a real terminal.
    let (code, out, err) = piped(
        &agent,
        &[
            ("BERTH_CONFIG_DIR", config_dir.to_str().unwrap()),
            ("PATH", path.as_str()),
        ],
        &[
            "exec",
            "-i",
            "web",
            "--app",
            &app.name,
            "--",
            "sh",
            "-c",
            "cat; exit 6",
        ],
        "piped over ssh\n",
    );
    assert_eq!((code, out.as_str()), (6, "piped over ssh\n"), "{err}");
    let terminal = Terminal::start(
        &format!(
            "env -u CI -u BERTH_AGENT BERTH_CONFIG_DIR={} PATH={}:$PATH {BERTH} exec -it web --app {} -- sh",
            config_dir.display(),
            sshd.bin().display(),
            app.name
        ),
        100,
        30,
    );
    terminal.type_line("echo SSH$((40+2)); tty");
    let screen = terminal.wait_for("/dev/pts/");
    assert!(screen.contains("SSH42"), "{screen}");
    terminal.type_line("exit 7");
    terminal.wait_for("BERTH-EXIT=7");
}
