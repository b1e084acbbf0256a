//! `berth server bootstrap`: what makes a fresh Debian or Ubuntu server ready for berth, as an
//! ordered list of steps. Each server-side step is a POSIX shell script that first looks at the
//! server and then, only where something differs, changes it; in check mode it only says what
//! it would change. So running the whole list twice changes nothing the second time.
//!
//! A script reports on stdout, one tab-separated line per finding (`found`, `would`,
//! `changed`, `note`, `failed`), and exits non-zero with the cause on stderr when it cannot go
//! on. What it changed is also appended to `/var/log/berth-bootstrap.log` on the server.
//!
//! This module only writes the scripts and reads their reports; the CLI runs them over ssh.

/// The agent's systemd unit, as shipped in `dist/`.
pub const AGENT_UNIT: &str = include_str!("../../../dist/berth.service");

/// Where the bootstrapped agent opens a socket for the `berth` group (the deploy user's
/// `ssh … berth dial-stdio` finds it there).
pub const SHARED_SOCKET: &str = "/run/berth.sock";

/// The group whose members may use the agent.
pub const GROUP: &str = "berth";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The user deploys log in as.
    pub deploy_user: String,
    /// The public key allowed to log in as that user (one `authorized_keys` line).
    pub key: PublicKey,
    /// The port sshd listens on (kept open in the firewall, watched by fail2ban).
    pub ssh_port: u16,
    /// The agent's TLS API port, opened in the firewall, when asked for.
    pub api_port: Option<u16>,
    /// The address the certificate authority writes to about the agent's certificates.
    pub acme_email: Option<String>,
    pub swap: Swap,
    /// Whether the deploy user gets passwordless sudo (needed to run the bootstrap again once
    /// root may no longer log in).
    pub sudo: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// A 2 GiB swap file when the server has less than 4 GiB of memory and no swap.
    Auto,
    Off,
    /// A swap file of this many MiB when there is no swap.
    Mib(u32),
}

impl std::str::FromStr for Swap {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Swap::Auto),
            "off" | "0" => Ok(Swap::Off),
            _ => {
                let bytes = berth_manifest::units::parse_size(text)
                    .map_err(|_| format!("`{text}` is not `auto`, `off` or a size such as 2GiB"))?;
                let mib = bytes / (1024 * 1024);
                if !(64..=65_536).contains(&mib) {
                    return Err(format!(
                        "a swap file of {text} is not between 64 MiB and 64 GiB"
                    ));
                }
                Ok(Swap::Mib(mib as u32))
            }
        }
    }
}

/// An SSH public key, checked to be one `authorized_keys` line of a known type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The whole line: type, base64 body and optional comment.
    pub line: String,
    /// The type and body, which identify the key whatever its comment.
    pub id: String,
    /// How to name it to a person: its comment, else its type and the end of its body.
    pub name: String,
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

impl std::str::FromStr for PublicKey {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let line = text.trim();
        if line.contains("PRIVATE KEY") {
            return Err("is a private key: give the public one (the .pub file)".into());
        }
        if line.contains('\n') || line.contains('\r') {
            return Err("holds more than one line: give one public key".into());
        }
        let mut fields = line.split_whitespace();
        let kind = fields.next().unwrap_or_default();
        let body = fields.next().unwrap_or_default();
        if !KEY_TYPES.contains(&kind) {
            return Err(format!(
                "does not start with a public key type ({}); options before the key are not accepted",
                KEY_TYPES.join(", ")
            ));
        }
        let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
        if body.len() < 60 || !body.chars().all(base64) {
            return Err(format!("has no valid key after `{kind}`"));
        }
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err("holds control characters".into());
        }
        let comment = fields.collect::<Vec<_>>().join(" ");
        let name = if comment.is_empty() {
            format!("{kind} …{}", &body[body.len() - 8..])
        } else {
            comment
        };
        Ok(PublicKey {
            line: line.to_owned(),
            id: format!("{kind} {body}"),
            name,
        })
    }
}

/// An email address plain enough to stand in a systemd `ExecStart=` line as one word.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+');
    !local.is_empty()
        && domain.contains('.')
        && email.len() <= 254
        && local.chars().all(plain)
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
}

/// A user name `useradd` accepts and a shell word needs no care for.
pub fn valid_user(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && name.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        && name != "root"
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Look and say what would change.
    Check,
    /// Change what differs.
    Apply,
}

