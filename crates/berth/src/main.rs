//! `berth`: the command line. Thin: it parses arguments, reads the manifest and build
//! contexts, talks to the agent over its API, and shows the results. The work happens in the
//! agent (`berth agent`).

mod client;
mod commands;
mod context;
mod output;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Deploy and operate a small web app on your own server with Docker.
#[derive(Parser)]
#[command(name = "berth", version, about)]
struct Cli {
    /// The agent to talk to: unix:PATH, HOST:PORT or ssh://USER@HOST (default: the local
    /// agent's socket in the data directory).
    #[arg(long, global = true, env = "BERTH_AGENT", value_name = "ADDR")]
    agent: Option<String>,
    /// The remote context to use (`berth context add`); default: the one `berth context use`
    /// chose. --agent / BERTH_AGENT win over it.
    #[arg(long, global = true, env = "BERTH_CONTEXT", value_name = "NAME")]
    context: Option<String>,
    /// The agent's data directory (default: /var/lib/berth for root, else
    /// ~/.local/share/berth).
    #[arg(long, global = true, env = "BERTH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ManifestArgs {
    /// The manifest.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "berth.toml",
        value_name = "FILE"
    )]
    file: PathBuf,
    /// Apply the `[environments.ENV]` overlay.
    #[arg(long = "env", value_name = "ENV")]
    environment: Option<String>,
}

/// Which app a command is about. No short `-f` here: `logs -f` means follow.
#[derive(Args, Clone)]
struct AppArgs {
    /// The app (default: the one named in ./berth.toml, or in the manifest given with --file).
    #[arg(long, value_name = "APP")]
    app: Option<String>,
    /// The manifest naming the app.
    #[arg(long = "file", default_value = "berth.toml", value_name = "FILE")]
    file: PathBuf,
    /// The environment overlay whose app is meant.
    #[arg(long = "env", value_name = "ENV")]
    environment: Option<String>,
}

/// Where `berth deploy` builds images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BuildPlace {
    /// On the server, from the build context streamed to the agent.
    Server,
    /// Here, with this machine's Docker; the images stream to the agent.
    Local,
}

/// What to do with a running agent.
#[derive(Subcommand)]
enum AgentCommand {
    /// Replace the running agent with a new process (of BINARY, or of the agent's own
    /// binary as it is on disk now) without refusing a connection: the new process takes
    /// over the listening sockets, the old one drains and exits. Also a restart.
    Upgrade {
        /// The new berth binary: an absolute path on the server (default: the running
        /// agent's own path, which a package upgrade has replaced).
        #[arg(value_name = "BINARY")]
        binary: Option<String>,
    },
    /// Stop the running agent (as SIGTERM does): open requests finish, then it exits. The
    /// apps' containers keep running; routes come back when an agent starts again.
    Stop,
}

