//! `berth runbook`: an operations runbook in Markdown, written from the manifest and, when the
//! agent answers, what is live. Every command in it is one berth runs as written, so the
//! runbook stays true as long as it is regenerated after the manifest changes.

use berth_api::AppStatus;
use berth_manifest::{BackupSource, Manifest, Probe, Service, Tls, VolumeSource};
use std::collections::BTreeMap;
use std::fmt::Write;

/// What the agent said about the app, when it answered.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// How the CLI reached the agent: `unix:/var/lib/berth/berth.sock`, `ssh://deploy@host`.
    pub agent: String,
    pub agent_version: String,
    /// Where the agent serves HTTPS; `None`: it serves none (no certificate is requested).
    pub https: Option<String>,
    pub status: Option<AppStatus>,
}

/// What each built-in alert means and what to do first.
const ALERTS: &[(&str, &str, &str)] = &[
    (
        "service_down",
        "no container of a service passes its health check",
        "`berth status`; `berth logs SERVICE -n 200`; `berth restart SERVICE`; if a deploy just went out, `berth rollback`",
    ),
    (
        "crash_loop",
        "a service's containers stopped on their own 3 times within 5 minutes",
        "`berth logs SERVICE --since 10m --level error`; a bad release: `berth rollback`; a dependency down: `berth status`",
    ),
    (
        "oom_killed",
        "the kernel killed a container for passing its `memory` limit",
        "`berth top --history 24h --app APP`; raise `memory` in berth.toml (check `berth plan`), then `berth deploy`",
    ),
    (
        "container_died",
        "a current container stopped without berth stopping it",
        "`berth logs SERVICE --release N` shows its last lines even after it is gone",
    ),
    (
        "replica_replaced",
        "berth replaced a replica that stayed unhealthy",
        "`berth logs SERVICE`; one replacement is the system working, repeated ones are a bug to look at",
    ),
    (
        "disk_full",
        "berth's or Docker's file system is 90 % full",
        "`df -h`; `docker system df`; old images go with each deploy (5 releases kept) and berth keeps at most 1 GiB of logs per app",
    ),
    (
        "memory_high",
        "the host used over 90 % of its memory for 5 minutes",
        "`berth top`; lower `replicas` or `memory`, or move to a bigger server (`berth plan`)",
    ),
    (
        "backup_failed",
        "a backup failed, failed verification, or is over an hour late",
        "`berth backup list NAME`; `berth backup run NAME` shows the error (storage unreachable, credentials, disk full)",
    ),
    (
        "certificate",
        "a certificate expires within 14 days or cannot be obtained or renewed",
        "`berth certs`; `berth plan` checks the domain's DNS; `berth certs renew DOMAIN`",
    ),
    (
        "deploy_failed",
        "a deploy failed; the previous release keeps serving",
        "the deploy printed the reason and the failing container's last lines; `berth releases`",
    ),
    (
        "error_rate",
        "10 % or more of the requests to the app were answered 5xx over 5 minutes",
        "`berth logs SERVICE --since 10m --level error`; a fresh release: `berth rollback`",
    ),
    (
        "log_errors",
        "10 % or more of the app's log lines were errors over 5 minutes",
        "`berth logs SERVICE --since 10m --level error`",
    ),
];