/// What a step is, and who carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    System,
    Packages,
    Docker,
    Time,
    Journal,
    Upgrades,
    Swap,
    User,
    /// The CLI copies its own binary (or `--berth-binary`) to the server.
    Binary,
    Agent,
    Firewall,
    Fail2ban,
    /// The CLI logs in as the deploy user before root's login is taken away.
    Login,
    Sshd,
    /// The CLI reaches the agent as the deploy user, as every later command will.
    Verify,
}

impl Step {
    pub const ALL: [Step; 15] = [
        Step::System,
        Step::Packages,
        Step::Docker,
        Step::Time,
        Step::Journal,
        Step::Upgrades,
        Step::Swap,
        Step::User,
        Step::Binary,
        Step::Agent,
        Step::Firewall,
        Step::Fail2ban,
        Step::Login,
        Step::Sshd,
        Step::Verify,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::System => "system",
            Step::Packages => "packages",
            Step::Docker => "docker",
            Step::Time => "time",
            Step::Journal => "journal",
            Step::Upgrades => "upgrades",
            Step::Swap => "swap",
            Step::User => "user",
            Step::Binary => "berth",
            Step::Agent => "agent",
            Step::Firewall => "firewall",
            Step::Fail2ban => "fail2ban",
            Step::Login => "login",
            Step::Sshd => "sshd",
            Step::Verify => "verify",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Step::System => "the server",
            Step::Packages => "packages from the distribution",
            Step::Docker => "Docker Engine",
            Step::Time => "time sync",
            Step::Journal => "journald's size",
            Step::Upgrades => "unattended security upgrades",
            Step::Swap => "swap",
            Step::User => "the deploy user",
            Step::Binary => "the berth binary",
            Step::Agent => "the agent as a systemd service",
            Step::Firewall => "the firewall (ufw)",
            Step::Fail2ban => "fail2ban for sshd",
            Step::Login => "a login as the deploy user",
            Step::Sshd => "sshd: keys only, no root",
            Step::Verify => "the agent, as the deploy user",
        }
    }

    /// The script a server-side step runs, or `None` for the steps the CLI carries out.
    pub fn script(self, options: &Options, mode: Mode, binary_changed: bool) -> Option<String> {
        let body = match self {
            Step::System => SYSTEM.to_owned(),
            Step::Packages => PACKAGES.to_owned(),
            Step::Docker => DOCKER.to_owned(),
            Step::Time => TIME.to_owned(),
            Step::Journal => JOURNAL.to_owned(),
            Step::Upgrades => UPGRADES.to_owned(),
            Step::Swap => SWAP.to_owned(),
            Step::User => USER.to_owned(),
            Step::Agent => AGENT.to_owned(),
            Step::Firewall => FIREWALL.to_owned(),
            Step::Fail2ban => FAIL2BAN.to_owned(),
            Step::Sshd => SSHD.to_owned(),
            Step::Binary | Step::Login | Step::Verify => return None,
        };
        let mut vars = vec![
            (
                "MODE",
                if mode == Mode::Check {
                    "check"
                } else {
                    "apply"
                }
                .to_owned(),
            ),
            ("STEP", self.name().to_owned()),
            ("DEPLOY_USER", options.deploy_user.clone()),
            ("SSH_KEY", options.key.line.clone()),
            ("SSH_KEY_ID", options.key.id.clone()),
            ("SSH_KEY_NAME", options.key.name.clone()),
            ("SSH_PORT", options.ssh_port.to_string()),
            (
                "API_PORT",
                options.api_port.map(|p| p.to_string()).unwrap_or_default(),
            ),
            (
                "SWAP",
                match options.swap {
                    Swap::Auto => "auto".to_owned(),
                    Swap::Off => "off".to_owned(),
                    Swap::Mib(mib) => mib.to_string(),
                },
            ),
            ("SUDO", if options.sudo { "yes" } else { "no" }.to_owned()),
            ("GROUP", GROUP.to_owned()),
            ("SOCKET", SHARED_SOCKET.to_owned()),
            (
                "BINARY_CHANGED",
                if binary_changed { "1" } else { "0" }.to_owned(),
            ),
        ];
        if self == Step::Agent {
            vars.push(("UNIT", AGENT_UNIT.trim_end().to_owned()));
            vars.push(("DROPIN", agent_dropin(options)));
        }
        let mut script = String::from("set -eu\n");
        for (name, value) in vars {
            script.push_str(&format!("{name}={}\n", quote(&value)));
        }
        script.push_str(PRELUDE);
        script.push_str(&body);
        script.push_str("\nexit 0\n");
        Some(script)
    }
}