#[derive(Subcommand)]
enum Command {
    /// Write a first berth.toml from what this directory holds: its Compose file if it has
    /// one, else its Dockerfiles (ports, health routes and dependencies detected and explained).
    Init {
        /// Where to write the manifest; its directory is the one looked at.
        #[arg(
            short = 'f',
            long = "file",
            default_value = "berth.toml",
            value_name = "FILE"
        )]
        file: PathBuf,
        /// The app's name (default: the directory's, or the Compose file's `name`).
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// Replace an existing manifest.
        #[arg(long)]
        force: bool,
    },
    /// Write an operations runbook in Markdown from the manifest and what is live: where the
    /// app runs, how to deploy, roll back, restart, read logs, restore each backup (a new
    /// server too), rotate each secret, renew certificates, and what each alert means.
    Runbook {
        #[command(flatten)]
        manifest: ManifestArgs,
    },
    /// Scoped API tokens for the agent's TCP API (CI jobs, other machines): `berth tokens
    /// add ci --scope deploy --app shop`, `berth tokens list`, `berth tokens revoke ci`.
    Tokens {
        #[command(subcommand)]
        action: TokensCommand,
    },
    /// The console's users: `berth users add alice --role deployer` prints a one-time setup
    /// link; `list`, `reset`, `disable`, `enable`, `role`, `logout`.
    Users {
        #[command(subcommand)]
        action: UsersCommand,
    },
    /// Named remote agents: `berth context add prod ssh://deploy@host`, `berth context use
    /// prod`, then every command talks to it (or `--context prod` for one command).
    Context {
        #[command(subcommand)]
        action: ContextCommand,
    },
    /// The server itself: `berth server bootstrap ssh://root@HOST` makes a fresh Debian or
    /// Ubuntu server ready for berth.
    Server {
        #[command(subcommand)]
        action: ServerCommand,
    },
    /// Continuous delivery: write a CI workflow that tests every pull request and deploys
    /// the main branch with berth.
    Ci {
        #[command(subcommand)]
        action: CiCommand,
    },
    /// Convert another tool's configuration into a berth.toml.
    Import {
        #[command(subcommand)]
        what: ImportCommand,
    },
    /// Check a manifest: every problem with file:line:column and a fix.
    Check {
        #[command(flatten)]
        manifest: ManifestArgs,
    },
    /// Run the agent: the long-lived process that deploys and serves apps. `berth agent
    /// upgrade` replaces a running one without dropping a request; `berth agent stop` stops it.
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        action: Option<AgentCommand>,
        /// Where the API listens: unix:PATH (default DATA_DIR/berth.sock) or HOST:PORT (needs
        /// the token in DATA_DIR/api-token). Repeat for several.
        #[arg(long = "api", value_name = "ADDR")]
        api: Vec<String>,
        /// Let this group's members use the API's unix sockets too (mode 0660 instead of
        /// 0600). Membership is as powerful as root: the agent runs what they deploy.
        #[arg(long, value_name = "GROUP")]
        api_group: Option<String>,
        /// Where the proxy serves HTTP (default 0.0.0.0:80 for root, else 127.0.0.1:8080;
        /// `off` to disable).
        #[arg(long, env = "BERTH_HTTP", value_name = "ADDR")]
        http: Option<String>,
        #[command(flatten)]
        edge: Box<EdgeArgs>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Local quickstart: start an agent in the background if none answers, then deploy.
    Up {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// Where a started agent's proxy serves HTTP.
        #[arg(
            long,
            env = "BERTH_HTTP",
            default_value = "127.0.0.1:8080",
            value_name = "ADDR"
        )]
        http: String,
        /// The version to record (default: the git commit, else a timestamp).
        #[arg(long, value_name = "V")]
        version: Option<String>,
        /// Load a `docker save` archive first. Repeatable.
        #[arg(long = "load", value_name = "ARCHIVE")]
        load: Vec<PathBuf>,
    },
    /// Deploy with zero downtime; exits 0 only when the new release serves.
    Deploy {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// The version to record (default: the git commit, else a timestamp).
        #[arg(long, value_name = "V")]
        version: Option<String>,
        /// Wait for a deploy in progress instead of failing.
        #[arg(long)]
        wait: bool,
        /// Return only once the old release has drained (its requests finished, its
        /// WebSockets closed); by default it drains in the background once the new release
        /// serves.
        #[arg(long)]
        wait_drain: bool,
        /// Load a `docker save` archive on the server first (for images built elsewhere
        /// without a registry). Repeatable.
        #[arg(long = "load", value_name = "ARCHIVE")]
        load: Vec<PathBuf>,
        /// Where the images of services with `build =` are built: on the server from the
        /// uploaded context (default), or here with this machine's Docker and sent to the
        /// server as an image archive (for CI runners; no registry either way).
        #[arg(long, value_enum, default_value_t = BuildPlace::Server)]
        build: BuildPlace,
        /// Deploy even when the release does not fit on the server (`berth plan`), for
        /// example while the old release runs beside the new one.
        #[arg(long)]
        force: bool,
    },
    /// Whether the manifest fits on the server: memory now, deployed, and at the peak of a
    /// deploy (old and new replicas side by side), CPUs, GPUs, Docker's disk, and whether each
    /// routed domain resolves to the server. Exits 1 when a deploy would be refused.
    Plan {
        #[command(flatten)]
        manifest: ManifestArgs,
    },
    /// Return to the previous (or the named) release, with zero downtime.
    Rollback {
        /// The release number (default: the one before the live release).
        release: Option<i64>,
        #[command(flatten)]
        app: AppArgs,
        /// Roll back even though the old release's configuration differs (its environment,
        /// secrets wiring, routes or backups come back too); asked in a terminal.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Wait for a deploy in progress instead of failing.
        #[arg(long)]
        wait: bool,
        /// Return only once the old release has drained.
        #[arg(long)]
        wait_drain: bool,
    },
    /// The app's release history.
    Releases {
        #[command(flatten)]
        app: AppArgs,
        /// How many releases to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// Every app and service: live release, replicas, health, uptime.
    Status {
        /// Only this app.
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// The agent's background work instead: the backup schedule, certificate renewal,
        /// reconciliation, scheduled runs in progress; each with its state, last and next run
        /// and last error.
        #[arg(long, conflicts_with = "app")]
        workers: bool,
    },
    /// A service's logs.
    Logs {
        /// The service or accessory, as berth.toml names it.
        service: String,
        #[command(flatten)]
        app: AppArgs,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines of each container.
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
        /// Only lines newer than this: a duration ago (10m, 2h) or a time
        /// (2026-12-03T14:00:00Z).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only lines older than this (a duration ago or a time); reads the lines berth kept.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// Only the containers of this release, also ones removed since (the lines berth kept).
        #[arg(long, value_name = "N")]
        release: Option<i64>,
        /// Only lines containing this text (the lines berth kept).
        #[arg(long, value_name = "TEXT")]
        grep: Option<String>,
        /// Only JSON lines whose `level` is this or worse: trace, debug, info, warn, error,
        /// fatal (the lines berth kept).
        #[arg(long, value_name = "LEVEL")]
        level: Option<String>,
    },
    /// Run a command in a running container of a service.
    Exec {
        /// The service or accessory, as berth.toml names it.
        service: String,
        #[command(flatten)]
        app: AppArgs,
        /// Keep standard input open and pass it to the command (`echo 1 | berth exec -i ...`).
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal, sized like this one (`berth exec -it web -- sh`).
        #[arg(short, long)]
        tty: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Replace a service's containers with fresh ones (zero downtime for web services).
    Restart {
        /// The service or accessory, as berth.toml names it.
        service: String,
        #[command(flatten)]
        app: AppArgs,
        #[arg(long)]
        /// Wait for a deploy in progress instead of failing.
        wait: bool,
    },
    /// Encrypted secrets, injected into containers at deploy.
    Secrets {
        #[command(subcommand)]
        action: SecretsCommand,
    },
    /// Serve a maintenance page instead of an app (or stop doing so).
    Maintenance {
        #[command(subcommand)]
        action: MaintenanceCommand,
    },
    /// TLS certificates: list them, or renew one now.
    Certs {
        #[command(subcommand)]
        action: Option<CertsCommand>,
    },
    /// Backups: take them now, list, verify, prune.
    Backup {
        #[command(subcommand)]
        action: BackupCommand,
    },
    /// Put a backup's data back: into the live service (with --force), or --to a path.
    Restore {
        /// The backup's name in berth.toml (`[backups.NAME]`).
        name: String,
        #[command(flatten)]
        app: AppArgs,
        /// The backup to restore (default: the newest).
        #[arg(long, value_name = "ID", conflicts_with = "at")]
        id: Option<String>,
        /// The newest backup taken at or before TIME: 2026-11-23T03:00:00Z, "2026-11-23
        /// 03:00" (the server's time zone) or a date.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Write the data here on the agent's machine instead of replacing the live data (a
        /// database file or dump, or a directory for archives).
        #[arg(long, value_name = "PATH")]
        to: Option<PathBuf>,
        /// Replace live data; a safety backup of it is taken first.
        #[arg(long)]
        force: bool,
        /// Read from this storage (default: the first in the backup's `to` that has it).
        #[arg(long, value_name = "STORAGE")]
        from: Option<String>,
        /// An age identity file, for backups this agent's own key cannot open (a new
        /// server). Sent for this restore only, never stored.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Keep the setuid and setgid bits of files in an archive (they are stripped, so a
        /// restored file can never run with its owner's rights).
        #[arg(long)]
        keep_setuid: bool,
        /// Restore a backup whose record berth cannot authenticate: one this server's (or
        /// `--identity`'s) key did not sign, as anyone who can write to the storage could
        /// have planted it. Look at it first (`berth backup list`).
        #[arg(long)]
        allow_untrusted: bool,
    },
    /// Alerts: what fires now, what fired recently, and how each channel's last delivery
    /// went; `berth alerts test CHANNEL` sends a test message.
    Alerts {
        #[command(subcommand)]
        action: Option<AlertsCommand>,
        /// Only this app's alerts (and the host's).
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// How many recent alerts to show, newest first.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// The host's and each container's CPU, memory, network and disk use, refreshed every
    /// 2 s in a terminal (one snapshot without a terminal or with --json).
    Top {
        /// Only this app's containers.
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// The history instead: mean, peak and trend of the host's and each service's CPU
        /// and memory over a window (default 24h; kept 90 days).
        #[arg(long, value_name = "WINDOW", num_args = 0..=1, default_missing_value = "24h")]
        history: Option<String>,
    },
    /// Availability over 24 hours, 7 and 30 days and response times of each service and
    /// monitor, and the incidents of the last 30 days.
    Uptime {
        /// The app (default: every app).
        #[arg(value_name = "APP")]
        app: Option<String>,
    },
    /// Who changed what, and when.
    Audit {
        /// How many entries to show, newest first.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
        /// Only this app's entries (its deploys, services, secrets and backups).
        #[arg(long, value_name = "APP")]
        app: Option<String>,
    },
    /// Every app the agent runs, one line each: its live release, state and address.
    Apps,
    /// Stop an app: its containers stop, its routes answer 503 "stopped"; its releases,
    /// volumes, secrets and backups are kept. It stays stopped until `berth start`.
    Stop {
        /// The app (default: the one named by --app, or in ./berth.toml).
        #[arg(value_name = "APP")]
        name: Option<String>,
        #[command(flatten)]
        app_args: AppArgs,
    },
    /// Start a stopped app again: the same release, through the health gate.
    Start {
        /// The app (default: the one named by --app, or in ./berth.toml).
        #[arg(value_name = "APP")]
        name: Option<String>,
        #[command(flatten)]
        app_args: AppArgs,
    },
    /// Remove an app from this server: its containers, network, routes and release images
    /// go, and berth forgets its releases. Its volumes and secrets are kept unless
    /// --volumes / --secrets; its backups and the audit log always are.
    Destroy {
        /// The app (default: the one named by --app, or in ./berth.toml).
        #[arg(value_name = "APP")]
        name: Option<String>,
        #[command(flatten)]
        app_args: AppArgs,
        /// Remove the app's named volumes too: their data is gone for good.
        #[arg(long)]
        volumes: bool,
        /// Remove the app's secrets too.
        #[arg(long)]
        secrets: bool,
        /// Take every backup the app defines first; nothing is destroyed if one fails.
        #[arg(long, conflicts_with = "no_backup")]
        backup: bool,
        /// Do not offer a final backup.
        #[arg(long)]
        no_backup: bool,
        /// Do not ask for confirmation (needed when not in a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// This CLI's version, and the agent's when one answers.
    Version,
    /// Print a shell completion script: `berth completions bash > /etc/bash_completion.d/berth`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for berth and for each of its commands into DIR:
    /// `berth man /usr/local/share/man/man1 && man berth-deploy`.
    Man {
        /// Where the pages go (made when missing).
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// Connect stdin/stdout to the local agent (used by `--agent ssh://`).
    #[command(hide = true)]
    DialStdio,
}

/// The agent's edge: HTTPS, certificates, limits, logs and metrics.
#[derive(Args, Clone)]
struct EdgeArgs {
    /// Where the proxy serves HTTPS (default 0.0.0.0:443 for root, else off; `off` to
    /// disable).
    #[arg(long, env = "BERTH_HTTPS", value_name = "ADDR")]
    https: Option<String>,
    /// Where certificates for `tls = "auto"` routes come from: `letsencrypt`,
    /// `letsencrypt-staging`, an ACME directory URL, or `off`.
    #[arg(
        long,
        env = "BERTH_ACME_DIRECTORY",
        default_value = "letsencrypt",
        value_name = "DIRECTORY"
    )]
    acme_directory: String,
    /// An email address for the certificate authority's expiry notices.
    #[arg(long, env = "BERTH_ACME_EMAIL", value_name = "EMAIL")]
    acme_email: Option<String>,
    /// A PEM root certificate to trust for the ACME directory's own HTTPS (a private CA).
    #[arg(long, value_name = "FILE")]
    acme_ca_root: Option<PathBuf>,
    /// How control of a domain is proven: `http-01` (port 80) or `tls-alpn-01` (port 443).
    #[arg(long, default_value = "http-01", value_name = "CHALLENGE")]
    acme_challenge: String,
    /// Renew certificates when less than this validity is left.
    #[arg(long, default_value = "30d", value_name = "DURATION")]
    acme_renew_before: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (they are also at /v1/metrics on the API)
    /// and the health report for uptime monitors at http://ADDR/health (application/health+json).
    #[arg(long, env = "BERTH_METRICS", value_name = "ADDR")]
    metrics: Option<String>,
    /// Serve the console (the web dashboard) at http://ADDR (default 127.0.0.1:9000; `off`
    /// to disable). Keep it on loopback and reach it through an SSH tunnel, or route a
    /// domain to it.
    #[arg(long, env = "BERTH_DASHBOARD", value_name = "ADDR")]
    dashboard: Option<String>,
    /// Also serve the console on this domain through berth's proxy, with an automatic
    /// certificate when the agent serves HTTPS (as an app's route gets one). Logins for
    /// routes with `auth = "berth"` then go through it.
    #[arg(long, env = "BERTH_DASHBOARD_DOMAIN", value_name = "DOMAIN")]
    dashboard_domain: Option<String>,
    /// Console login attempts allowed per client address and minute (a locked account is
    /// also refused: 5 wrong passwords lock it for 15 minutes).
    #[arg(long, default_value_t = 10, value_name = "N")]
    console_login_rate: u32,
    /// Failed console logins in a row that lock an account.
    #[arg(long, default_value_t = 5, value_name = "N")]
    console_lockout_after: u32,
    /// How long a locked console account stays locked.
    #[arg(long, default_value = "15m", value_name = "DURATION")]
    console_lockout_for: String,
    /// New console passwords need an upper- and a lower-case letter, a digit and a symbol
    /// (besides 12 characters, not a common password, not the user's name).
    #[arg(long)]
    console_password_classes: bool,
    /// The JSON access log (default DATA_DIR/logs/access.log; `off` to disable).
    #[arg(long, value_name = "PATH")]
    access_log: Option<String>,
    /// Event loops serving the proxy (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    proxy_threads: usize,
    /// Client connections open at once. At the cap the connection idle the longest is
    /// closed for a new client; new clients wait only while every one is busy.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_connections: usize,
    /// Client connections one client address (an IPv6 /64 counts as one) may hold; more
    /// are closed at once.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_connections_per_client: usize,
    /// How long a client may take to send its request headers, counted from the moment
    /// its connection is accepted for the first request (it must send a first byte
    /// within 10s, or this if shorter).
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    header_timeout: String,
    /// How long a connection with no request in progress stays open.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    idle_timeout: String,
    /// The largest request head (request line and headers) a client may send, 8KiB to
    /// 1MiB; larger ones get 431.
    #[arg(long, default_value = "32KiB", value_name = "SIZE")]
    max_header_size: String,
    /// The most disk the build contexts of deploys in progress may take at once (uploads
    /// no deploy used within an hour are removed).
    #[arg(long, default_value = "4GiB", value_name = "SIZE")]
    upload_quota: String,
    /// The IPv4 range each app's network gets a /24 of (skipping subnets Docker networks
    /// and host routes use): 256 apps in the default /16, where Docker's own pools hold 31.
    #[arg(long, default_value = "10.213.0.0/16", value_name = "CIDR")]
    app_subnets: String,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Take a backup now (every backup in the manifest, or the named one): stored, read
    /// back and checked on each storage, then old ones pruned by `keep`.
    Run {
        /// The backup's name in berth.toml (default: every backup).
        name: Option<String>,
        #[command(flatten)]
        app: AppArgs,
    },
    /// Each backup: when, how big, where it is stored, when it was last verified.
    List {
        /// The backup's name in berth.toml (default: every backup).
        name: Option<String>,
        #[command(flatten)]
        app: AppArgs,
        /// Read the storage itself instead of the agent's catalog.
        #[arg(long)]
        refresh: bool,
    },
    /// Read backups back, decrypt, decompress and check them again.
    Verify {
        /// The backup's name in berth.toml (default: every backup).
        name: Option<String>,
        #[command(flatten)]
        app: AppArgs,
        /// Only this backup.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// Sign the records of backups an older berth wrote (unsigned), once each passes
        /// every check, so they count and can be restored again. Only when nobody else can
        /// write to the storage: an unsigned record may have been planted. One backup at a
        /// time, named with --id, after looking at it in `berth backup list`.
        #[arg(long, requires = "id")]
        adopt_unsigned: bool,
        /// An age identity file (another server's backup.key, or your own recipient's),
        /// for backups this agent's key cannot open or vouch for. Sent for this
        /// verification only, never stored.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Delete the backups `keep` no longer keeps.
    Prune {
        /// The backup's name in berth.toml (default: every backup).
        name: Option<String>,
        #[command(flatten)]
        app: AppArgs,
        /// Show what would be deleted without deleting.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// The certificates the agent serves.
    List,
    /// Obtain a new ACME certificate for a domain now.
    Renew {
        /// The domain, as a route names it.
        domain: String,
    },
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Send a test message to one of the app's `[alerts.NAME]` channels (of its live
    /// release) and say whether it arrived.
    Test {
        /// The channel, as berth.toml names it.
        channel: String,
        #[command(flatten)]
        app: AppArgs,
    },
    /// Keep alerts from the channels for a while (they are still recorded and listed): all
    /// of them, or one app's, one rule's (`service_down`, `disk_full`, ...), one subject's.
    Mute {
        /// For this long, such as 30m, 2h or 1d (at most 30 days).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Only this app's alerts.
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// Only alerts of this rule.
        #[arg(long, value_name = "RULE")]
        rule: Option<String>,
        /// Only alerts about this subject, as `berth alerts` shows it (`shop/web`).
        #[arg(long, value_name = "SUBJECT")]
        subject: Option<String>,
    },
    /// End a mute (its number is in `berth alerts`).
    Unmute {
        /// The mute's number, as `berth alerts` lists it.
        id: i64,
    },
}

#[derive(Subcommand)]
enum MaintenanceCommand {
    /// Serve a 503 maintenance page instead of the app.
    On {
        /// What visitors read.
        #[arg(long, value_name = "TEXT")]
        message: Option<String>,
        #[command(flatten)]
        app: AppArgs,
    },
    /// Serve the app again.
    Off {
        #[command(flatten)]
        app: AppArgs,
    },
}

#[derive(Subcommand)]
enum ContextCommand {
    /// Add (or with --force replace) a context and check that its agent answers.
    Add {
        /// Its name: lower-case letters, digits and dashes.
        name: String,
        /// ssh://USER@HOST[:PORT][/path/to/berth.sock], https://HOST:PORT (with the token and
        /// the fingerprint) or unix:PATH.
        #[arg(value_name = "AGENT")]
        address: String,
        /// Read the agent's API token from stdin (for https://; else BERTH_TOKEN).
        #[arg(long)]
        token_stdin: bool,
        /// The agent's certificate fingerprint, sha256:... (for https://; else
        /// BERTH_AGENT_FINGERPRINT).
        #[arg(long, value_name = "SHA256")]
        fingerprint: Option<String>,
        /// Make it the current context too.
        #[arg(long = "use")]
        use_it: bool,
        /// Replace a context of the same name.
        #[arg(long)]
        force: bool,
    },
    /// Use this context from now on (`default`: the local agent).
    Use {
        /// The context's name, or `default`.
        name: String,
    },
    /// List the contexts (tokens never shown).
    #[command(alias = "ls")]
    List,
    /// Remove a context.
    Rm {
        /// The context's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Make a token and print it once (only the token when piped).
    Add {
        /// Its name, recorded in the audit log with every action it takes.
        name: String,
        /// `read` (status, logs, releases), `deploy` (also deploy, rollback, restart,
        /// maintenance, backups and restores) or `admin` (everything: secrets, exec, tokens).
        #[arg(long, value_name = "SCOPE")]
        scope: String,
        /// Limit it to one app.
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// How long it lives, such as 90d (default: until revoked).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// The tokens: scope, app, state, last use (never the tokens themselves).
    #[command(alias = "ls")]
    List,
    /// Revoke a token: requests with it are refused at once.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user and print their one-time setup link (valid an hour; only the link when
    /// piped).
    Add {
        /// 2 to 64 lower-case letters, digits, `-`, `_` and `.`, starting with a letter.
        name: String,
        /// `viewer` (reads), `deployer` (also deploys, rolls back, restarts, maintenance,
        /// backups) or `admin` (everything, users included).
        #[arg(long, value_name = "ROLE")]
        role: String,
    },
    /// The users: role, state, last login.
    #[command(alias = "ls")]
    List,
    /// Print a one-time link that sets a new password (valid an hour).
    Reset {
        /// The user's name.
        name: String,
    },
    /// Stop a user from logging in; their sessions end at once.
    Disable {
        /// The user's name.
        name: String,
    },
    /// Let a disabled user log in again.
    Enable {
        /// The user's name.
        name: String,
    },
    /// Change a user's role; their sessions end, so the new role applies at once.
    Role {
        /// The user's name.
        name: String,
        /// `viewer`, `deployer` or `admin`.
        role: String,
    },
    /// End every session of a user (they log in again).
    Logout {
        /// The user's name.
        name: String,
    },
    /// Approve a sign-up request: the account may log in (as a viewer).
    Approve {
        /// The user's name.
        name: String,
    },
    /// Deny a sign-up request: it is removed.
    Deny {
        /// The user's name.
        name: String,
    },
    /// Whether the console's login page offers a form to ask for an account (`open`; each
    /// request waits for an admin's approval) or not (`closed`, the default); alone, shows it.
    SignUp {
        /// `open` or `closed`.
        #[arg(value_parser = ["open", "closed"])]
        policy: Option<String>,
    },
    /// Whether every user must log in with a code from an authenticator app: `required`
    /// (those without one set it up after their password) or `optional`; alone, shows it.
    TwoFactor {
        /// `required` or `optional`.
        #[arg(value_parser = ["required", "optional"])]
        policy: Option<String>,
    },
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Make a fresh Debian or Ubuntu server ready, over ssh (idempotent): Docker Engine from
    /// the distribution, a deploy user with your key in the group that may use berth, the
    /// agent as a systemd service, ufw allowing only 22/80/443 (and --api-port), fail2ban for
    /// sshd, unattended security upgrades, journald and Docker log limits, time sync, a swap
    /// file on small servers, and last sshd without root or password logins. Each step says
    /// what it found and what it changed; run it again and nothing changes.
    Bootstrap(BootstrapArgs),
}

/// `berth server bootstrap`'s options.
#[derive(Args)]
pub(crate) struct BootstrapArgs {
    /// ssh://root@HOST[:PORT], or ssh://USER@HOST for a user with passwordless sudo. Once
    /// root may no longer log in, the same command goes on as the deploy user.
    #[arg(value_name = "SERVER")]
    pub server: String,
    /// Only look and print what would change; change nothing.
    #[arg(long)]
    pub check: bool,
    /// The deploy user to create (it logs in with --ssh-key and may use the agent).
    #[arg(long, default_value = "deploy", value_name = "NAME")]
    pub user: String,
    /// The public key the deploy user logs in with (default: ~/.ssh/id_ed25519.pub,
    /// id_ecdsa.pub or id_rsa.pub).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// Also serve the agent's API over TLS on this port and open it in the firewall (for
    /// `berth context add NAME https://HOST:PORT` and CI jobs with a token). A later run
    /// keeps the port an earlier one set; `off` closes it.
    #[arg(long, value_name = "PORT")]
    pub api_port: Option<String>,
    /// An email address for the certificate authority's expiry notices (the agent's
    /// --acme-email; a later run keeps the one an earlier run set).
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// A swap file: `auto` (2 GiB when the server has less than 4 GiB of memory and no
    /// swap), `off`, or a size such as 4GiB.
    #[arg(long, default_value = "auto", value_name = "SIZE")]
    pub swap: String,
    /// Do not let the deploy user use sudo. Running the bootstrap again then needs
    /// another way in as root.
    #[arg(long)]
    pub no_sudo: bool,
    /// The berth binary to install on the server (default: this one), for a server of
    /// another CPU.
    #[arg(long, value_name = "FILE")]
    pub berth_binary: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CiCommand {
    /// Write the workflow (.github/workflows/berth.yml or .gitlab-ci.yml) in this directory:
    /// tests on every pull request; on the main branch, `berth deploy` with the credentials
    /// kept in the CI system's secrets.
    Init {
        /// github or gitlab.
        #[arg(value_enum)]
        provider: CiProvider,
        /// How the job reaches the agent: token (its TLS API, the token and the pinned
        /// fingerprint) or ssh (ssh://deploy@HOST with a key for the job).
        #[arg(long, value_enum, default_value = "token")]
        access: CiAccess,
        /// The test command (default: from the files here, such as package.json or Cargo.toml).
        #[arg(long, value_name = "COMMAND")]
        test_command: Option<String>,
        /// The branch that deploys.
        #[arg(long, default_value = "main", value_name = "BRANCH")]
        branch: String,
        /// Deploy this `[environments.ENV]` overlay.
        #[arg(long = "env", value_name = "ENV")]
        environment: Option<String>,
        /// Replace an existing workflow file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CiProvider {
    Github,
    Gitlab,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CiAccess {
    Token,
    Ssh,
}

#[derive(Subcommand)]
enum ImportCommand {
    /// A Compose file: databases and other long-lived state become accessories, published
    /// HTTP ports routes, env files and secret-looking values secrets (names only). What
    /// cannot be carried over is listed with its line.
    Compose {
        /// The Compose file (docker-compose.yml, compose.yaml, ...).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Where to write the manifest (default: berth.toml beside the Compose file).
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The app's name (default: the Compose file's `name`, else its directory's).
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// Include the services of this Compose profile too. Repeatable.
        #[arg(long, value_name = "PROFILE")]
        profile: Vec<String>,
        /// Replace an existing manifest.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Set a secret (the value is read from stdin unless --value is given).
    Set {
        /// The secret's name, as the manifest's `secrets` and `secret_files` list it.
        name: String,
        #[arg(long, value_name = "VALUE")]
        /// The value (visible in your shell's history and `ps`: prefer stdin).
        value: Option<String>,
        #[command(flatten)]
        app: AppArgs,
        /// Set it even for an app berth knows nothing of yet (no deploy, no secrets, no
        /// manifest here naming it), without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Print a secret's value.
    Get {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        app: AppArgs,
    },
    /// List secret names (never values).
    List {
        #[command(flatten)]
        app: AppArgs,
    },
    /// Delete a secret.
    Rm {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        app: AppArgs,
    },
    /// Set secrets from a .env file (KEY=value lines; quotes, `export` and comments as
    /// Compose reads them). With a berth.toml here, only the secrets it names, unless --all.
    Import {
        /// The .env file.
        #[arg(value_name = "ENV_FILE")]
        env_file: PathBuf,
        /// Set every variable of the file, also ones the manifest does not name.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        app: AppArgs,
        /// Set them even for an app berth knows nothing of yet, without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Print a `NAME:$argon2id$...` line for a route's basic-auth users secret (the password
    /// is read without echo, or from stdin; nothing is sent to the agent).
    HashPassword {
        /// The user's name.
        name: String,
    },
    /// Give a secret a new value (32 random bytes, or --value / stdin) and restart the
    /// services of the live release that use it, with zero downtime, so they read it.
    Rotate {
        /// The secret's name.
        name: String,
        /// The new value instead of a generated one (prefer stdin: `... | berth secrets
        /// rotate NAME --stdin`).
        #[arg(long, value_name = "VALUE", conflicts_with = "stdin")]
        value: Option<String>,
        /// Read the new value from stdin.
        #[arg(long)]
        stdin: bool,
        /// Rotate even when an accessory uses it (one that reads it on every start).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        app: AppArgs,
    },
    /// Set a secret to 32 random bytes (64 hex characters).
    Generate {
        /// The secret's name.
        name: String,
        /// Replace an existing value.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        app: AppArgs,
        /// Set it even for an app berth knows nothing of yet, without asking.
        #[arg(long)]
        yes: bool,
    },
}

/// The command line as `--help` shows it: the global options that reach the agent are hidden
/// where a command never does. A subcommand's own argument of the same id takes the global
/// one's place (clap does not propagate over it), so scripts that pass them everywhere work.
fn command_line() -> clap::Command {
    let hidden = |id: &'static str, long: &'static str, takes_value: bool| {
        let arg = clap::Arg::new(id).long(long).hide(true);
        if takes_value {
            arg.num_args(1)
        } else {
            arg.action(clap::ArgAction::SetTrue)
        }
    };
    <Cli as clap::CommandFactory>::command()
        .mut_subcommand("check", |sub| {
            sub.arg(hidden("agent", "agent", true))
                .arg(hidden("context", "context", true))
        })
        .mut_subcommand("init", |sub| {
            sub.arg(hidden("agent", "agent", true))
                .arg(hidden("context", "context", true))
                .arg(hidden("data_dir", "data-dir", true))
        })
        .mut_subcommand("ci", |sub| {
            sub.mut_subcommand("init", |sub| {
                sub.arg(hidden("agent", "agent", true))
                    .arg(hidden("context", "context", true))
                    .arg(hidden("data_dir", "data-dir", true))
            })
        })
        .mut_subcommand("import", |sub| {
            sub.mut_subcommand("compose", |sub| {
                sub.arg(hidden("agent", "agent", true))
                    .arg(hidden("context", "context", true))
                    .arg(hidden("data_dir", "data-dir", true))
            })
        })
        .mut_subcommand("server", |sub| {
            sub.mut_subcommand("bootstrap", |sub| {
                sub.arg(hidden("agent", "agent", true))
                    .arg(hidden("context", "context", true))
                    .arg(hidden("data_dir", "data-dir", true))
            })
        })
        .mut_subcommand("completions", |sub| {
            sub.arg(hidden("agent", "agent", true))
                .arg(hidden("context", "context", true))
                .arg(hidden("data_dir", "data-dir", true))
                .arg(hidden("json", "json", false))
        })
}

fn main() -> ExitCode {
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&command_line().get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => commands::report(&error, json),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    /// Options that reach the agent are not offered where a command never does.
    #[test]
    fn commands_that_never_reach_an_agent_do_not_offer_agent() {
        let mut command = super::command_line();
        command.build();
        let help = |command: &mut clap::Command, name: &str| {
            command
                .find_subcommand_mut(name)
                .expect("the subcommand")
                .render_long_help()
                .to_string()
        };
        for name in ["check", "completions", "init"] {
            assert!(!help(&mut command, name).contains("--agent"), "{name}");
            assert!(!help(&mut command, name).contains("--context"), "{name}");
        }
        for name in ["deploy", "status", "exec", "destroy"] {
            assert!(help(&mut command, name).contains("--agent"), "{name}");
        }
        let agent = command.find_subcommand_mut("agent").expect("agent");
        for name in ["upgrade", "stop"] {
            let help = agent
                .find_subcommand_mut(name)
                .expect(name)
                .render_long_help()
                .to_string();
            assert!(help.contains("--agent"), "agent {name}");
        }
        // The hidden option still works, for scripts that pass it everywhere.
        for args in [
            &["berth", "check", "--agent", "unix:/x.sock"][..],
            &["berth", "completions", "bash", "--json", "--data-dir", "/x"],
            &["berth", "agent", "upgrade", "--agent", "unix:/x.sock"],
        ] {
            let parsed = super::command_line().try_get_matches_from(args);
            assert!(parsed.is_ok(), "{args:?}: {parsed:?}");
        }
    }

    #[test]
    fn man_pages_are_written_for_berth_and_each_command() {
        let dir = tempfile::tempdir().unwrap();
        let pages = crate::commands::write_man_pages(&dir.path().join("man1")).unwrap();
        assert!(pages > 30, "{pages} pages");
        let page = |name: &str| {
            std::fs::read_to_string(dir.path().join("man1").join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        assert!(page("berth.1").contains(".TH berth 1"));
        let deploy = page("berth-deploy.1");
        assert!(deploy.contains(".TH berth-deploy 1"), "{deploy}");
        assert!(page("berth-alerts-mute.1").contains("\\-\\-for"));
    }

    /// `--help` never shows an argument without saying what it is for.
    #[test]
    fn every_argument_and_command_says_what_it_is_for() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let command = <super::Cli as clap::CommandFactory>::command();
        let mut missing = Vec::new();
        walk(&command, "berth", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