/// `base_dir` is the manifest's directory: build contexts are shown relative to it.
pub fn runbook(
    manifest: &Manifest,
    manifest_file: &str,
    base_dir: &std::path::Path,
    live: Option<&Live>,
    today: &str,
) -> String {
    let app = &manifest.app;
    let env_flag = manifest
        .environment
        .as_ref()
        .map(|e| format!(" --env {e}"))
        .unwrap_or_default();
    let mut md = String::new();
    let mut line = |text: &str| {
        md.push_str(text);
        md.push('\n');
    };
    line(&format!("# Runbook: {app}"));
    line("");
    line(&format!(
        "Written by `berth runbook` on {today} from `{manifest_file}`{}. Write it again after changing the manifest: `berth runbook{env_flag} > RUNBOOK.md`.",
        live.map(|l| format!(" and the agent at `{}`", l.agent))
            .unwrap_or_default()
    ));
    line("Run the commands below in the directory holding the manifest (or add `--app APP`).");
    line("");

    // Where it runs.
    line("## Where it runs");
    line("");
    match live {
        Some(live) => {
            line(&format!(
                "- Agent: `{}` (berth {})",
                live.agent, live.agent_version
            ));
            match live.status.as_ref().and_then(|s| s.live_release.as_ref()) {
                Some(release) => line(&format!(
                    "- Live release: {} (version `{}`)",
                    release.number, release.version
                )),
                None => line("- Live release: none yet (`berth deploy`)"),
            }
            if let Some(status) = &live.status {
                for url in &status.urls {
                    line(&format!("- URL: {url}"));
                }
            }
        }
        None => line("- The agent did not answer when this was written: live facts are missing."),
    }
    line("");
    line("| service | role | image | replicas | port | memory | health check |");
    line("|---|---|---|---|---|---|---|");
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
    {
        line(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            service.name,
            role(service),
            image(service, base_dir),
            service.replicas,
            service
                .port
                .map_or_else(|| "—".to_owned(), |p| p.to_string()),
            service
                .memory
                .map_or_else(|| "no limit".to_owned(), berth_manifest::units::format_size),
            probe(service)
        ));
    }
    let volumes = volume_users(manifest);
    if !volumes.is_empty() {
        line("");
        line("Named volumes (data kept across deploys; Docker names them `APP_NAME`):");
        for (volume, users) in &volumes {
            line(&format!("- `{volume}`: {}", users.join(", ")));
        }
    }
    line("");

    line("## Deploy");
    line("");
    line(&format!(
        "```sh\nberth plan{env_flag}      # does it fit, now and while old and new run side by side?\nberth deploy{env_flag}    # exits 0 only once the new release serves\n```"
    ));
    line("");
    line(
        "A deploy builds (or pulls), runs the release command, starts the new replicas beside the old ones, waits for their health checks, moves traffic at once and drains the old ones. If anything fails, the old release keeps serving and the command exits 1 with the reason and the failing container's last log lines. Only one deploy runs at a time per app (`--wait` queues).",
    );
    line("");

    line("## Roll back");
    line("");
    line(
        "```sh\nberth releases            # numbers, versions, when\nberth rollback            # the release before the live one\nberth rollback 12         # a given release\n```",
    );
    line("");
    line(
        "A rollback goes through the same zero-downtime path. When the old release's configuration differs (environment, secrets wiring, routes), berth lists the differences and asks. Images of the last 5 releases are kept.",
    );
    line("");

    line("## Restart, stop, maintenance");
    line("");
    let mut commands = String::from("```sh\n");
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
    {
        let _ = writeln!(
            commands,
            "berth restart {:<16} # {}",
            service.name,
            if service.accessory {
                "in place: a short interruption for what uses it"
            } else {
                "fresh containers, zero downtime"
            }
        );
    }
    commands.push_str("berth maintenance on --message \"Back at 14:00\"   # a 503 page instead of the app\nberth maintenance off\nberth stop                  # every container stopped (data kept), routes answer 503\nberth start\n```");
    line(&commands);
    line("");

    line("## Logs and state");
    line("");
    let first = manifest
        .services
        .keys()
        .next()
        .cloned()
        .unwrap_or_else(|| "web".into());
    line(&format!(
        "```sh\nberth status                          # every service, its replicas and health (exit 1 if a problem)\nberth logs {first} -f                    # follow, across restarts and deploys\nberth logs {first} --since 1h --level error\nberth logs {first} --release 12          # a release's containers, even removed ones\nberth top                             # CPU, memory, disk, network per container\nberth uptime                          # availability and incidents\nberth audit                           # who changed what\nberth exec -it {first} -- sh\n```"
    ));
    line("");

    line("## Backups and restore");
    line("");
    if manifest.backup.backups.is_empty() {
        line(
            "No `[backups.*]` in the manifest: nothing is backed up. Add one per database and per volume that holds data (see the README's Backups).",
        );
    } else {
        line("| backup | what | schedule | kept | stored on |");
        line("|---|---|---|---|---|");
        for backup in manifest.backup.backups.values() {
            let keep = &backup.keep;
            let kept: Vec<String> = [
                ("last", keep.last),
                ("hourly", keep.hourly),
                ("daily", keep.daily),
                ("weekly", keep.weekly),
                ("monthly", keep.monthly),
                ("yearly", keep.yearly),
            ]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
            line(&format!(
                "| {} | {} | {} | {} | {} |",
                backup.name,
                source(&backup.source),
                backup.schedule.as_deref().unwrap_or("on demand"),
                if kept.is_empty() {
                    "all".to_owned()
                } else {
                    kept.join(", ")
                },
                if backup.to.is_empty() {
                    "local".to_owned()
                } else {
                    backup.to.join(", ")
                }
            ));
        }
        line("");
        for backup in manifest.backup.backups.values() {
            let name = &backup.name;
            line(&format!("**{name}**"));
            line("");
            line(&format!(
                "```sh\nberth backup run {name}        # now: stored, read back and checked\nberth backup list {name}\nberth backup verify {name}     # read every kept copy back again\nberth restore {name} --force   # the newest, after a safety backup of what is there\nberth restore {name} --at 2026-01-31T03:00:00Z --force\nberth restore {name} --to /tmp/{name}-restore   # to a path instead, to look first\n```"
            ));
            line("");
        }
        line(
            "**Disaster recovery on a new server.** Needed: the bucket, its credentials, and a copy of the old server's `DATA_DIR/backup.key` kept off the server. Install berth and start the agent on the new server, then, where the manifest is:",
        );
        line("");
        line(
            "```sh\nberth secrets set AWS_ACCESS_KEY_ID; berth secrets set AWS_SECRET_ACCESS_KEY\nberth backup list                                          # read from the bucket\n",
        );
        let mut restores = String::new();
        for name in manifest.backup.backups.keys() {
            let _ = writeln!(
                restores,
                "berth restore {name} --identity ~/keys/old-server-backup.key"
            );
        }
        line(&format!("{restores}berth deploy\n```"));
        line("");
        line("Then set every secret below again and point DNS at the new server.");
    }
    line("");

    line("## Secrets");
    line("");
    let users = manifest.secret_users();
    if users.is_empty() {
        line("The manifest names no secrets.");
    } else {
        line("| secret | used by | rotate |");
        line("|---|---|---|");
        for (name, services) in &users {
            let accessory = services
                .iter()
                .any(|s| manifest.accessories.contains_key(s));
            let how = if accessory {
                let restarts: Vec<String> = services
                    .iter()
                    .map(|s| format!("`berth restart {s}`"))
                    .collect();
                format!(
                    "change it inside the database first, then `berth secrets set {name}` and {}",
                    restarts.join(", ")
                )
            } else {
                format!(
                    "`berth secrets rotate {name}` (a new value, then a zero-downtime restart of its users)"
                )
            };
            line(&format!("| `{name}` | {} | {how} |", services.join(", ")));
        }
        line("");
        line(
            "Values are never shown here; `berth secrets list` lists the names, `berth secrets get NAME` prints one.",
        );
    }
    line("");

    line("## Certificates");
    line("");
    let domains: Vec<(&str, &Tls)> = manifest
        .services
        .values()
        .filter_map(|s| s.route.as_ref())
        .flat_map(|r| r.domains.iter().map(move |d| (d.as_str(), &r.tls)))
        .collect();
    if domains.is_empty() {
        line(
            "No route names a domain: the app is served over plain HTTP on every host name. Add `domains` to a route for automatic HTTPS.",
        );
    } else {
        let no_https = live.is_some_and(|l| l.https.is_none());
        for (domain, tls) in &domains {
            let how = match tls {
                Tls::Auto if no_https => {
                    "plain HTTP only: the agent serves no HTTPS (started with `--https off`), so no certificate is requested"
                }
                Tls::Auto => "from the agent's ACME CA, renewed 30 days before expiry",
                Tls::Off => "plain HTTP only (`tls = \"off\"`)",
                _ => "certificate files on the server, reloaded when they change",
            };
            line(&format!("- `{domain}`: {how}"));
        }
        line("");
        line(
            "`berth certs` lists each certificate's state and expiry; `berth certs renew DOMAIN` renews one now. A certificate that cannot be obtained is nearly always DNS: `berth plan` says where each domain points.",
        );
    }
    line("");

    line("## Alerts");
    line("");
    if manifest.alerts.is_empty() {
        line(
            "No `[alerts.*]` channel: alerts are recorded (`berth alerts`) but sent nowhere. Add a webhook, Slack, Discord, Telegram, ntfy or email channel.",
        );
    } else {
        let channels: Vec<String> = manifest
            .alerts
            .iter()
            .map(|c| format!("`{}` (from {})", c.name, c.min_severity.as_str()))
            .collect();
        line(&format!(
            "Sent to: {}. `berth alerts test CHANNEL` sends a test message; `berth alerts mute --for 1h` silences them during planned work.",
            channels.join(", ")
        ));
    }
    line("");
    line("| alert | means | first steps |");
    line("|---|---|---|");
    for (rule, means, steps) in ALERTS {
        line(&format!("| `{rule}` | {means} | {steps} |"));
    }
    for threshold in &manifest.thresholds {
        line(&format!(
            "| `threshold` {} | a `[thresholds.{}]` condition held ({}) | `berth top --history 24h` |",
            threshold.name,
            threshold.name,
            threshold.severity.as_str()
        ));
    }
    for monitor in &manifest.monitors {
        line(&format!(
            "| `monitor_failing` {} | the `[monitors.{}]` check of the public address failed | `berth uptime`; check DNS, the certificate and the proxy from outside |",
            monitor.name, monitor.name
        ));
    }
    md
}