/// How the bootstrapped agent listens: its own socket, the group's socket and, when asked,
/// the TLS API.
pub fn agent_dropin(options: &Options) -> String {
    let mut exec = format!(
        "/usr/local/bin/berth agent --api unix:/var/lib/berth/berth.sock --api unix:{SHARED_SOCKET} --api-group {GROUP}"
    );
    if let Some(port) = options.api_port {
        exec.push_str(&format!(" --api https://0.0.0.0:{port}"));
    }
    if let Some(email) = &options.acme_email {
        exec.push_str(&format!(" --acme-email {email}"));
    }
    format!(
        "# Written by `berth server bootstrap`; it rewrites this file when its options change.\n[Service]\nExecStart=\nExecStart={exec}"
    )
}

/// The options an earlier bootstrap gave the agent, read back from its drop-in, so a run
/// without `--api-port` or `--acme-email` keeps them instead of taking them away.
pub fn earlier_options(dropin: &str) -> (Option<u16>, Option<String>) {
    let Some(exec) = dropin
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .rfind(|l| !l.is_empty())
    else {
        return (None, None);
    };
    let words: Vec<&str> = exec.split_whitespace().collect();
    let mut api_port = None;
    let mut acme_email = None;
    for pair in words.windows(2) {
        match pair {
            ["--api", address] => {
                if let Some(port) = address.strip_prefix("https://0.0.0.0:") {
                    api_port = port.parse().ok();
                }
            }
            ["--acme-email", email] if valid_email(email) => acme_email = Some((*email).to_owned()),
            _ => {}
        }
    }
    (api_port, acme_email)
}

/// One line of a step's report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "text", rename_all = "snake_case")]
pub enum Report {
    /// As wanted already.
    Found(String),
    /// Would be changed (check mode).
    Would(String),
    /// Changed now.
    Changed(String),
    /// Worth knowing; nothing was changed for it.
    Note(String),
    /// The change that failed (the cause is on stderr).
    Failed(String),
}

/// Reads a script's stdout. Lines that are not reports (a command's stray output) are notes.
pub fn parse_reports(stdout: &str) -> Vec<Report> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match line.split_once('\t') {
            Some(("found", text)) => Report::Found(text.to_owned()),
            Some(("would", text)) => Report::Would(text.to_owned()),
            Some(("changed", text)) => Report::Changed(text.to_owned()),
            Some(("failed", text)) => Report::Failed(text.to_owned()),
            Some(("note", text)) => Report::Note(text.to_owned()),
            _ => Report::Note(line.to_owned()),
        })
        .collect()
}

/// A shell word holding `text` exactly.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

const PRELUDE: &str = r#"umask 022
export DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { printf '%s\t%s\n' "$1" "$2"; }
found() { say found "$*"; }
note() { say note "$*"; }
record() { printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$STEP" "$*" >>/var/log/berth-bootstrap.log 2>/dev/null || true; }
# act WHAT COMMAND...: in check mode say it would be done; else do it, then say and record it.
act() {
  what=$1; shift
  if [ "$MODE" = check ]; then say would "$what"; return 0; fi
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" | tail -n 20 >&2
    say failed "$what"
    record "FAILED $what"
    exit 1
  fi
  say changed "$what"
  record "$what"
}
# ensure_file PATH MODE WHAT CONTENT: CHANGED=1 when the file was (or would be) written.
ensure_file() {
  CHANGED=0
  if [ -f "$1" ] && [ ! -L "$1" ] && printf '%s\n' "$4" | cmp -s - "$1"; then
    found "$3 ($1)"
    return 0
  fi
  act "$3 ($1)" write_file "$1" "$2" "$4"
  CHANGED=1
}
write_file() {
  mkdir -p "$(dirname "$1")"
  tmp=$(mktemp "$1.berth.XXXXXX")
  printf '%s\n' "$3" >"$tmp"
  chmod "$2" "$tmp"
  mv -f "$tmp" "$1"
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
"#;

const SYSTEM: &str = r#"
if [ -r /etc/os-release ]; then . /etc/os-release; fi
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*) ;;
  *) echo "${PRETTY_NAME:-this system} is not Debian or Ubuntu: the bootstrap knows apt, systemd and ufw there only" >&2; exit 1 ;;
