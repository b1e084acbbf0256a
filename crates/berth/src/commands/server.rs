//! `berth server bootstrap`: runs `berth_ops::bootstrap`'s steps on a server over the system's
//! ssh, uploads this berth binary, and reports what each step found and changed.

use super::{Ctx, invalid};
use crate::BootstrapArgs;
use crate::output::Mode;
use anyhow::anyhow;
use berth_ops::bootstrap::{self, Options, Report, Step};
use console::style;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How to run commands on the server: as whom, and whether through sudo.
#[derive(Clone)]
struct Remote {
    destination: String,
    port: Option<u16>,
    sudo: bool,
}

struct Finished {
    stdout: String,
    stderr: String,
    /// ssh's own exit code 255 means it did not reach the command.
    code: Option<i32>,
}

impl Remote {
    fn ssh(&self, command: &str) -> tokio::process::Command {
        let mut ssh = tokio::process::Command::new("ssh");
        ssh.args(["-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"])
            // A server seen for the first time is remembered; one whose key changed is refused.
            .args(["-o", "StrictHostKeyChecking=accept-new"]);
        if let Some(port) = self.port {
            ssh.arg("-p").arg(port.to_string());
        }
        // `--` ends ssh's options: the destination is never read as one.
        ssh.arg("--").arg(&self.destination).arg(command);
        ssh.kill_on_drop(true);
        ssh
    }

