//! `berth exec -i` and `-it`: standard input, a real terminal with its size followed, and the
//! exit code passed through, over the unix socket, TCP and ssh alike.

use crate::harness::{Agent, BERTH, web};
use crate::peers::{DB_IMAGE, require_db_image};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `berth ARGS` with `input` on its standard input; returns (exit code, stdout, stderr).
pub(crate) fn piped(
    agent: &Agent,
    env: &[(&str, &str)],
    args: &[&str],
    input: &str,
) -> (i32, String, String) {
    let mut child = Command::new(BERTH)
        .args(args)
        .envs(env.iter().copied())
        .env("BERTH_DATA_DIR", agent.dir.path())
        .env_remove("BERTH_AGENT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A detached tmux session running one command: keys in, screen out.
pub(crate) struct Terminal {
    socket: String,
}

impl Terminal {
    pub(crate) fn start(command: &str, cols: u16, rows: u16) -> Terminal {
        let socket = berth_testkit::unique_name("tmux");
        let status = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x"])
            .arg(cols.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .arg(format!("{command}; echo BERTH-EXIT=$?; sleep 120"))
            .status()
            .expect("tmux is missing: scripts/install-test-peers installs it");
        assert!(status.success());
        Terminal { socket }
    }

    fn tmux(&self, args: &[&str]) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "tmux {args:?}");
    }

    fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-J"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub(crate) fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-l", line]);
        self.tmux(&["send-keys", "Enter"]);
    }

    #[track_caller]
    pub(crate) fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "`{text}` never showed:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn exec_passes_input_a_terminal_and_the_exit_code_over_every_transport() {
    require_db_image();
    let agent = Agent::start_with(
        &[],
        &["--api", "unix:{dir}/berth.sock", "--api", "127.0.0.1:0"],
    );
    let app = agent.app("shell");
    std::fs::write(
        app.path().join("Dockerfile"),
        format!("FROM {DB_IMAGE}\nCOPY hello /hello\nENTRYPOINT [\"/hello\"]\n"),
    )
    .unwrap();
    app.write(&web("GREETING = \"sh\""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let name = app.name.as_str();

    // Piped input, and the exit code passed through.
    let (code, out, err) = piped(
        &agent,
        &[],
        &["exec", "-i", "web", "--app", name, "--", "cat"],
        "line one\nline two\n",
    );
    assert_eq!((code, out.as_str()), (0, "line one\nline two\n"), "{err}");
    let (code, _, err) = piped(
        &agent,
        &[],
        &[
            "exec",
            "-i",
            "web",
            "--app",
            name,
            "--",
            "sh",
            "-c",
            "read x; exit 7",
        ],
        "go\n",
    );
    assert_eq!(code, 7, "{err}");

    // -t wants a terminal, and says so when there is none.
    let (code, _, err) = piped(
        &agent,
        &[],
        &["exec", "-t", "web", "--app", name, "--", "sh"],
        "",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("-t needs a terminal"), "{err}");

    // A real terminal: raw keys, the terminal's size, resizes, and the exit code.
    let terminal = Terminal::start(
        &format!(
            "env -u CI BERTH_DATA_DIR={} {BERTH} exec -it web --app {name} -- sh",
            agent.dir.path().display()
        ),
        120,
        30,
    );
    terminal.type_line("echo MARK$((6*7)); stty size; tty");
    // `tty` prints last: waiting for MARK42 alone raced the rest of the output.
    let screen = terminal.wait_for("/dev/pts/");
    assert!(screen.contains("MARK42"), "the command ran:\n{screen}");
    assert!(screen.contains("30 120"), "the size was passed:\n{screen}");
    assert!(screen.contains("/dev/pts/"), "a terminal:\n{screen}");
    terminal.tmux(&["resize-window", "-x", "100", "-y", "25"]);
    std::thread::sleep(Duration::from_millis(300));
    terminal.type_line("stty size");
    terminal.wait_for("25 100");
    // Ctrl-C goes to the command, not to berth.
    terminal.type_line("sleep 30");
    std::thread::sleep(Duration::from_millis(300));
    terminal.tmux(&["send-keys", "C-c"]);
    terminal.type_line("echo STILL$((1+1))");
    terminal.wait_for("STILL2");
    terminal.type_line("exit 5");
    terminal.wait_for("BERTH-EXIT=5");
    drop(terminal);

    // Output as it comes: a prompt without a newline shows before anything is typed, and a
    // chunk that starts with a control byte is not taken for a stream header.
    let terminal = Terminal::start(
        &format!(
            "env -u CI BERTH_DATA_DIR={} {BERTH} exec -it web --app {name} -- sh -c 'sleep 0.3; printf \"\\001CONTROL-FIRST\\n\"; sleep 0.3; printf \"\\002AGAIN\\n\"; sleep 0.3; printf \"ready> \"; read x; echo got:$x; exit 3'",
            agent.dir.path().display()
        ),
        120,
        30,
    );
    terminal.wait_for("CONTROL-FIRST");
    terminal.wait_for("AGAIN");
    terminal.wait_for("ready> ");
    terminal.type_line("hi");
    terminal.wait_for("got:hi");
    terminal.wait_for("BERTH-EXIT=3");
    drop(terminal);

    // The same over TCP with the token, and over ssh (a stand-in `ssh` that runs the
    // command it was given here, as sshd would on the server).
    let api = agent.tcp_api();
    let token = std::fs::read_to_string(agent.dir.path().join("api-token")).unwrap();
    let (code, out, err) = piped(
        &agent,
        &[("BERTH_TOKEN", token.trim())],
        &[
            "exec", "-i", "web", "--app", name, "--agent", &api, "--", "cat",
        ],
        "over tcp\n",
    );
    assert_eq!((code, out.as_str()), (0, "over tcp\n"), "{err}");

    let bin = tempfile::tempdir().unwrap();
    let berth_dir = std::path::Path::new(BERTH).parent().unwrap();
    std::fs::write(
        bin.path().join("ssh"),
        "#!/bin/sh\n# Drop ssh's options and the destination, run the rest.\nwhile [ \"$1\" != -- ]; do shift; done\nshift 2\nexec \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.path().join("ssh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}:{}",
        bin.path().display(),
        berth_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ssh = format!(
        "ssh://deploy@server{}/berth.sock",
        agent.dir.path().display()
    );
    let (code, out, err) = piped(
        &agent,
        &[("PATH", path.as_str())],
        &[
            "exec",
            "-i",
            "web",
            "--app",
            name,
            "--agent",
            &ssh,
            "--",
            "sh",
            "-c",
            "cat; exit 4",
        ],
        "over ssh\n",
    );
    assert_eq!((code, out.as_str()), (4, "over ssh\n"), "{err}");
}