esac
if [ ! -d /run/systemd/system ]; then
  echo "systemd is not the init system here: the agent runs as a systemd service" >&2
  exit 1
fi
mem=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
disk=$(df -Pm / | awk 'NR==2 {print $4}')
found "${PRETTY_NAME:-$ID}, $(uname -m), $(nproc) CPUs, $mem MiB of memory, $disk MiB free on /"
"#;

const PACKAGES: &str = r#"
want="ufw fail2ban python3-systemd unattended-upgrades ca-certificates"
# Docker from Docker's own packages (docker-ce) or another build stays: docker.io would replace it.
if installed docker-ce || installed moby-engine || command -v dockerd >/dev/null 2>&1; then
  found "Docker is installed already ($(dpkg-query -W -f='${Package} ${Version}' docker-ce docker.io moby-engine 2>/dev/null | head -n 1 || echo dockerd)); it is kept"
else
  want="docker.io $want"
fi
if [ "$SUDO" = yes ]; then want="$want sudo"; fi
if ! installed chrony && ! installed ntp && ! installed ntpsec && ! installed openntpd; then
  want="$want systemd-timesyncd"
fi
missing=""
for p in $want; do installed "$p" || missing="$missing $p"; done
apt_install() {
  apt-get -o Acquire::Retries=3 -o DPkg::Lock::Timeout=300 update -q &&
    apt-get -o Acquire::Retries=3 -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends --no-remove "$@"
}
if [ -z "$missing" ]; then
  found "installed:$(printf ' %s' $want)"
else
  act "installed:$missing" apt_install $missing
fi
"#;

const DOCKER: &str = r#"
if ! systemctl is-active --quiet docker; then
  act "Docker started now and at every boot" systemctl enable --now docker
elif ! systemctl is-enabled --quiet docker; then
  act "Docker started at every boot" systemctl enable docker
else
  found "Docker $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '(version unknown)') is running"
fi
f=/etc/docker/daemon.json
if [ ! -e "$f" ]; then
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || true)" = active ]; then
    # Swarm mode refuses live-restore.
    ensure_file "$f" 0644 "containers' logs rotated at 10 MB, 3 kept" '{
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "3" }
}'
  else
    ensure_file "$f" 0644 "containers' logs rotated at 10 MB, 3 kept; containers kept running while Docker itself restarts for an upgrade" '{
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "3" },
  "live-restore": true
}'
  fi
  if [ "$CHANGED" = 1 ]; then
    if [ -n "$(docker ps -q 2>/dev/null || true)" ]; then
      # A restart now would stop them: live-restore takes effect on a reload, the log
      # limits with Docker's next restart (which live-restore then survives).
      act "Docker reloaded to apply $f (containers are running, so it is not restarted: the log limits apply from Docker's next restart)" systemctl reload docker
    else
      act "Docker restarted to apply $f" systemctl restart docker
    fi
  fi
elif grep -q '"max-size"' "$f"; then
  found "containers' logs are rotated ($f)"
else
  note "$f has settings of its own, so it was left alone: add \"log-opts\": {\"max-size\": \"10m\", \"max-file\": \"3\"} and \"live-restore\": true by hand"
fi
"#;

const TIME: &str = r#"
for s in chrony ntp ntpsec openntpd systemd-timesyncd; do
  if systemctl is-enabled --quiet "$s" 2>/dev/null; then
    found "the clock is kept in sync by $s"
    exit 0
  fi
done
act "the clock kept in sync by systemd-timesyncd" systemctl enable --now systemd-timesyncd
"#;

const JOURNAL: &str = r#"
ensure_file /etc/systemd/journald.conf.d/berth.conf 0644 "the journal kept under 500 MB and for a month" '[Journal]
SystemMaxUse=500M
MaxRetentionSec=1month'
if [ "$CHANGED" = 1 ]; then act "journald restarted to apply it" systemctl restart systemd-journald; fi
"#;

const UPGRADES: &str = r#"
ensure_file /etc/apt/apt.conf.d/20auto-upgrades 0644 "security upgrades installed every day by unattended-upgrades" 'APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";'
"#;