    fn shell(&self) -> &'static str {
        if self.sudo { "sudo -n sh -s" } else { "sh -s" }
    }

    /// Runs `command` on the server with `input` on its stdin.
    async fn run(&self, command: &str, input: &[u8]) -> anyhow::Result<Finished> {
        let mut child = self
            .ssh(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow!("cannot run ssh: {e}; install the OpenSSH client"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that exits without reading all of it is judged by its exit code.
            let _ = stdin.write_all(input).await;
            drop(stdin);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| anyhow!("ssh failed: {e}"))?;
        Ok(Finished {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code(),
        })
    }

    async fn script(&self, script: &str) -> anyhow::Result<Finished> {
        self.run(self.shell(), script.as_bytes()).await
    }

    /// The same server as another user.
    fn as_user(&self, user: &str, sudo: bool) -> Remote {
        Remote {
            destination: format!("{user}@{}", self.host()),
            port: self.port,
            sudo,
        }
    }

    fn is_user(&self, user: &str) -> bool {
        self.destination.rsplit_once('@').map(|(u, _)| u) == Some(user)
    }

    fn host(&self) -> &str {
        self.destination
            .rsplit_once('@')
            .map_or(self.destination.as_str(), |(_, host)| host)
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    fn url(&self, user: &str) -> String {
        let host = self.host();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        match self.port {
            Some(port) => format!("ssh://{user}@{host}:{port}"),
            None => format!("ssh://{user}@{host}"),
        }
    }
}

/// The last lines of a command's error output, for a message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

#[derive(serde::Serialize)]
struct StepView {
    step: &'static str,
    title: &'static str,
    reports: Vec<Report>,
}

struct View {
    mode: Mode,
    steps: Vec<StepView>,
}

impl View {
    fn step(&mut self, step: Step, reports: Vec<Report>) {
        if self.mode != Mode::Json {
            println!("{}", style(step.title()).bold());
            for report in &reports {
                match report {
                    Report::Found(text) => println!("  {} {text}", style("✓").green()),
                    Report::Changed(text) => println!("  {} {text}", style("+").cyan()),
                    Report::Would(text) => println!("  {} pending: {text}", style("→").yellow()),
                    Report::Note(text) => println!("  {} {text}", style("!").yellow()),
                    Report::Failed(text) => println!("  {} {text}", style("✗").red()),
                }
            }
        }
        self.steps.push(StepView {
            step: step.name(),
            title: step.title(),
            reports,
        });
    }

    fn count(&self, kind: fn(&Report) -> bool) -> usize {
        self.steps
            .iter()
            .flat_map(|s| &s.reports)
            .filter(|r| kind(r))
            .count()
    }
}

pub(crate) async fn bootstrap(ctx: &Ctx, args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    let mut options = options(&args)?;
    let not_ssh = || {
        invalid(
            format!("`{}` is not an ssh:// address", args.server),
            Some("give the server as ssh://root@HOST (or ssh://USER@HOST for a user with sudo)"),
        )
    };
    if !args.server.starts_with("ssh://") {
        return Err(not_ssh());
    }
    let target = crate::client::Target::parse(&args.server).map_err(|e| invalid(e, None))?;
    let crate::client::Target::Ssh {
        destination,
        port,
        socket: None,
    } = target
    else {
        return Err(not_ssh());
    };
    let binary = match &args.berth_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| anyhow!("cannot find this berth binary to copy: {e}"))?,
    };
    let local = std::fs::read(&binary)
        .map_err(|e| invalid(format!("cannot read {}: {e}", binary.display()), None))?;
    let local_arch = elf_machine(&local).ok_or_else(|| {
        invalid(
            format!("{} is not a Linux executable", binary.display()),
            Some("--berth-binary takes a berth built for the server"),
        )
    })?;
    let local_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&local));

    let mut view = View {
        mode: ctx.mode,
        steps: Vec::new(),
    };
    let checking = if args.check {
        bootstrap::Mode::Check
    } else {
        bootstrap::Mode::Apply
    };
    let remote = connect(ctx, destination, port, &mut options).await?;
    let as_deploy_user = remote.is_user(&options.deploy_user);
    if as_deploy_user && remote.sudo && !options.sudo {
        return Err(invalid(
            format!(
                "this run goes in as {} through sudo, and --no-sudo would take that sudo away while root may not log in: nobody could run the bootstrap again over ssh",
                remote.destination
            ),
            Some("leave out --no-sudo, or give root another way in first"),
        ));
    }
    if options.api_port == Some(options.ssh_port) {
        return Err(invalid(
            format!("--api-port {} is sshd's port", options.ssh_port),
            Some("pick another port for the API, such as 7070"),
        ));
    }
    // What an earlier run gave the agent stays unless this run says otherwise.
    if args.api_port.is_none() || args.acme_email.is_none() {
        let dropin = remote
            .script("cat /etc/systemd/system/berth.service.d/bootstrap.conf 2>/dev/null || true")
            .await?;
        let (api_port, acme_email) = bootstrap::earlier_options(&dropin.stdout);
        if args.api_port.is_none() {
            options.api_port = api_port;
        }
        if args.acme_email.is_none() {
            options.acme_email = acme_email;
        }
    }
    if ctx.mode != Mode::Json {
        println!(
            "{} {}{}",
            if args.check {
                "checking"
            } else {
                "bootstrapping"
            },
            remote.destination,
            if args.check {
                " (check only: nothing is changed)"
            } else {
                ""
            }
        );
    }
    let deploy = remote.as_user(&options.deploy_user, options.sudo);
    let mut binary_changed = false;
    let mut failure: Option<(Step, String)> = None;
    for step in Step::ALL {
        let result = match step {
            Step::Binary => {
                install_binary(&remote, checking, &local, local_arch, &local_sha, &binary)
                    .await
                    .map(|(reports, changed)| {
                        binary_changed = changed;
                        reports
                    })
            }
            Step::Login => login(&remote, &deploy, checking, as_deploy_user).await,
            Step::Verify => verify(&deploy, checking, as_deploy_user).await,
            _ => match step.script(&options, checking, binary_changed) {
                Some(script) => run_step(&remote, &script).await,
                None => Ok(Vec::new()),
            },
        };
        match result {
            Ok(reports) => view.step(step, reports),
            Err((reports, cause)) => {
                view.step(step, reports);
                failure = Some((step, cause));
                break;
            }
        }
    }
    let changed = view.count(|r| matches!(r, Report::Changed(_)));
    let would = view.count(|r| matches!(r, Report::Would(_)));
    let context = deploy.url(&options.deploy_user);
    if ctx.mode == Mode::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "server": remote.destination,
                "check": args.check,
                "ok": failure.is_none(),
                "failed_step": failure.as_ref().map(|(s, _)| s.name()),
                "error": failure.as_ref().map(|(_, e)| e),
                "changed": changed,
                "would_change": would,
                "steps": view.steps,
                "context": context,
            }))?
        );
    }
    if failure.is_none() && !args.check {
        remember_bootstrapped(remote.host(), remote.port, &options.deploy_user);
    }
    if let Some((step, cause)) = failure {
        if ctx.mode != Mode::Json {
            eprintln!(
                "{} {} failed: {}",
                style("✗").red(),
                step.title(),
                cause.trim_end()
            );
            eprintln!(
                "  {} what changed is recorded in /var/log/berth-bootstrap.log on the server; run the same command again once the cause is fixed: finished steps are found as they are",
                style("→").yellow()
            );
        }
        return Ok(ExitCode::from(1));
    }
    if ctx.mode != Mode::Json {
        if args.check {
            println!(
                "{}",
                if would == 0 {
                    "nothing to change: the server is as berth wants it".to_owned()
                } else {
                    format!("{would} changes to make; run it without --check to make them")
                }
            );
        } else {
            println!(
                "{} {}; deploy from your machine with:\n  berth context add prod {context} --use\n  berth deploy",
                style("✓").green(),
                if changed == 0 {
                    "nothing changed: the server was ready".to_owned()
                } else {
                    format!("{changed} changes made")
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn options(args: &BootstrapArgs) -> anyhow::Result<Options> {
    if !bootstrap::valid_user(&args.user) {
        return Err(invalid(
            format!("`{}` is not a user name for the deploy user", args.user),
            Some("lower-case letters, digits, `-` and `_`, starting with a letter; not root"),
        ));
    }
    let key_path = match &args.ssh_key {
        Some(path) => path.clone(),
        None => default_key().ok_or_else(|| {
            invalid(
                "no public key to let the deploy user log in with",
                Some("pass --ssh-key ~/.ssh/KEY.pub (or make one: ssh-keygen -t ed25519)"),
            )
        })?,
    };
    let text = std::fs::read_to_string(&key_path)
        .map_err(|e| invalid(format!("cannot read {}: {e}", key_path.display()), None))?;
    let key = text.parse().map_err(|e| {
        invalid(
            format!("{} {e}", key_path.display()),
            Some("--ssh-key takes a public key file, such as ~/.ssh/id_ed25519.pub"),
        )
    })?;
    if let Some(email) = &args.acme_email
        && !bootstrap::valid_email(email)
    {
        return Err(invalid(
            format!("`{email}` is not an email address berth takes"),
            Some("letters, digits, `.`, `-`, `_` and `+`, such as ops@example.com"),
        ));
    }
    let api_port = match args.api_port.as_deref() {
        None | Some("off") => None,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if ![0, 80, 443].contains(&port) => Some(port),
            _ => {
                return Err(invalid(
                    format!("--api-port {text} is not a port the API can have"),
                    Some(
                        "a free TCP port other than 80 and 443 (the proxy's), such as 7070; or `off`",
                    ),
                ));
            }
        },
    };
    let swap = args
        .swap
        .parse()
        .map_err(|e: String| invalid(format!("--swap: {e}"), None))?;
    Ok(Options {
        deploy_user: args.user.clone(),
        key,
        // Replaced by the port sshd took the connection on.
        ssh_port: 22,
        api_port,
        acme_email: args.acme_email.clone(),
        swap,
        sudo: !args.no_sudo,
    })
}

fn default_key() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME")?);
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .map(|name| home.join(".ssh").join(name))
        .find(|path| path.is_file())
}

/// Reaches the server as the given user, or, once root may no longer log in (an earlier
/// bootstrap's doing), as the deploy user with sudo.
async fn connect(
    ctx: &Ctx,
    destination: String,
    port: Option<u16>,
    options: &mut Options,
) -> anyhow::Result<Remote> {
    let mut remote = Remote {
        destination,
        port,
        sudo: false,
    };
    // Who we are, the port sshd took this connection on (the one the firewall must keep
    // open, whatever a NAT in between calls it), and whether sudo works.
    let probe = "id -u; echo \"${SSH_CONNECTION:-}\" | cut -d' ' -f4; if [ \"$(id -u)\" != 0 ]; then sudo -n true && echo sudo; fi";
    // Once a bootstrap has run, root may no longer log in and the deploy user goes in
    // instead. Which to try first is what this machine remembers of its earlier runs, so
    // neither a fresh server nor a second run costs a refused login (fail2ban counts them).
    let deploy = remote.as_user(&options.deploy_user, true);
    let is_root = remote.is_user("root");
    let usable =
        |f: &Finished| f.code == Some(0) && f.stdout.lines().nth(2).map(str::trim) == Some("sudo");
    let remembered = is_root
        && bootstrapped_user(remote.host(), port).as_deref() == Some(options.deploy_user.as_str());
    let mut finished = None;
    if remembered {
        let again = deploy.run(probe, b"").await?;
        if usable(&again) {
            finished = Some(again);
        }
    }
    let finished = match finished {
        Some(finished) => {
            remote = deploy;
            finished
        }
        None => {
            let first = remote.run(probe, b"").await?;
            let refused = first.code == Some(255) && first.stderr.contains("Permission denied");
            if is_root && refused && !remembered {
                let again = deploy.run(probe, b"").await?;
                if usable(&again) {
                    remote = deploy;
                    again
                } else {
                    first
                }
            } else {
                first
            }
        }
    };
    if is_root && remote.is_user(&options.deploy_user) && ctx.mode != Mode::Json {
        eprintln!(
            "{} root may not log in (an earlier bootstrap's doing): going on as {} with sudo",
            style("!").yellow(),
            remote.destination
        );
    }
    if finished.code == Some(255) {
        let port = remote.port.map(|p| format!("-p {p} ")).unwrap_or_default();
        return Err(anyhow::Error::new(super::Refused {
            message: format!(
                "cannot reach {} over ssh: {}",
                remote.destination,
                tail(&finished.stderr)
            ),
            hint: format!(
                "check that `ssh {port}{}` logs in with a key and no prompt (the bootstrap runs ssh with BatchMode)",
                remote.destination
            ),
        }));
    }
    let mut lines = finished.stdout.lines().map(str::trim);
    let (uid, ssh_port, sudo) = (lines.next(), lines.next(), lines.next());
    options.ssh_port = ssh_port.and_then(|port| port.parse().ok()).ok_or_else(|| {
        anyhow!(
            "cannot tell which port sshd on {} listens on (SSH_CONNECTION is not set)",
            remote.destination
        )
    })?;
    match (uid, sudo) {
        (Some("0"), _) => remote.sudo = false,
        (Some(_), Some("sudo")) => remote.sudo = true,
        _ => {
            return Err(invalid(
                format!(
                    "{} is not root and cannot use sudo without a password",
                    remote.destination
                ),
                Some("bootstrap as ssh://root@HOST, or as a user with passwordless sudo"),
            ));
        }
    }
    Ok(remote)
}

/// This machine's record of the servers it bootstrapped: `HOST PORT USER` lines in the config
/// directory (0600), read to log in as the deploy user first on a later run.
fn bootstrapped_file() -> PathBuf {
    berth_ops::contexts::config_dir().join("bootstrapped")
}

fn bootstrapped_key(host: &str, port: Option<u16>) -> String {
    format!("{host} {}", port.unwrap_or(22))
}

fn bootstrapped_user(host: &str, port: Option<u16>) -> Option<String> {
    let text = std::fs::read_to_string(bootstrapped_file()).ok()?;
    let key = bootstrapped_key(host, port);
    text.lines().find_map(|line| {
        let (server, user) = line.rsplit_once(' ')?;
        (server == key).then(|| user.to_owned())
    })
}

/// Best effort: without the record the next run tries root first, costing one refused login.
fn remember_bootstrapped(host: &str, port: Option<u16>, user: &str) {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = bootstrapped_file();
    let key = bootstrapped_key(host, port);
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            line.rsplit_once(' ')
                .is_some_and(|(server, _)| server != key)
        })
        .map(str::to_owned)
        .collect();
    lines.push(format!("{key} {user}"));
    let Some(dir) = path.parent() else { return };
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let tmp = dir.join(format!(".bootstrapped.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| file.write_all((lines.join("\n") + "\n").as_bytes()));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
}

type StepResult = Result<Vec<Report>, (Vec<Report>, String)>;

async fn run_step(remote: &Remote, script: &str) -> StepResult {
    let finished = remote
        .script(script)
        .await
        .map_err(|e| (Vec::new(), e.to_string()))?;
    let reports = bootstrap::parse_reports(&finished.stdout);
    match finished.code {
        Some(0) => Ok(reports),
        Some(255) => Err((
            reports,
            format!("the ssh connection failed: {}", tail(&finished.stderr)),
        )),
        _ => {
            let cause = tail(&finished.stderr);
            Err((
                reports,
                if cause.is_empty() {
                    "the step's script failed without saying why".to_owned()
                } else {
                    cause
                },
            ))
        }
    }
}

/// The CPU an ELF executable is for, in `uname -m`'s words.
fn elf_machine(binary: &[u8]) -> Option<&'static str> {
    if binary.len() < 20 || &binary[..4] != b"\x7fELF" {
        return None;
    }
    let machine = u16::from_le_bytes([binary[18], binary[19]]);
    Some(match machine {
        0x3e => "x86_64",
        0xb7 => "aarch64",
        0x28 => "armv7l",
        0xf3 => "riscv64",
        _ => "an unknown CPU",
    })
}

async fn install_binary(
    remote: &Remote,
    mode: bootstrap::Mode,
    local: &[u8],
    local_arch: &str,
    local_sha: &str,
    path: &Path,
) -> Result<(Vec<Report>, bool), (Vec<Report>, String)> {
    let look = "uname -m; sha256sum /usr/local/bin/berth 2>/dev/null | cut -d' ' -f1; /usr/local/bin/berth --version 2>/dev/null || true";
    let finished = remote
        .script(look)
        .await
        .map_err(|e| (Vec::new(), e.to_string()))?;
    if finished.code != Some(0) {
        return Err((Vec::new(), tail(&finished.stderr)));
    }
    let mut lines = finished.stdout.lines();
    let arch = lines.next().unwrap_or_default().trim().to_owned();
    let sha = lines.next().unwrap_or_default().trim().to_owned();
    let installed = lines.next().unwrap_or_default().trim().to_owned();
    if arch != local_arch {
        return Err((
            Vec::new(),
            format!(
                "the server's CPU is {arch} and {} is for {local_arch}: pass --berth-binary with a berth built for {arch}",
                path.display()
            ),
        ));
    }
    if sha == local_sha {
        return Ok((
            vec![Report::Found(format!(
                "/usr/local/bin/berth is this binary ({installed})"
            ))],
            false,
        ));
    }
    let what = format!(
        "/usr/local/bin/berth {} ({} MB from {})",
        if sha.is_empty() {
            "installed"
        } else {
            "replaced"
        },
        local.len() / 1_000_000,
        path.display()
    );
    if mode == bootstrap::Mode::Check {
        return Ok((vec![Report::Would(what)], true));
    }
    // Written beside the old one, run once to prove it works here, then renamed over it.
    let install = format!(
        "{}sh -c 'umask 022; t=$(mktemp /usr/local/bin/.berth.XXXXXX) && cat >\"$t\" && chmod 755 \"$t\" && \"$t\" --version >/dev/null && mv -f \"$t\" /usr/local/bin/berth || {{ rm -f \"$t\"; exit 1; }}'",
        if remote.sudo { "sudo -n " } else { "" }
    );
    let finished = remote
        .run(&install, local)
        .await
        .map_err(|e| (Vec::new(), e.to_string()))?;
    if finished.code != Some(0) {
        return Err((
            vec![Report::Failed(what)],
            format!(
                "the copy does not run on the server (a libc older than the one it was built against?): {}",
                tail(&finished.stderr)
            ),
        ));
    }
    Ok((vec![Report::Changed(what)], true))
}

/// In check mode the login is known to work only when this run came in as the deploy user.
async fn login(
    remote: &Remote,
    deploy: &Remote,
    mode: bootstrap::Mode,
    logged_in: bool,
) -> StepResult {
    let what = format!(
        "{} logs in with the key{}",
        deploy.destination,
        if deploy.sudo { " and may use sudo" } else { "" }
    );
    if mode == bootstrap::Mode::Check {
        return Ok(vec![if logged_in {
            Report::Found(what)
        } else {
            Report::Would(format!("{what} (tried before root's login is refused)"))
        }]);
    }
    let command = if deploy.sudo { "sudo -n true" } else { "true" };
    let finished = deploy
        .run(command, b"")
        .await
        .map_err(|e| (Vec::new(), e.to_string()))?;
    if finished.code == Some(0) {
        // SSH came through the firewall: the firewall step's undo is called off.
        let mut reports = vec![Report::Found(what)];
        let cancel = "if systemctl is-active --quiet berth-firewall-undo.timer; then systemctl stop berth-firewall-undo.timer && printf 'found\\tthe firewall stays: its 5-minute undo is called off\\n'; fi";
        match remote.script(cancel).await {
            Ok(finished) if finished.code == Some(0) => {
                reports.extend(bootstrap::parse_reports(&finished.stdout));
            }
            Ok(finished) => {
                return Err((
                    reports,
                    format!(
                        "cannot call off the firewall's undo (it disables ufw 5 minutes after it was enabled): {}",
                        tail(&finished.stderr)
                    ),
                ));
            }
            Err(error) => return Err((reports, error.to_string())),
        }
        Ok(reports)
    } else {
        Err((
            Vec::new(),
            format!(
                "{} cannot log in with the key, so root's login and passwords were left as they are: {} (is the key's private half in your ssh agent or ~/.ssh?)",
                deploy.destination,
                tail(&finished.stderr)
            ),
        ))
    }
}

async fn verify(deploy: &Remote, mode: bootstrap::Mode, logged_in: bool) -> StepResult {
    let address = deploy.url(deploy.destination.split('@').next().unwrap_or("deploy"));
    if mode == bootstrap::Mode::Check && !logged_in {
        return Ok(vec![Report::Would(format!("{address} answers"))]);
    }
    let target = crate::client::Target::parse(&address).map_err(|e| (Vec::new(), e))?;
    let client = crate::client::Client::new(target, None, None);
    match tokio::time::timeout(
        Duration::from_secs(30),
        client.get::<berth_api::AgentInfo>("/v1/info"),
    )
    .await
    {
        Ok(Ok(info)) => Ok(vec![Report::Found(format!(
            "{address} answers: berth {}",
            info.version
        ))]),
        Ok(Err(error)) => Err((Vec::new(), format!("{address} does not answer: {error}"))),
        Err(_) => Err((Vec::new(), format!("{address} gave no answer within 30 s"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_machines_are_named_as_uname_does() {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[18] = 0x3e;
        assert_eq!(elf_machine(&header), Some("x86_64"));
        header[18] = 0xb7;
        assert_eq!(elf_machine(&header), Some("aarch64"));
        assert_eq!(elf_machine(b"#!/bin/sh\n"), None);
        let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_machine(&this), Some(std::env::consts::ARCH));
    }

    #[test]
    fn urls_name_the_user_host_and_port() {
        let remote = Remote {
            destination: "root@203.0.113.7".into(),
            port: Some(2222),
            sudo: false,
        };
        assert_eq!(remote.host(), "203.0.113.7");
        assert!(remote.is_user("root") && !remote.is_user("roo"));
        let deploy = remote.as_user("deploy", true);
        assert_eq!(deploy.destination, "deploy@203.0.113.7");
        assert!(deploy.is_user("deploy") && deploy.sudo && deploy.port == Some(2222));
        assert_eq!(remote.url("deploy"), "ssh://deploy@203.0.113.7:2222");
        let v6 = Remote {
            destination: "root@2001:db8::1".into(),
            port: None,
            sudo: false,
        };
        assert_eq!(v6.url("deploy"), "ssh://deploy@[2001:db8::1]");
    }
}