fn role(service: &Service) -> &'static str {
    if service.accessory {
        "accessory"
    } else if service.route.is_some() {
        "web"
    } else {
        "worker"
    }
}

fn image(service: &Service, base_dir: &std::path::Path) -> String {
    match &service.source {
        berth_manifest::ImageSource::Image { reference, .. } => format!("`{reference}`"),
        berth_manifest::ImageSource::Build(spec) => {
            let context = match spec.context.strip_prefix(base_dir) {
                Ok(relative) if relative.as_os_str().is_empty() => ".".to_owned(),
                Ok(relative) => format!("./{}", relative.display()),
                Err(_) => spec.context.display().to_string(),
            };
            format!("built from `{context}`")
        }
    }
}

fn probe(service: &Service) -> String {
    match &service.healthcheck.probe {
        Probe::Http { path, .. } => format!("GET `{path}`"),
        Probe::Tcp => "TCP connect".into(),
        Probe::Command(words) => format!("`{}`", words.join(" ")),
        Probe::Running => "keeps running".into(),
    }
}

fn source(source: &BackupSource) -> String {
    match source {
        BackupSource::Sqlite { path, .. } => format!("SQLite `{path}`"),
        BackupSource::Postgres(db) => format!("PostgreSQL `{}`", db.database),
        BackupSource::Mysql(db) => format!("MySQL `{}`", db.database),
        BackupSource::Volume { volume, .. } => format!("volume `{volume}`"),
        BackupSource::Directory { path } => format!("directory `{}`", path.display()),
        _ => "a dump command".into(),
    }
}

fn volume_users(manifest: &Manifest) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
    {
        for mount in &service.volumes {
            if let VolumeSource::Named(name) = &mount.source {
                users
                    .entry(name.clone())
                    .or_default()
                    .push(format!("{} at `{}`", service.name, mount.target));
            }
        }
    }
    users
}