const SWAP: &str = r#"
mem=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
swap=$(awk '/^SwapTotal:/ {print int($2/1024)}' /proc/meminfo)
make_swap() {
  if [ -e /swapfile ]; then
    echo "/swapfile exists but is not in use: turn it on (swapon /swapfile) or remove it" >&2
    return 1
  fi
  fallocate -l "${1}M" /swapfile 2>/dev/null || dd if=/dev/zero of=/swapfile bs=1M count="$1" status=none
  chmod 600 /swapfile
  mkswap /swapfile >/dev/null
  swapon /swapfile
  grep -q '^/swapfile ' /etc/fstab || echo '/swapfile none swap sw 0 0' >>/etc/fstab
}
if [ "$SWAP" = off ]; then
  found "no swap file asked for (--swap off); $swap MiB of swap"
elif [ "$swap" -gt 0 ]; then
  found "$swap MiB of swap"
elif [ "$SWAP" = auto ] && [ "$mem" -ge 4096 ]; then
  found "$mem MiB of memory: no swap file needed"
else
  size=$SWAP
  if [ "$size" = auto ]; then size=2048; fi
  free=$(df -Pm / | awk 'NR==2 {print $4}')
  if [ "$free" -lt $((size * 2)) ]; then
    note "only $free MiB free on /: no $size MiB swap file made"
  else
    act "a $size MiB swap file at /swapfile, used at boot" make_swap "$size"
  fi
fi
"#;

const USER: &str = r#"
add_key() {
  # As the deploy user, not root: its home is its own, so whatever links it holds lead
  # nowhere it could not write itself.
  home=$(getent passwd "$DEPLOY_USER" | cut -d: -f6)
  runuser -u "$DEPLOY_USER" -- sh -c '
    set -eu
    umask 077
    dir="$2/.ssh"
    mkdir -p "$dir"
    chmod 700 "$dir"
    tmp=$(mktemp "$dir/.authorized_keys.XXXXXX")
    if [ -f "$dir/authorized_keys" ]; then
      cat "$dir/authorized_keys" >"$tmp"
      if [ -n "$(tail -c 1 "$dir/authorized_keys")" ]; then echo >>"$tmp"; fi
    fi
    printf "%s\n" "$1" >>"$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$dir/authorized_keys"
  ' add_key "$SSH_KEY" "$home"
}
write_sudoers() {
  tmp=$(mktemp /etc/sudoers.d/.berth.XXXXXX)
  printf '%s\n' "$1" >"$tmp"
  chmod 0440 "$tmp"
  if ! visudo -cqf "$tmp"; then rm -f "$tmp"; echo "visudo refused the rule: $1" >&2; return 1; fi
  mv -f "$tmp" /etc/sudoers.d/berth-deploy
}
if getent group "$GROUP" >/dev/null; then
  found "the group $GROUP exists (its members may use the agent)"
else
  act "the group $GROUP, whose members may use the agent" groupadd --system "$GROUP"
fi
if id -u "$DEPLOY_USER" >/dev/null 2>&1; then
  found "the user $DEPLOY_USER exists"
  if id -nG "$DEPLOY_USER" | tr ' ' '\n' | grep -qx "$GROUP"; then
    found "$DEPLOY_USER is in the group $GROUP"
  else
    act "$DEPLOY_USER added to the group $GROUP" usermod -aG "$GROUP" "$DEPLOY_USER"
  fi
else
  act "the user $DEPLOY_USER (no password: it logs in with its key), in the group $GROUP" \
    useradd --create-home --shell /bin/bash --groups "$GROUP" "$DEPLOY_USER"
fi
home=$(getent passwd "$DEPLOY_USER" | cut -d: -f6 || true)
if [ -n "$home" ] && [ -f "$home/.ssh/authorized_keys" ] && grep -qF -- "$SSH_KEY_ID" "$home/.ssh/authorized_keys"; then
  found "the key $SSH_KEY_NAME may log in as $DEPLOY_USER"
else
  act "the key $SSH_KEY_NAME may log in as $DEPLOY_USER" add_key
fi
rule="$DEPLOY_USER ALL=(ALL:ALL) NOPASSWD: ALL"
if [ "$SUDO" = yes ]; then
  if [ -f /etc/sudoers.d/berth-deploy ] && [ "$(cat /etc/sudoers.d/berth-deploy)" = "$rule" ]; then
    found "$DEPLOY_USER may use sudo (without a password: it has none)"
  else
    act "$DEPLOY_USER may use sudo (without a password: it has none)" write_sudoers "$rule"
  fi
elif [ -e /etc/sudoers.d/berth-deploy ]; then
  act "sudo taken from $DEPLOY_USER (--no-sudo)" rm -f /etc/sudoers.d/berth-deploy
else
  found "$DEPLOY_USER has no sudo (--no-sudo)"
fi
"#;

const AGENT: &str = r#"
ensure_file /etc/systemd/system/berth.service 0644 "the agent's systemd unit" "$UNIT"
unit_changed=$CHANGED
ensure_file /etc/systemd/system/berth.service.d/bootstrap.conf 0644 "how the agent listens: its socket, one for the group $GROUP${API_PORT:+, the TLS API on port $API_PORT}" "$DROPIN"
if [ "$CHANGED" = 1 ]; then unit_changed=1; fi
if [ "$unit_changed" = 1 ]; then act "systemd told of the changed unit" systemctl daemon-reload; fi
if ! systemctl is-active --quiet berth; then
  act "the agent started now and at every boot" systemctl enable --now berth
elif [ "$unit_changed" = 1 ]; then
  act "the agent restarted with its new settings (new connections are refused for the second it takes)" systemctl restart berth
elif [ "$BINARY_CHANGED" = 1 ]; then
  act "the agent handed over to the new berth without dropping a request" systemctl reload berth
elif ! systemctl is-enabled --quiet berth 2>/dev/null; then
  act "the agent started at every boot" systemctl enable berth
else
  found "the agent is running ($(/usr/local/bin/berth --version 2>/dev/null || echo berth))"
fi
if [ "$MODE" = apply ] && [ -n "$API_PORT" ]; then
  i=0
  while ! grep -q '"api_fingerprint"' /var/lib/berth/agent.json 2>/dev/null && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
  pin=$(grep -o '"api_fingerprint": *"[^"]*"' /var/lib/berth/agent.json | sed 's/.*"\(sha256:[^"]*\)"/\1/')
  found "the TLS API on port $API_PORT, certificate $pin; its token is in /var/lib/berth/api-token"
fi
if [ "$MODE" = apply ]; then
  i=0
  while [ ! -S "$SOCKET" ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
  if [ ! -S "$SOCKET" ]; then
    echo "the agent did not open $SOCKET within 30 s; its log: journalctl -u berth" >&2
    journalctl -u berth -n 20 --no-pager >&2 || true
    exit 1
  fi
fi
"#;

const FIREWALL: &str = r#"
ports="$SSH_PORT 80 443${API_PORT:+ $API_PORT}"
list=$(printf '%s/tcp, ' $ports)
what="ufw: incoming connections refused except on ${list%, }"
open_firewall() {
  for p in $ports; do ufw allow "$p/tcp" || return 1; done
  ufw default allow outgoing || return 1
  ufw default deny incoming || return 1
  # Undone in 5 minutes unless the login that follows proves SSH still comes through.
  systemctl stop berth-firewall-undo.timer 2>/dev/null || true
  systemd-run --quiet --unit berth-firewall-undo --on-active=300 /usr/sbin/ufw disable || return 1
  ufw --force enable || return 1
  ufw status | grep -q "^$SSH_PORT/tcp .*ALLOW" || { echo "ufw does not list $SSH_PORT/tcp as allowed after enabling" >&2; return 1; }
}
missing=$ports
added=""
active=""
if command -v ufw >/dev/null 2>&1; then
  added=$(ufw show added 2>/dev/null || true)
  active=$(ufw status 2>/dev/null | head -n 1 || true)
  missing=""
  for p in $ports; do
    printf '%s\n' "$added" | grep -qx "ufw allow $p/tcp" || missing="$missing $p"
  done
fi
if [ -z "$missing" ] && [ "$active" = "Status: active" ] &&
  grep -q '^DEFAULT_INPUT_POLICY="DROP"' /etc/default/ufw; then
  found "$what"
else
  act "$what" open_firewall
fi
printf '%s\n' "$added" | grep '^ufw ' | while read -r rule; do
  keep=no
  for p in $ports; do if [ "$rule" = "ufw allow $p/tcp" ]; then keep=yes; fi; done
  if [ "$keep" = no ]; then note "an earlier rule stays: $rule"; fi
done
note "ports Docker publishes bypass ufw: publish an accessory's port on 127.0.0.1 (berth check warns of one published on every address)"
"#;

const FAIL2BAN: &str = r#"
ensure_file /etc/fail2ban/jail.d/berth-sshd.conf 0644 "fail2ban bans an address for an hour after 5 failed SSH logins in 10 minutes" "[sshd]
enabled = true
backend = systemd
port = $SSH_PORT
maxretry = 5
findtime = 10m
bantime = 1h"
if ! systemctl is-active --quiet fail2ban; then
  act "fail2ban started now and at every boot" systemctl enable --now fail2ban
elif [ "$CHANGED" = 1 ]; then
  act "fail2ban restarted to apply it" systemctl restart fail2ban
fi
if [ "$MODE" = apply ]; then
  i=0
  until fail2ban-client status sshd >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 30 ]; then
      echo "fail2ban does not watch sshd; its log: journalctl -u fail2ban" >&2
      journalctl -u fail2ban -n 20 --no-pager >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  found "fail2ban watches sshd ($(fail2ban-client status sshd | awk -F'\t' '/Currently banned/ {print $2}' | tr -d ' ') addresses banned now)"
fi
"#;

const SSHD: &str = r##"
f=/etc/ssh/sshd_config.d/00-berth.conf
if ! grep -qiE '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/\*\.conf' /etc/ssh/sshd_config; then
  echo "/etc/ssh/sshd_config does not read /etc/ssh/sshd_config.d: set PermitRootLogin no and PasswordAuthentication no in it by hand" >&2
  exit 1
fi
ensure_file "$f" 0644 "sshd takes keys only and refuses root" "# Written by \`berth server bootstrap\`. The first value sshd reads wins, so this file
# comes first in sshd_config.d.
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no"
if [ "$CHANGED" = 1 ] && [ "$MODE" = apply ]; then
  if ! out=$(sshd -t 2>&1); then
    rm -f "$f"
    echo "sshd -t refused the configuration, so $f was removed again: $out" >&2
    exit 1
  fi
  act "sshd reloaded (open sessions stay)" sh -c 'systemctl try-reload-or-restart ssh 2>/dev/null || systemctl try-reload-or-restart sshd'
fi
if [ "$MODE" = apply ]; then
  effective=$(sshd -T -C "user=root,host=berth-check,addr=192.0.2.1" 2>/dev/null | grep -iE '^(permitrootlogin|passwordauthentication|kbdinteractiveauthentication) ' | sort | tr '\n' ' ')
  case "$effective" in
    *"kbdinteractiveauthentication no passwordauthentication no permitrootlogin no "*) found "sshd refuses root and passwords (sshd -T)" ;;
    *) echo "sshd still says for root: $effective; a Match block, a line above the Include in /etc/ssh/sshd_config or an earlier file in /etc/ssh/sshd_config.d overrides $f" >&2; exit 1 ;;
  esac
  if ! sshd -T -C "user=$DEPLOY_USER,host=berth-check,addr=192.0.2.1" 2>/dev/null | grep -qx 'passwordauthentication no'; then
    echo "sshd still takes passwords from $DEPLOY_USER: a Match block overrides $f" >&2
    exit 1
  fi
fi
"##;

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbP0o9bJ0X7m1a8TjW2c0G3lq6yHkT7cX1k9o0p7pQ2 ana@laptop";

    fn options() -> Options {
        Options {
            deploy_user: "deploy".into(),
            key: KEY.parse().unwrap(),
            ssh_port: 22,
            api_port: None,
            acme_email: None,
            swap: Swap::Auto,
            sudo: true,
        }
    }

    #[test]
    fn public_keys_are_one_line_of_a_known_type() {
        let key: PublicKey = KEY.parse().unwrap();
        assert_eq!(key.name, "ana@laptop");
        assert!(key.id.starts_with("ssh-ed25519 AAAA") && !key.id.contains("ana"));
        let bare: PublicKey = KEY.rsplit_once(' ').unwrap().0.parse().unwrap();
        assert!(bare.name.starts_with("ssh-ed25519 …"), "{}", bare.name);
        for bad in [
            "",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
            "command=\"sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbP0o9bJ0X7m1a8TjW2c0G3lq6yHkT7cX1k9o0p7pQ2",
            "ssh-ed25519 short",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbP0o9bJ0X7m1a8TjW2c0G3lq6yHkT7cX1k9o0p7pQ2 a\nssh-rsa AAAA",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbP0o9bJ0X7m1a8TjW2c0G3lq6yHkT7cX1k9o0p7pQ2 \u{1b}[2J",
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn user_names_are_plain_words_and_not_root() {
        for good in ["deploy", "_ci", "app-1"] {
            assert!(valid_user(good), "{good}");
        }
        let long = "a".repeat(33);
        for bad in [
            "root",
            "",
            "1deploy",
            "Deploy",
            "de ploy",
            "-x",
            "a;b",
            long.as_str(),
        ] {
            assert!(!valid_user(bad), "{bad}");
        }
    }

    #[test]
    fn swap_sizes() {
        assert_eq!("auto".parse(), Ok(Swap::Auto));
        assert_eq!("off".parse(), Ok(Swap::Off));
        assert_eq!("2GiB".parse(), Ok(Swap::Mib(2048)));
        assert!("1k".parse::<Swap>().is_err());
        assert!("lots".parse::<Swap>().is_err());
    }

    #[test]
    fn values_reach_the_script_quoted() {
        let mut options = options();
        options.key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbP0o9bJ0X7m1a8TjW2c0G3lq6yHkT7cX1k9o0p7pQ2 it's $(reboot)"
            .parse()
            .unwrap();
        let script = Step::User.script(&options, Mode::Apply, false).unwrap();
        assert!(
            script.contains(r"SSH_KEY_NAME='it'\''s $(reboot)'"),
            "{script}"
        );
        assert!(script.starts_with("set -eu\n") && script.ends_with("exit 0\n"));
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn only_server_side_steps_have_scripts_and_check_mode_is_said() {
        let options = options();
        for step in Step::ALL {
            let script = step.script(&options, Mode::Check, false);
            assert_eq!(
                script.is_none(),
                matches!(step, Step::Binary | Step::Login | Step::Verify),
                "{step:?}"
            );
            if let Some(script) = script {
                assert!(script.contains("MODE='check'"), "{step:?}");
            }
        }
        // Root's login goes last of the server's steps, after the deploy user could log in.
        let order: Vec<_> = Step::ALL.iter().map(|s| s.name()).collect();
        let at = |name| order.iter().position(|n| *n == name).unwrap();
        assert!(at("user") < at("login") && at("login") < at("sshd") && at("agent") < at("verify"));
    }

    #[test]
    fn the_agent_listens_for_the_group_and_on_the_api_port_when_asked() {
        let mut options = options();
        let dropin = agent_dropin(&options);
        assert!(dropin.contains("--api unix:/run/berth.sock --api-group berth"));
        assert!(!dropin.contains("https://"));
        options.api_port = Some(7070);
        options.acme_email = Some("ops@example.com".into());
        let dropin = agent_dropin(&options);
        assert!(dropin.contains("--api https://0.0.0.0:7070 --acme-email ops@example.com"));
        for bad in [
            "ops",
            "a b@example.com",
            "ops@localhost",
            "x@y.z\nExecStartPre=/bin/sh",
            "%h@example.com",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
        assert!(valid_email("ops+berth@mail.example.com"));
        let script = Step::Agent.script(&options, Mode::Apply, true).unwrap();
        assert!(script.contains("BINARY_CHANGED='1'") && script.contains("[Service]"));
    }

    #[test]
    fn an_earlier_runs_options_are_read_back_from_its_dropin() {
        let mut options = options();
        assert_eq!(earlier_options(&agent_dropin(&options)), (None, None));
        options.api_port = Some(7070);
        options.acme_email = Some("ops@example.com".into());
        assert_eq!(
            earlier_options(&agent_dropin(&options)),
            (Some(7070), Some("ops@example.com".into()))
        );
        assert_eq!(earlier_options(""), (None, None));
        assert_eq!(
            earlier_options(
                "[Service]\nExecStart=\nExecStart=/usr/local/bin/berth agent --acme-email bad\n"
            ),
            (None, None)
        );
    }

    #[test]
    fn reports_are_read_and_stray_output_kept_as_notes() {
        let reports = parse_reports(
            "found\tDocker 20.10 is running\nchanged\tinstall ufw\n\nReading package lists...\nwould\twrite x\nfailed\tinstall y\n",
        );
        assert_eq!(
            reports,
            vec![
                Report::Found("Docker 20.10 is running".into()),
                Report::Changed("install ufw".into()),
                Report::Note("Reading package lists...".into()),
                Report::Would("write x".into()),
                Report::Failed("install y".into()),
            ]
        );
    }

    /// The scripts are POSIX shell: `sh -n` parses each one.
    #[test]
    fn every_script_parses() {
        let options = options();
        for step in Step::ALL {
            for mode in [Mode::Check, Mode::Apply] {
                let Some(script) = step.script(&options, mode, false) else {
                    continue;
                };
                let out = std::process::Command::new("sh")
                    .arg("-n")
                    .arg("-c")
                    .arg(&script)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{step:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}
