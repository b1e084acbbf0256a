//! What each command does.

mod alerts;
mod attach;
mod contexts;
mod fit;
mod local_build;
mod ops;
mod server;
mod tokens;
mod users;

use crate::client::{Client, ClientError, Target};
use crate::output::{self, Mode, OperationView};
use crate::{
    AgentCommand, AlertsCommand, AppArgs, BackupCommand, CertsCommand, CiAccess, CiCommand,
    CiProvider, Cli, Command, EdgeArgs, ImportCommand, MaintenanceCommand, ManifestArgs,
    SecretsCommand, ServerCommand,
};
use anyhow::{Context, anyhow};
use berth_api::*;
use berth_manifest::{ImageSource, Manifest, ManifestSource};
use console::style;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Marks an error as the user's input being wrong: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub message: String,
    pub hint: Option<String>,
}

fn invalid(message: impl Into<String>, hint: Option<&str>) -> anyhow::Error {
    anyhow::Error::new(Invalid {
        message: message.into(),
        hint: hint.map(str::to_owned),
    })
}

/// An operation the CLI refused before starting it, for a reason of the server's (a release
/// that does not fit): exit code 1, with a hint.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub message: String,
    pub hint: String,
}

/// A contexts file berth cannot use, with what to do about it.
fn contexts_error(error: &berth_ops::contexts::ContextError) -> anyhow::Error {
    use berth_ops::contexts::ContextError;
    let hint = match error {
        ContextError::Exposed { path } => format!("make it yours alone: chmod 600 {path}"),
        ContextError::Parse { path, .. } => {
            format!("fix it, or move it away (mv {path} {path}.broken) and add the contexts again")
        }
        _ => "`berth context list` shows the contexts".to_owned(),
    };
    invalid(error.to_string(), Some(&hint))
}

/// Prints an error the way the user needs it and picks the exit code.
pub fn report(error: &anyhow::Error, json: bool) -> ExitCode {
    let cause = error.downcast_ref::<ClientError>().and_then(|e| match e {
        ClientError::Api { error, .. } => error.cause.clone(),
        _ => None,
    });
    // The same kinds the agent's errors carry, for scripts: a request berth refused before
    // asking the agent is `invalid` too.
    let kind = match error.downcast_ref::<ClientError>() {
        Some(ClientError::Api { error, .. }) => error.kind,
        _ if error.downcast_ref::<Invalid>().is_some()
            || error
                .downcast_ref::<berth_manifest::ManifestError>()
                .is_some() =>
        {
            ErrorKind::Invalid
        }
        _ => ErrorKind::Failed,
    };
    let (code, message, hint, details) = if let Some(e) = error.downcast_ref::<Invalid>() {
        (2, e.message.clone(), e.hint.clone(), Vec::new())
    } else if let Some(e) = error.downcast_ref::<Refused>() {
        (1, e.message.clone(), Some(e.hint.clone()), Vec::new())
    } else if let Some(e) = error.downcast_ref::<ClientError>() {
        let code = match e {
            ClientError::Api { error, .. } if error.kind.is_request_error() => 2,
            _ => 1,
        };
        let details = match e {
            ClientError::Api { error, .. } => error.details.clone(),
            _ => Vec::new(),
        };
        (code, e.to_string(), e.hint(), details)
    } else if let Some(e) = error.downcast_ref::<berth_manifest::ManifestError>() {
        (2, String::new(), None, vec![e.to_string()])
    } else {
        (1, format!("{error:#}"), None, Vec::new())
    };
    if json {
        let body = serde_json::json!({ "ok": false, "error": { "message": message, "hint": hint, "details": details, "cause": cause, "kind": kind } });
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        if !message.is_empty() {
            eprintln!("{} {message}", style("error:").red().bold());
        }
        for detail in &details {
            eprint!("{detail}");
            if !detail.ends_with('\n') {
                eprintln!();
            }
        }
        if let Some(hint) = hint {
            for line in hint.lines() {
                eprintln!("  {} {line}", style("→").yellow());
            }
        }
    }
    ExitCode::from(code)
}

pub fn default_data_dir() -> PathBuf {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        return PathBuf::from("/var/lib/berth");
    }
    match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(data) => PathBuf::from(data).join("berth"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".local/share/berth"),
    }
}

struct Ctx {
    agent: Option<String>,
    /// The selected remote context's token and fingerprint (BERTH_TOKEN and
    /// BERTH_AGENT_FINGERPRINT win over them).
    context_token: Option<String>,
    context_fingerprint: Option<String>,
    data_dir: PathBuf,
    /// The data directory came from the defaults, not --data-dir or BERTH_DATA_DIR.
    default_data_dir: bool,
    mode: Mode,
    json: bool,
}

impl Ctx {
    fn target(&self) -> anyhow::Result<Target> {
        match &self.agent {
            Some(text) => Target::parse(text).map_err(|e| invalid(e, None)),
            None => {
                let own = berth_agent::AgentConfig::socket_path(&self.data_dir);
                // The socket `berth server bootstrap` opens for the `berth` group: a deploy user
                // on the server (`ssh … berth dial-stdio`) has no socket of its own.
                let shared = Path::new(berth_ops::bootstrap::SHARED_SOCKET);
                Ok(Target::Unix(
                    if self.default_data_dir && !own.exists() && shared.exists() {
                        shared.to_path_buf()
                    } else {
                        own
                    },
                ))
            }
        }
    }

    fn client(&self) -> anyhow::Result<Client> {
        let token = std::env::var("BERTH_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| self.context_token.clone())
            .or_else(|| {
                std::fs::read_to_string(self.data_dir.join("api-token"))
                    .ok()
                    .map(|t| t.trim().to_owned())
            });
        let fingerprint = std::env::var("BERTH_AGENT_FINGERPRINT")
            .ok()
            .filter(|f| !f.is_empty())
            .or_else(|| self.context_fingerprint.clone());
        Ok(Client::new(self.target()?, token, fingerprint))
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut ctx = Ctx {
        agent: cli.agent.clone(),
        context_token: None,
        context_fingerprint: None,
        data_dir: cli.data_dir.clone().unwrap_or_else(default_data_dir),
        default_data_dir: cli.data_dir.is_none(),
        mode: Mode::detect(cli.json),
        json: cli.json,
    };
    // --agent (or BERTH_AGENT) wins; else the named or current context; else the local agent.
    // Neither needs an agent, so a broken contexts file does not stop them.
    let manages_contexts = matches!(
        cli.command,
        Command::Context { .. } | Command::Server { .. }
    );
    if ctx.agent.is_none() && !manages_contexts {
        let contexts = berth_ops::contexts::Contexts::load(&berth_ops::contexts::config_dir())
            .map_err(|e| {
                invalid(
                    e.to_string(),
                    Some("fix or remove the file (`berth context list` reads it)"),
                )
            })?;
        if let Some((_, context)) = contexts.selected(cli.context.as_deref()).map_err(|e| {
            invalid(
                e.to_string(),
                Some("`berth context list` shows them; `berth context add NAME AGENT` adds one"),
            )
        })? {
            ctx.agent = Some(context.agent.clone());
            ctx.context_token = context.token.clone();
            ctx.context_fingerprint = context.fingerprint.clone();
        }
    }
    match cli.command {
        Command::Context { action } => contexts::context(&ctx, action).await,
        Command::Tokens { action } => tokens::tokens(&ctx, action).await,
        Command::Users { action } => users::users(&ctx, action).await,
        Command::Server {
            action: ServerCommand::Bootstrap(args),
        } => server::bootstrap(&ctx, args).await,
        Command::Check { manifest } => check(&ctx, &manifest),
        Command::Init { file, app, force } => ops::init(&ctx, &file, app, force),
        Command::Ci {
            action:
                CiCommand::Init {
                    provider,
                    access,
                    test_command,
                    branch,
                    environment,
                    force,
                },
        } => ops::ci_init(
            &ctx,
            berth_ops::ci::Workflow {
                provider: match provider {
                    CiProvider::Github => berth_ops::ci::Provider::GitHub,
                    CiProvider::Gitlab => berth_ops::ci::Provider::GitLab,
                },
                access: match access {
                    CiAccess::Token => berth_ops::ci::Access::Token,
                    CiAccess::Ssh => berth_ops::ci::Access::Ssh,
                },
                test_command: test_command.clone().unwrap_or_default(),
                test_from: if test_command.is_some() {
                    "given with --test-command".into()
                } else {
                    String::new()
                },
                branch,
                environment,
                test_image: String::new(),
            },
            force,
        ),
        Command::Import {
            what:
                ImportCommand::Compose {
                    file,
                    output,
                    app,
                    profile,
                    force,
                },
        } => ops::import_compose(
            &ctx,
            ops::ComposeImport {
                file,
                output,
                app,
                profiles: profile,
                force,
            },
        ),
        Command::Agent {
            action: Some(AgentCommand::Upgrade { binary }),
            ..
        } => {
            operation(
                &ctx,
                "/v1/agent/upgrade",
                &berth_api::UpgradeRequest { binary },
                "upgrading the agent",
            )
            .await
        }
        Command::Agent {
            action: Some(AgentCommand::Stop),
            ..
        } => stop_agent(&ctx).await,
        Command::Agent {
            action: None,
            api,
            api_group,
            http,
            edge,
            log_json,
        } => agent(&ctx, api, api_group, http, edge, log_json).await,
        Command::Maintenance { action } => maintenance(&ctx, action).await,
        Command::Certs { action } => certs(&ctx, action.unwrap_or(CertsCommand::List)).await,
        Command::Up {
            manifest,
            http,
            version,
            load,
        } => up(&ctx, &manifest, &http, version, &load).await,
        Command::Deploy {
            manifest,
            version,
            wait,
            wait_drain,
            load,
            build,
            force,
        } => {
            let build_here = build == crate::BuildPlace::Local;
            deploy(
                &ctx,
                &manifest,
                version,
                (wait, wait_drain),
                (&load, build_here),
                force,
            )
            .await
        }
        Command::Plan { manifest } => fit::plan(&ctx, &manifest).await,
        Command::Runbook { manifest } => ops::runbook(&ctx, &manifest).await,
        Command::Rollback {
            release,
            app,
            wait,
            wait_drain,
            yes,
        } => {
            let app = resolve_app(&app)?;
            // The release confirmed is the one asked for, even if a deploy lands meanwhile.
            let release = Some(confirm_rollback(&ctx, &app, release, yes).await?);
            let request = RollbackRequest {
                release,
                wait_for_lock: wait,
                wait_drain,
            };
            operation(
                &ctx,
                &format!("/v1/apps/{app}/rollback"),
                &request,
                &format!("rolling back {app}"),
            )
            .await
        }
        Command::Restart { service, app, wait } => {
            let app = resolve_app(&app)?;
            let request = RestartRequest {
                wait_for_lock: wait,
            };
            operation(
                &ctx,
                &format!("/v1/apps/{app}/services/{service}/restart"),
                &request,
                &format!("restarting {service} of {app}"),
            )
            .await
        }
        Command::Releases { app, limit } => releases(&ctx, &resolve_app(&app)?, limit).await,
        Command::Status { workers: true, .. } => workers(&ctx).await,
        Command::Status { app, .. } => status(&ctx, app).await,
        Command::Logs {
            service,
            app,
            follow,
            lines,
            since,
            until,
            release,
            grep,
            level,
        } => {
            let filters = LogFilters {
                since,
                until,
                release,
                grep,
                level,
            };
            logs(&ctx, &resolve_app(&app)?, &service, follow, lines, filters).await
        }
        Command::Exec {
            service,
            app,
            command,
            interactive,
            tty,
        } if interactive || tty => {
            attach::exec_attached(&ctx, &resolve_app(&app)?, &service, command, tty).await
        }
        Command::Exec {
            service,
            app,
            command,
            ..
        } => exec(&ctx, &resolve_app(&app)?, &service, command).await,
        Command::Secrets { action } => secrets(&ctx, action).await,
        Command::Audit { limit, app } => audit(&ctx, limit, app).await,
        Command::Top {
            app,
            history: Some(window),
        } => alerts::top_history(&ctx, app, &window).await,
        Command::Top { app, history: None } => alerts::top(&ctx, app).await,
        Command::Uptime { app } => alerts::uptime(&ctx, app).await,
        Command::Alerts {
            action: None,
            app,
            limit,
        } => alerts::list(&ctx, app, limit).await,
        Command::Alerts {
            action: Some(AlertsCommand::Test { channel, app }),
            ..
        } => alerts::test(&ctx, &resolve_app(&app)?, &channel).await,
        Command::Alerts {
            action:
                Some(AlertsCommand::Mute {
                    duration,
                    app,
                    rule,
                    subject,
                }),
            ..
        } => alerts::mute(&ctx, &duration, app, rule, subject).await,
        Command::Alerts {
            action: Some(AlertsCommand::Unmute { id }),
            ..
        } => alerts::unmute(&ctx, id).await,
        Command::Backup { action } => backup(&ctx, action).await,
        Command::Restore {
            name,
            app,
            id,
            at,
            to,
            force,
            from,
            identity,
            keep_setuid,
            allow_untrusted,
        } => {
            let (app, manifest) = backup_target(&app)?;
            let identity = read_identity(identity.as_deref())?;
            let to = match to {
                Some(path) => Some(
                    std::path::absolute(&path)
                        .with_context(|| format!("cannot resolve {}", path.display()))?
                        .display()
                        .to_string(),
                ),
                None => None,
            };
            let request = RestoreRequest {
                manifest,
                name: name.clone(),
                id,
                at,
                to,
                force,
                from,
                identity,
                keep_setuid,
                allow_untrusted,
            };
            operation(
                &ctx,
                &format!("/v1/apps/{app}/restore"),
                &request,
                &format!("restoring {name} of {app}"),
            )
            .await
        }
        Command::Version => version(&ctx).await,
        Command::Apps => apps(&ctx).await,
        Command::Stop { name, app_args } => lifecycle(&ctx, name, &app_args, "stop").await,
        Command::Start { name, app_args } => lifecycle(&ctx, name, &app_args, "start").await,
        Command::Destroy {
            name,
            app_args,
            volumes,
            secrets,
            backup,
            no_backup,
            yes,
        } => {
            let request = DestroyRequest {
                volumes,
                secrets,
                final_backup: backup,
                wait_for_lock: false,
            };
            destroy(&ctx, name, &app_args, request, no_backup, yes).await
        }
        Command::Completions { shell } => {
            let mut command = <crate::Cli as clap::CommandFactory>::command();
            // Into memory first: a closed pipe (`| head`) is then an ordinary write error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "berth", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
                Err(e) => Err(anyhow!("cannot write the completion script: {e}")),
            }
        }
        Command::Man { dir } => {
            let pages = write_man_pages(&dir)?;
            if ctx.json {
                println!("{}", serde_json::json!({ "dir": dir, "pages": pages }));
            } else {
                println!(
                    "{} {pages} man pages in {}: try `man -l {}`",
                    style("✓").green(),
                    dir.display(),
                    dir.join("berth.1").display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DialStdio => {
            crate::client::dial_stdio(&ctx.target()?)
                .await
                .context("cannot connect to the local agent")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `berth stop` and `berth start`.
async fn lifecycle(
    ctx: &Ctx,
    app: Option<String>,
    args: &AppArgs,
    operation: &str,
) -> anyhow::Result<ExitCode> {
    let app = named_app(app, args)?;
    let request = RestartRequest {
        wait_for_lock: false,
    };
    let (verb, gerund) = match operation {
        "stop" => ("stop", "stopping"),
        _ => ("start", "starting"),
    };
    self::operation(
        ctx,
        &format!("/v1/apps/{app}/{verb}"),
        &request,
        &format!("{gerund} {app}"),
    )
    .await
}

/// A rollback brings the old release's whole manifest back, not only its code: when that
/// changes anything, say what, and ask (in a terminal) or want `--yes`.
async fn confirm_rollback(
    ctx: &Ctx,
    app: &str,
    release: Option<i64>,
    yes: bool,
) -> anyhow::Result<i64> {
    let query = release.map(|r| format!("?release={r}")).unwrap_or_default();
    let plan: RollbackPlan = ctx
        .client()?
        .get(&format!("/v1/apps/{app}/rollback/plan{query}"))
        .await?;
    if plan.changes.is_empty() {
        return Ok(plan.to);
    }
    if ctx.mode != Mode::Json {
        eprintln!(
            "Rolling back {app} from release {} ({}) to release {} ({}) also brings back its configuration:",
            plan.from, plan.from_version, plan.to, plan.to_version
        );
        for change in &plan.changes {
            eprintln!("  {change}");
        }
    }
    if yes {
        return Ok(plan.to);
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("Roll back anyway? [y/N] ");
        if matches!(read_answer()?.as_str(), "y" | "Y" | "yes") {
            return Ok(plan.to);
        }
        return Err(invalid("nothing was rolled back", None));
    }
    Err(invalid(
        format!(
            "rolling back {app} to release {} also changes its configuration ({})",
            plan.to,
            plan.changes.join("; ")
        ),
        Some("run again with --yes to roll back anyway, or deploy the configuration you want"),
    ))
}

/// The app a command names by position, by `--app`, or by ./berth.toml.
fn named_app(app: Option<String>, args: &AppArgs) -> anyhow::Result<String> {
    match (app, &args.app) {
        (Some(named), Some(flag)) if &named != flag => Err(invalid(
            format!("two apps named: {named} and --app {flag}"),
            Some("name the app once"),
        )),
        (Some(named), _) => Ok(named),
        (None, _) => resolve_app(args),
    }
}

/// `berth destroy`: says what goes and what stays, offers a final backup, and asks for the
/// app's name to be typed (or `--yes`).
async fn destroy(
    ctx: &Ctx,
    app: Option<String>,
    args: &AppArgs,
    mut request: DestroyRequest,
    no_backup: bool,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let app = named_app(app, args)?;
    let client = ctx.client()?;
    let status: Status = client.get(&format!("/v1/status?app={app}")).await?;
    let Some(found) = status.apps.iter().find(|a| a.name == app) else {
        return Err(invalid(
            format!("no app named {app} has been deployed to this agent"),
            Some("`berth apps` lists the apps"),
        ));
    };
    if !yes {
        let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !interactive {
            return Err(invalid(
                format!(
                    "destroying {app} removes its containers, routes and releases, and asks for confirmation"
                ),
                Some("run again with --yes (add --volumes, --secrets or --backup as needed)"),
            ));
        }
        let mut plan = format!(
            "This removes {app} from this server: its containers, network and routes{}, its release images, and berth's record of its releases.\n",
            if found.urls.is_empty() {
                String::new()
            } else {
                format!(" ({} stops answering)", found.urls.join(", "))
            }
        );
        let volumes = if request.volumes {
            "its named volumes are REMOVED, with their data"
        } else {
            "its named volumes are kept (--volumes removes them)"
        };
        let secrets = if request.secrets {
            "its secrets are removed"
        } else {
            "its secrets are kept (--secrets removes them)"
        };
        plan.push_str(&format!(
            "  - {volumes}\n  - {secrets}\n  - its backups and the audit log are kept\n"
        ));
        eprint!("{plan}");
        let backups: Vec<&str> = found.backups.iter().map(|b| b.name.as_str()).collect();
        if !request.final_backup && !no_backup && !backups.is_empty() {
            eprint!(
                "Take a final backup first ({})? Nothing is destroyed if it fails. [Y/n] ",
                backups.join(", ")
            );
            let answer = read_answer()?;
            request.final_backup = !matches!(answer.as_str(), "n" | "N" | "no");
        }
        eprint!("Type the app's name ({app}) to destroy it: ");
        if read_answer()? != app {
            return Err(invalid("nothing was destroyed", None));
        }
    }
    operation(
        ctx,
        &format!("/v1/apps/{app}/destroy"),
        &request,
        &format!("destroying {app}"),
    )
    .await
}

fn read_answer() -> anyhow::Result<String> {
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim().to_owned())
}

/// `berth status --workers`: the agent's background work, one line each.
async fn workers(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let workers: Vec<WorkerInfo> = ctx.client()?.get("/v1/workers").await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&workers)?);
        return Ok(ExitCode::SUCCESS);
    }
    let when = |at: Option<i64>| at.map(output::time).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.state.clone(),
                w.detail.clone().unwrap_or_default(),
                when(w.last_run),
                when(w.next_run),
                w.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "WORKER",
                "STATE",
                "DOING",
                "LAST RUN",
                "NEXT RUN",
                "LAST ERROR"
            ],
            &rows
        )
    );
    // Work that keeps failing is worth an exit code, as in `berth status`.
    Ok(if workers.iter().any(|w| w.state == "retrying") {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `berth apps`: one line per app.
async fn apps(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let status: Status = ctx.client()?.get("/v1/status").await?;
    if ctx.json {
        let apps: Vec<serde_json::Value> = status
            .apps
            .iter()
            .map(|app| {
                serde_json::json!({
                    "app": app.name,
                    "release": app.live_release.as_ref().map(|r| r.number),
                    "version": app.live_release.as_ref().map(|r| &r.version),
                    "state": app_state(app),
                    "urls": app.urls,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&apps)?);
        return Ok(ExitCode::SUCCESS);
    }
    if status.apps.is_empty() {
        println!("no apps yet: run `berth deploy` in an app's directory");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = status
        .apps
        .iter()
        .map(|app| {
            let running: usize = app
                .services
                .iter()
                .map(|s| s.replicas.iter().filter(|r| r.state == "running").count())
                .sum();
            let desired: u32 = app.services.iter().map(|s| s.desired_replicas).sum();
            vec![
                app.name.clone(),
                app.live_release
                    .as_ref()
                    .map(|r| format!("{} ({})", r.number, r.version))
                    .unwrap_or_else(|| "-".into()),
                app_state(app),
                format!("{running}/{desired}"),
                app.urls.first().cloned().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["APP", "RELEASE", "STATE", "RUNNING", "URL"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

/// An app's state in a word or two: what is going on, or the problem to look at first.
fn app_state(app: &AppStatus) -> String {
    if let Some(operation) = &app.operation {
        return format!("{}…", operation.operation);
    }
    if app.stopped {
        return "stopped".into();
    }
    if app.maintenance.is_some() {
        return "maintenance".into();
    }
    if app.live_release.is_none() {
        return "not deployed".into();
    }
    let unhealthy = app
        .services
        .iter()
        .any(|s| s.healthy_replicas() < s.desired_replicas as usize);
    match (unhealthy, &app.last_failed) {
        (true, _) => "unhealthy".into(),
        (false, Some(failed)) => format!("live (release {} failed)", failed.number),
        (false, None) if !app.draining.is_empty() => "live (draining)".into(),
        (false, None) => "live".into(),
    }
}

/// `berth version`: the CLI's, and the agent's if one answers (a mismatch is worth knowing).
async fn version(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let cli = env!("CARGO_PKG_VERSION");
    let agent = match ctx.client() {
        Ok(client) => client.get::<AgentInfo>("/v1/info").await.ok(),
        Err(_) => None,
    };
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "cli": cli,
                "agent": agent.as_ref().map(|a| &a.version),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("berth {cli}");
    match agent {
        Some(agent) => println!(
            "agent {} (pid {}, {})",
            agent.version, agent.pid, agent.data_dir
        ),
        None => println!("agent: none answers at {}", ctx.target()?),
    }
    Ok(ExitCode::SUCCESS)
}

// ---- manifests ------------------------------------------------------------------------

struct LoadedManifest {
    manifest: Manifest,
    text: String,
    path: PathBuf,
    base_dir: PathBuf,
}

/// The text of an age identity file given with `--identity`.
fn read_identity(path: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else {
        return Ok(None);
    };
    std::fs::read_to_string(path).map(Some).map_err(|e| {
        invalid(
            format!("cannot read the identity file {}: {e}", path.display()),
            Some("give the file age-keygen wrote (AGE-SECRET-KEY-1…), or a server's backup.key"),
        )
    })
}

fn read_manifest(args: &ManifestArgs) -> anyhow::Result<(String, PathBuf)> {
    let bytes = std::fs::read(&args.file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            invalid(
                format!("there is no manifest at {}", args.file.display()),
                Some("run in the directory holding berth.toml, or name it with --file FILE"),
            )
        } else {
            anyhow!("cannot read {}: {e}", args.file.display())
        }
    })?;
    // Not UTF-8 is an invalid manifest like any other (exit 2), not a failure to read it.
    let text = String::from_utf8(bytes).map_err(|e| {
        invalid(
            format!(
                "{} is not UTF-8 text (byte {} is not valid)",
                args.file.display(),
                e.utf8_error().valid_up_to()
            ),
            Some("save the manifest as UTF-8"),
        )
    })?;
    let base_dir = std::path::absolute(
        args.file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
    .with_context(|| format!("cannot resolve the directory of {}", args.file.display()))?;
    Ok((text, base_dir))
}

fn load_manifest(args: &ManifestArgs) -> anyhow::Result<LoadedManifest> {
    let (text, base_dir) = read_manifest(args)?;
    let file = args.file.display().to_string();
    let source = ManifestSource {
        file: &file,
        text: &text,
        base_dir: &base_dir,
    };
    let manifest = berth_manifest::load(source, args.environment.as_deref())?;
    Ok(LoadedManifest {
        manifest,
        text,
        path: args.file.clone(),
        base_dir,
    })
}

fn resolve_app(args: &AppArgs) -> anyhow::Result<String> {
    if let Some(app) = &args.app {
        return Ok(app.clone());
    }
    if args.file.exists() {
        let manifest = ManifestArgs {
            file: args.file.clone(),
            environment: args.environment.clone(),
        };
        return Ok(load_manifest(&manifest)?.manifest.app);
    }
    Err(invalid(
        "which app? No --app was given and there is no berth.toml here",
        Some(
            "pass --app APP, or run in the directory of the app's berth.toml (or name it with --file FILE)",
        ),
    ))
}

fn check(ctx: &Ctx, args: &ManifestArgs) -> anyhow::Result<ExitCode> {
    let (text, base_dir) = read_manifest(args)?;
    let file = args.file.display().to_string();
    let source = ManifestSource {
        file: &file,
        text: &text,
        base_dir: &base_dir,
    };
    let result = match &args.environment {
        Some(env) => berth_manifest::load(source, Some(env)).map(|m| vec![m]),
        None => berth_manifest::check_all(source),
    };
    match result {
        Ok(manifests) => {
            if ctx.json {
                let apps: Vec<_> = manifests
                    .iter()
                    .map(|m| serde_json::json!({ "app": m.app, "environment": m.environment, "services": m.services.keys().collect::<Vec<_>>(), "accessories": m.accessories.keys().collect::<Vec<_>>(), "warnings": berth_manifest::risks(m) }))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "valid": true, "file": file, "apps": apps })
                    )?
                );
                return Ok(ExitCode::SUCCESS);
            }
            for manifest in &manifests {
                let env = manifest
                    .environment
                    .as_ref()
                    .map(|e| format!(" (environment {e})"))
                    .unwrap_or_default();
                println!(
                    "{} {file}{env}: app {}",
                    style("✓").green(),
                    style(&manifest.app).bold()
                );
                for service in manifest
                    .services
                    .values()
                    .chain(manifest.accessories.values())
                {
                    let replicas = if service.replicas > 1 {
                        format!(", {} replicas", service.replicas)
                    } else {
                        String::new()
                    };
                    let route = service
                        .route
                        .as_ref()
                        .map(|r| {
                            let hosts = if r.domains.is_empty() {
                                "any host".to_owned()
                            } else {
                                r.domains.join(", ")
                            };
                            format!(
                                ", routed from {hosts}{}",
                                if r.path == "/" {
                                    String::new()
                                } else {
                                    format!(" at {}", r.path)
                                }
                            )
                        })
                        .unwrap_or_default();
                    println!(
                        "    {} ({}{replicas}{route})",
                        service.name,
                        service.role().as_str()
                    );
                }
                for risk in berth_manifest::risks(manifest) {
                    eprintln!(
                        "  {} {}: {}\n    {} {}",
                        style("warning:").yellow(),
                        risk.service,
                        risk.message,
                        style("help:").dim(),
                        risk.help
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            if ctx.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "valid": false, "file": file, "errors": error.located() })
                    )?
                );
            } else {
                eprint!("{error}");
                let count = error.diagnostics().len();
                eprintln!(
                    "{} {file} has {count} {}",
                    style("✗").red(),
                    if count == 1 { "problem" } else { "problems" }
                );
            }
            Ok(ExitCode::from(2))
        }
    }
}

// ---- the agent ------------------------------------------------------------------------

async fn agent(
    ctx: &Ctx,
    api: Vec<String>,
    api_group: Option<String>,
    http: Option<String>,
    edge: Box<EdgeArgs>,
    log_json: bool,
) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        // Colours only for a person at a terminal, never into a log file or journald.
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
    let api = api
        .iter()
        .map(|a| {
            a.parse::<berth_agent::ListenAddr>()
                .map_err(|e| invalid(e, None))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let root = default_data_dir() == Path::new("/var/lib/berth");
    let http = match http.as_deref() {
        Some("off") => None,
        Some(text) => Some(
            text.parse()
                .map_err(|_| invalid(format!("`{text}` is not HOST:PORT (or `off`)"), None))?,
        ),
        None if root => Some("0.0.0.0:80".parse()?),
        None => Some("127.0.0.1:8080".parse()?),
    };
    let address = |flag: &str, text: &str| -> anyhow::Result<std::net::SocketAddr> {
        text.parse().map_err(|_| {
            invalid(
                format!("--{flag} `{text}` is not HOST:PORT (or `off`)"),
                None,
            )
        })
    };
    let https = match edge.https.as_deref() {
        Some("off") => None,
        Some(text) => Some(address("https", text)?),
        // An operator who gave a loopback HTTP address asked for nothing public: no HTTPS
        // listener on every interface behind their back.
        None if http.is_some_and(|addr: std::net::SocketAddr| addr.ip().is_loopback()) => None,
        None if root => Some("0.0.0.0:443".parse()?),
        None => None,
    };
    let duration = |flag: &str, text: &str| {
        berth_manifest::units::parse_duration(text).map_err(|e| {
            invalid(
                format!("--{flag} `{text}`: {e}"),
                Some("durations look like 30s, 12h or 30d"),
            )
        })
    };
    let acme = match edge.acme_directory.as_str() {
        "off" => None,
        directory => Some(berth_tls::AcmeConfig {
            directory: match directory {
                "letsencrypt" => berth_tls::LETS_ENCRYPT.to_owned(),
                "letsencrypt-staging" => berth_tls::LETS_ENCRYPT_STAGING.to_owned(),
                url if url.starts_with("https://") => url.to_owned(),
                other => {
                    return Err(invalid(
                        format!(
                            "--acme-directory `{other}` is not letsencrypt, letsencrypt-staging, off or an https:// URL"
                        ),
                        None,
                    ));
                }
            },
            contact: edge.acme_email.clone(),
            directory_root: edge.acme_ca_root.clone(),
            challenge: match edge.acme_challenge.as_str() {
                "http-01" => berth_tls::Challenge::Http01,
                "tls-alpn-01" => berth_tls::Challenge::TlsAlpn01,
                other => {
                    return Err(invalid(
                        format!("--acme-challenge `{other}` is not http-01 or tls-alpn-01"),
                        None,
                    ));
                }
            },
            renew_before: duration("acme-renew-before", &edge.acme_renew_before)?,
            check_interval: Duration::from_secs(3600),
        }),
    };
    let metrics = match edge.metrics.as_deref() {
        None | Some("off") => None,
        Some(text) => Some(address("metrics", text)?),
    };
    let dashboard_domain = match edge.dashboard_domain.as_deref() {
        None => None,
        Some(domain) => Some(berth_manifest::check_domain(domain).map_err(|help| {
            invalid(
                format!("--dashboard-domain `{domain}` is not a domain"),
                Some(&help),
            )
        })?),
    };
    let dashboard = match edge.dashboard.as_deref() {
        Some("off") => None,
        Some(text) => Some(berth_agent::DashboardListen {
            addr: address("dashboard", text)?,
            domain: dashboard_domain.clone(),
            lockout_after: edge.console_lockout_after,
            lockout_for: duration("console-lockout-for", &edge.console_lockout_for)?,
            password_classes: edge.console_password_classes,
            login_rate_per_minute: edge.console_login_rate.max(1),
            required: true,
        }),
        None => Some(berth_agent::DashboardListen {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9000)),
            domain: dashboard_domain,
            lockout_after: edge.console_lockout_after,
            lockout_for: duration("console-lockout-for", &edge.console_lockout_for)?,
            password_classes: edge.console_password_classes,
            login_rate_per_minute: edge.console_login_rate.max(1),
            required: false,
        }),
    };
    let access_log = match edge.access_log.as_deref() {
        Some("off") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(ctx.data_dir.join("logs").join("access.log")),
    };
    let header_read_timeout = duration("header-timeout", &edge.header_timeout)?;
    let proxy = berth_agent::ProxyConfig {
        max_connections: edge.max_connections.max(1),
        max_connections_per_client: edge.max_connections_per_client.max(1),
        header_read_timeout,
        first_byte_timeout: header_read_timeout.min(Duration::from_secs(10)),
        idle_timeout: duration("idle-timeout", &edge.idle_timeout)?,
        max_header_size: berth_manifest::units::parse_size(&edge.max_header_size)
            .ok()
            .and_then(|size| usize::try_from(size).ok())
            .filter(|size| (8 << 10..=1 << 20).contains(size))
            .ok_or_else(|| {
                invalid(
                    format!(
                        "--max-header-size `{}` is not a size from 8KiB to 1MiB",
                        edge.max_header_size
                    ),
                    Some("sizes look like 16KiB or 64k"),
                )
            })?,
        ..berth_agent::ProxyConfig::default()
    };
    let config = berth_agent::AgentConfig {
        data_dir: ctx.data_dir.clone(),
        api,
        api_group,
        http,
        https,
        acme,
        metrics,
        dashboard,
        access_log,
        proxy,
        proxy_threads: match edge.proxy_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        },
        shutdown_grace: Duration::from_secs(10),
        app_subnets: edge
            .app_subnets
            .parse()
            .map_err(|e: String| invalid(format!("--app-subnets: {e}"), None))?,
        upload_quota: berth_manifest::units::parse_size(&edge.upload_quota).map_err(|_| {
            invalid(
                format!("--upload-quota `{}` is not a size", edge.upload_quota),
                Some("sizes look like 4GiB or 500m"),
            )
        })?,
    };
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    berth_agent::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `berth agent stop`.
async fn stop_agent(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let answer: berth_api::StopAnswer = client
        .request(http::Method::POST, "/v1/agent/stop", &serde_json::json!({}))
        .await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "the agent (pid {}) on {} stops: open requests have {} s to finish; the apps' containers keep running",
            answer.pid, client.target, answer.grace_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes sure an agent answers at the default address, starting one in the background.
async fn ensure_agent(ctx: &Ctx, http: &str) -> anyhow::Result<Client> {
    let client = ctx.client()?;
    if client.get::<AgentInfo>("/v1/info").await.is_ok() {
        return Ok(client);
    }
    if ctx.agent.is_some() {
        // An explicitly named agent is not ours to start.
        client.get::<AgentInfo>("/v1/info").await?;
    }
    // The agent's own directory: private (it holds the state, keys and logs).
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ctx.data_dir)
            .with_context(|| format!("cannot create {}", ctx.data_dir.display()))?;
    }
    let log_path = ctx.data_dir.join("agent.log");
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&log_path)
    }
    .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the berth executable")?;
    let mut child = std::process::Command::new(exe);
    child
        .arg("agent")
        .arg("--data-dir")
        .arg(&ctx.data_dir)
        .arg("--http")
        .arg(http)
        // A local quickstart: localhost names cannot get public certificates.
        .arg("--https")
        .arg("off")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: it outlives this command and a Ctrl-C in this terminal.
    std::os::unix::process::CommandExt::process_group(&mut child, 0);
    let mut child = child.spawn().context("cannot start the agent")?;
    if ctx.mode != Mode::Json {
        eprintln!(
            "started an agent in the background (pid {}, data in {}, log in {})",
            child.id(),
            ctx.data_dir.display(),
            log_path.display()
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if client.get::<AgentInfo>("/v1/info").await.is_ok() {
            return Ok(client);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(anyhow!(
                "the agent exited ({status}) right after starting:\n{}",
                tail.join("\n")
            ));
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow!(
                "the agent did not answer within 20s; see {}",
                log_path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- deploy, rollback, restart --------------------------------------------------------

fn git_version(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).filter(|c| !c.is_empty())?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

async fn deploy(
    ctx: &Ctx,
    args: &ManifestArgs,
    version: Option<String>,
    waits: (bool, bool),
    images: (&[PathBuf], bool),
    force: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = load_manifest(args)?;
    let client = ctx.client()?;
    fit::preflight(ctx, &client, &loaded.manifest, force).await?;
    fit::dns_preflight(ctx, &client, &loaded.manifest).await;
    deploy_with(ctx, &client, loaded, version, waits, images).await
}

async fn up(
    ctx: &Ctx,
    args: &ManifestArgs,
    http: &str,
    version: Option<String>,
    archives: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let loaded = load_manifest(args)?;
    let client = ensure_agent(ctx, http).await?;
    deploy_with(
        ctx,
        &client,
        loaded,
        version,
        (true, false),
        (archives, false),
    )
    .await
}

async fn deploy_with(
    ctx: &Ctx,
    client: &Client,
    loaded: LoadedManifest,
    version: Option<String>,
    (wait, wait_drain): (bool, bool),
    (archives, build_here): (&[PathBuf], bool),
) -> anyhow::Result<ExitCode> {
    let manifest = &loaded.manifest;
    if ctx.mode != Mode::Json {
        eprintln!(
            "deploying {} to {}",
            style(&manifest.app).bold(),
            client.target
        );
    }
    let mut image_archives = Vec::new();
    let mut prebuilt = BTreeMap::new();
    if build_here && let Some(built) = local_build::build(ctx, manifest).await? {
        let upload: Upload = client.upload("/v1/uploads", built.archive.path()).await?;
        if ctx.mode != Mode::Json {
            eprintln!(
                "  {} images built here ({})",
                style("↑").dim(),
                output::bytes(upload.bytes)
            );
        }
        image_archives.push(upload.id);
        prebuilt = built.images;
    }
    // Pack and upload each distinct build context once (unless built here).
    let mut contexts = BTreeMap::new();
    let mut uploaded: Vec<((PathBuf, String), String)> = Vec::new();
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
        .filter(|service| !prebuilt.contains_key(&service.name))
    {
        let ImageSource::Build(spec) = &service.source else {
            continue;
        };
        let key = (spec.context.clone(), spec.dockerfile.clone());
        if let Some((_, id)) = uploaded.iter().find(|(k, _)| *k == key) {
            contexts.insert(service.name.clone(), id.clone());
            continue;
        }
        let archive = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
        let (context_dir, dockerfile, path) = (
            spec.context.clone(),
            spec.dockerfile.clone(),
            archive.path().to_owned(),
        );
        let packed = tokio::task::spawn_blocking(move || {
            crate::context::pack(&context_dir, &dockerfile, &path)
        })
        .await?
        .map_err(|e| {
            invalid(
                format!("service {}: {e}", service.name),
                Some("fix `build` in the manifest, or the directory it names"),
            )
        })?;
        let upload: Upload = client.upload("/v1/uploads", archive.path()).await?;
        if ctx.mode != Mode::Json {
            eprintln!(
                "  {} build context {} ({} files, {})",
                style("↑").dim(),
                spec.context.display(),
                packed.files,
                output::bytes(packed.bytes)
            );
        }
        contexts.insert(service.name.clone(), upload.id.clone());
        uploaded.push((key, upload.id));
    }
    for archive in archives {
        if !archive.is_file() {
            return Err(invalid(
                format!("there is no image archive at {}", archive.display()),
                Some("make one with `docker save IMAGE -o FILE`"),
            ));
        }
        let upload: Upload = client.upload("/v1/uploads", archive).await?;
        if ctx.mode != Mode::Json {
            eprintln!(
                "  {} image archive {} ({})",
                style("↑").dim(),
                archive.display(),
                output::bytes(upload.bytes)
            );
        }
        image_archives.push(upload.id);
    }
    let request = DeployRequest {
        image_archives,
        prebuilt,
        manifest: loaded.text.clone(),
        manifest_path: loaded.path.display().to_string(),
        base_dir: loaded.base_dir.display().to_string(),
        environment: manifest.environment.clone(),
        version: version.or_else(|| git_version(&loaded.base_dir)),
        contexts,
        wait_for_lock: wait,
        wait_drain,
    };
    watch(
        ctx,
        client
            .stream(http::Method::POST, "/v1/deploy", Some(&request))
            .await?,
    )
    .await
}

async fn operation<B: serde::Serialize>(
    ctx: &Ctx,
    path: &str,
    body: &B,
    what: &str,
) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    if ctx.mode != Mode::Json {
        eprintln!("{what} on {}", client.target);
    }
    watch(
        ctx,
        client.stream(http::Method::POST, path, Some(body)).await?,
    )
    .await
}

/// Shows an operation's events until its outcome arrives; the exit code follows it.
async fn watch(ctx: &Ctx, mut lines: crate::client::Lines) -> anyhow::Result<ExitCode> {
    let mut view = OperationView::new(ctx.mode);
    loop {
        let event: Option<OperationEvent> = match lines.next().await {
            Ok(event) => event,
            Err(error) => {
                view.close();
                return Err(error.into());
            }
        };
        let Some(event) = event else {
            view.close();
            return Err(anyhow!(
                "the agent ended the operation without reporting its outcome; `berth status` shows the app's state"
            ));
        };
        view.show(&event);
        if let OperationEvent::Finished(outcome) = event {
            view.close();
            output::outcome(ctx.mode, &outcome);
            return Ok(match &outcome.error {
                None => ExitCode::SUCCESS,
                Some(error) if error.kind.is_request_error() => ExitCode::from(2),
                Some(_) => ExitCode::from(1),
            });
        }
    }
}

// ---- history and state ----------------------------------------------------------------

async fn releases(ctx: &Ctx, app: &str, limit: usize) -> anyhow::Result<ExitCode> {
    let releases: Vec<ReleaseInfo> = ctx
        .client()?
        .get(&format!("/v1/apps/{app}/releases?limit={limit}"))
        .await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&releases)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            let status = match r.status {
                ReleaseState::Live => style("live").green().bold().to_string(),
                ReleaseState::Failed => style("failed").red().to_string(),
                other => other.as_str().to_owned(),
            };
            let kind = match r.rollback_of {
                Some(of) => format!("rollback to {of}"),
                None => r.kind.as_str().to_owned(),
            };
            let error = r
                .error
                .as_deref()
                .map(|e| output::shorten(e.lines().next().unwrap_or(""), 80))
                .unwrap_or_default();
            vec![
                r.number.to_string(),
                r.version.clone(),
                status,
                kind,
                output::time(r.created_at),
                r.actor.clone(),
                error,
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "RELEASE", "VERSION", "STATUS", "KIND", "CREATED", "BY", "ERROR"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(ctx: &Ctx, app: Option<String>) -> anyhow::Result<ExitCode> {
    let path = match &app {
        Some(app) => format!("/v1/status?app={app}"),
        None => "/v1/status".to_owned(),
    };
    let status: Status = ctx.client()?.get(&path).await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let docker = match (&status.agent.docker.version, &status.agent.docker.error) {
        (Some(version), _) => format!("Docker {version}"),
        (None, Some(error)) => style(format!("Docker unreachable: {error}"))
            .red()
            .to_string(),
        (None, None) => "Docker unknown".into(),
    };
    println!(
        "agent {} (pid {}) · {docker} · http {} · https {}",
        status.agent.version,
        status.agent.pid,
        status.agent.http.as_deref().unwrap_or("off"),
        status.agent.https.as_deref().unwrap_or("off")
    );
    if status.apps.is_empty() {
        println!("no apps deployed yet: run `berth deploy` in an app's directory");
    }
    for app in &status.apps {
        println!();
        let live = match &app.live_release {
            Some(r) => format!(
                "release {} ({}) live since {}",
                r.number,
                r.version,
                output::time(r.finished_at.unwrap_or(r.created_at))
            ),
            None => "no live release".into(),
        };
        println!("{} · {live}", style(&app.name).bold());
        if let Some(failed) = &app.last_failed {
            println!(
                "  {} the last deploy failed: release {} ({}) at {}: {}",
                style("✗").red(),
                failed.number,
                failed.version,
                output::time(failed.finished_at.unwrap_or(failed.created_at)),
                style(output::shorten(
                    failed.error.as_deref().unwrap_or("no reason recorded"),
                    200
                ))
                .red()
            );
            println!("    (`berth releases` lists them; the release above keeps serving)");
        }
        if app.stopped {
            println!(
                "  {} stopped: its routes answer 503 until `berth start {}`",
                style("⏸").yellow(),
                app.name
            );
        } else if let Some(message) = &app.maintenance {
            let shown = if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            };
            println!("  {} maintenance mode is on{shown}", style("⚠").yellow());
        }
        for draining in &app.draining {
            println!(
                "  {} release {} drains since {}: {} requests, {} WebSockets or streams open (closed properly at {} if still open)",
                style("⟳").dim(),
                draining.release,
                output::time(draining.since),
                draining.requests,
                draining.long_lived,
                output::time(draining.closes_at)
            );
        }
        if let Some(operation) = &app.operation {
            println!(
                "  {} {} in progress, started by {} at {}",
                style("⟳").yellow(),
                operation.operation,
                operation.holder,
                output::time(operation.since)
            );
        }
        for url in &app.urls {
            println!("  {}", style(url).cyan());
        }
        let mut rows = Vec::new();
        for service in &app.services {
            let healthy = service.healthy_replicas();
            let health = if app.stopped {
                style("stopped").dim().to_string()
            } else if healthy == service.replicas.len() && !service.replicas.is_empty() {
                style("healthy").green().to_string()
            } else {
                let detail = service
                    .replicas
                    .iter()
                    .find_map(|r| r.health_detail.clone())
                    .unwrap_or_else(|| "no containers".into());
                style(format!("unhealthy: {detail}")).red().to_string()
            };
            let uptime = service
                .replicas
                .iter()
                .filter_map(|r| r.uptime_seconds)
                .min()
                .map(output::age)
                .unwrap_or_else(|| "-".into());
            let restarts: i64 = service.replicas.iter().map(|r| r.restarts).sum();
            rows.push(vec![
                format!("  {}", service.name),
                service.role.clone(),
                service
                    .release
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                format!(
                    "{}/{}",
                    service
                        .replicas
                        .iter()
                        .filter(|r| r.state == "running")
                        .count(),
                    service.desired_replicas
                ),
                health,
                uptime,
                restarts.to_string(),
            ]);
        }
        if !rows.is_empty() {
            print!(
                "{}",
                output::table(
                    &[
                        "  SERVICE",
                        "ROLE",
                        "RELEASE",
                        "RUNNING",
                        "HEALTH",
                        "UPTIME",
                        "RESTARTS"
                    ],
                    &rows
                )
            );
        }
        for service in &app.services {
            for line in alerts::replica_health_lines(service) {
                println!("{line}");
            }
        }
        if !app.backups.is_empty() {
            let rows = backup_status_rows(&app.backups);
            print!(
                "{}",
                output::table(
                    &["  BACKUP", "SCHEDULE", "LAST GOOD", "LAST RUN", "NEXT"],
                    &rows
                )
            );
            for backup in &app.backups {
                if let Some(run) = &backup.last_run
                    && !run.status.is_good()
                {
                    println!(
                        "  {} {} {} {}: {}",
                        style("✗").red(),
                        backup.name,
                        run.operation,
                        run.status,
                        run.error.as_deref().unwrap_or("no detail")
                    );
                }
                for copy in &backup.failing_copies {
                    println!(
                        "  {} {} {copy} failed its last verification",
                        style("✗").red(),
                        backup.name
                    );
                }
            }
        }
    }
    if !status.certificates.is_empty() {
        println!();
        print!(
            "{}",
            output::table(
                &["CERTIFICATE", "SOURCE", "STATE", "EXPIRES", "NOTE"],
                &certificate_rows(&status.certificates)
            )
        );
    }
    alerts::print_monitors(&status.monitors);
    alerts::print_firing(&status.firing_alerts, &status.failing_channels);
    // The agent's verdict (the same rule, from an agent too old to send one).
    let problems = if status.problems.is_empty() {
        status.find_problems()
    } else {
        status.problems.clone()
    };
    Ok(if !problems.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `berth logs`' filters of the lines berth kept.
struct LogFilters {
    since: Option<String>,
    until: Option<String>,
    release: Option<i64>,
    grep: Option<String>,
    level: Option<String>,
}

/// `10m` (that long ago) or an RFC 3339 time, as Unix seconds.
fn unix_seconds(flag: &str, text: &str) -> anyhow::Result<u64> {
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Ok(at.as_second().max(0) as u64);
    }
    let ago = berth_manifest::units::parse_duration(text).map_err(|e| {
        invalid(
            format!("{flag} {text}: {e}"),
            Some("a duration ago (10m, 2h, 1d) or a time such as 2026-12-03T14:00:00Z"),
        )
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(now.saturating_sub(ago.as_secs()))
}

fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn logs(
    ctx: &Ctx,
    app: &str,
    service: &str,
    follow: bool,
    lines: Option<usize>,
    filters: LogFilters,
) -> anyhow::Result<ExitCode> {
    let mut query = vec![format!("follow={follow}")];
    if let Some(n) = lines {
        query.push(format!("tail={n}"));
    }
    if let Some(since) = &filters.since {
        query.push(format!("since={}", unix_seconds("--since", since)?));
    }
    if let Some(until) = &filters.until {
        query.push(format!("until={}", unix_seconds("--until", until)?));
    }
    if let Some(release) = filters.release {
        query.push(format!("release={release}"));
    }
    if let Some(grep) = &filters.grep {
        query.push(format!("grep={}", query_value(grep)));
    }
    if let Some(level) = &filters.level {
        query.push(format!("level={}", query_value(level)));
    }
    let path = format!("/v1/apps/{app}/services/{service}/logs?{}", query.join("&"));
    let mut stream = ctx
        .client()?
        .stream::<()>(http::Method::GET, &path, None)
        .await?;
    let colors = [
        console::Color::Cyan,
        console::Color::Magenta,
        console::Color::Yellow,
        console::Color::Blue,
        console::Color::Green,
    ];
    let mut assigned: Vec<String> = Vec::new();
    let stdout = std::io::stdout();
    while let Some(line) = stream.next::<LogLine>().await? {
        let mut out = stdout.lock();
        if ctx.json {
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
            continue;
        }
        let index = match assigned.iter().position(|c| *c == line.container) {
            Some(i) => i,
            None => {
                assigned.push(line.container.clone());
                assigned.len() - 1
            }
        };
        // Kept lines (of containers that may be gone) say when and which release.
        let when = match (line.at, line.release) {
            (Some(at), Some(release)) => format!("{} r{release} ", output::time(at)),
            (Some(at), None) => format!("{} ", output::time(at)),
            _ => String::new(),
        };
        let prefix = style(format!("{when}{} |", line.container)).fg(colors[index % colors.len()]);
        if writeln!(out, "{prefix} {}", line.line).is_err() {
            break; // stdout closed (piped into `head`)
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(
    ctx: &Ctx,
    app: &str,
    service: &str,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let request = ExecRequest { command };
    let mut stream = ctx
        .client()?
        .stream(
            http::Method::POST,
            &format!("/v1/apps/{app}/services/{service}/exec"),
            Some(&request),
        )
        .await?;
    while let Some(event) = stream.next::<ExecEvent>().await? {
        match event {
            ExecEvent::Output { stream, data } => {
                if stream == "stderr" {
                    eprint!("{data}");
                } else {
                    print!("{data}");
                    let _ = std::io::stdout().flush();
                }
            }
            ExecEvent::Exit { code, .. } => {
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
            ExecEvent::Error { message } => return Err(anyhow!(message)),
        }
    }
    Err(anyhow!("the command's output ended without an exit status"))
}

async fn audit(ctx: &Ctx, limit: usize, app: Option<String>) -> anyhow::Result<ExitCode> {
    let filter = app.map(|app| format!("&app={app}")).unwrap_or_default();
    let entries: Vec<AuditEntry> = ctx
        .client()?
        .get(&format!("/v1/audit?limit={limit}{filter}"))
        .await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                output::time(e.at),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.result.clone(),
                e.detail.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["WHEN", "WHO", "ACTION", "TARGET", "RESULT", "DETAIL"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

// ---- secrets --------------------------------------------------------------------------

fn read_secret_value(name: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let term = console::Term::stderr();
        term.write_str(&format!("value for {name} (not echoed): "))?;
        let value = term.read_secure_line()?;
        return Ok(value);
    }
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .context("cannot read the value from stdin")?;
    // A value piped with `echo` ends with one newline that is not part of it.
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
}

/// A secret for an app named only by `--app` that berth has never seen (no release, no
/// secret, no manifest here naming it) is most likely a typo: in a terminal, ask; otherwise
/// refuse unless `--yes`.
async fn confirm_app(client: &Client, args: &AppArgs, app: &str, yes: bool) -> anyhow::Result<()> {
    if yes || args.app.is_none() {
        return Ok(());
    }
    let named_here = args.file.exists()
        && load_manifest(&ManifestArgs {
            file: args.file.clone(),
            environment: args.environment.clone(),
        })
        .is_ok_and(|m| m.manifest.app == app);
    if named_here {
        return Ok(());
    }
    let status: Status = client.get("/v1/status").await?;
    if status.apps.iter().any(|a| a.name == app) {
        return Ok(());
    }
    let secrets: Vec<SecretInfo> = client.get(&format!("/v1/apps/{app}/secrets")).await?;
    if !secrets.is_empty() {
        return Ok(());
    }
    let known: Vec<&str> = status.apps.iter().map(|a| a.name.as_str()).collect();
    let question = format!(
        "berth knows no app `{app}` (never deployed, no secrets, no berth.toml here names it){}",
        if known.is_empty() {
            String::new()
        } else {
            format!("; it knows {}", known.join(", "))
        }
    );
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("{question}. Set the secret for `{app}` anyway? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(());
        }
        return Err(invalid("nothing was set", None));
    }
    Err(invalid(
        question,
        Some("check the name, run where the app's berth.toml is, or pass --yes to set it anyway"),
    ))
}

async fn secrets(ctx: &Ctx, action: SecretsCommand) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let redeploy_hint = |app: &str, info: &SecretInfo| {
        if !info.used_by.is_empty() {
            eprintln!(
                "  {} the live release of {app} uses it in {}: run `berth deploy` (or `berth restart SERVICE`) to roll it out",
                style("→").yellow(),
                info.used_by.join(", ")
            );
        }
    };
    match action {
        SecretsCommand::HashPassword { name } => {
            if name.is_empty() || name.contains([':', '\n', '\r']) {
                return Err(invalid(
                    format!("`{name}` cannot be a basic-auth user name"),
                    Some("a name without `:` or line breaks"),
                ));
            }
            let password = read_secret_value(&format!("{name}'s password"))?;
            if let Err(problem) = berth_auth::passwords::Policy::default().check(&name, &password) {
                return Err(invalid(problem.to_string(), None));
            }
            let hash = berth_auth::passwords::hash_password(&password)
                .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
            println!("{name}:{hash}");
            return Ok(ExitCode::SUCCESS);
        }
        SecretsCommand::Rotate {
            name,
            value,
            stdin,
            force,
            app,
        } => {
            let value = match (value, stdin) {
                (Some(v), _) => Some(v),
                (None, true) => Some(read_secret_value(&name)?),
                (None, false) => None,
            };
            return ops::secrets_rotate(ctx, &name, value, &app, force).await;
        }
        SecretsCommand::Import {
            env_file,
            all,
            app,
            yes,
        } => return ops::secrets_import(ctx, &env_file, &app, all, yes).await,
        SecretsCommand::Set {
            name,
            value,
            app: app_args,
            yes,
        } => {
            let app = resolve_app(&app_args)?;
            confirm_app(&client, &app_args, &app, yes).await?;
            let value = match value {
                Some(v) => v,
                None => read_secret_value(&name)?,
            };
            if value.is_empty() {
                return Err(invalid(
                    "the value is empty",
                    Some(
                        "pipe it in (`printf %s \"$VALUE\" | berth secrets set NAME`) or pass --value",
                    ),
                ));
            }
            let info: SecretInfo = client
                .request(
                    http::Method::PUT,
                    &format!("/v1/apps/{app}/secrets/{name}"),
                    &SecretValue { value },
                )
                .await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{} secret {name} of {app} is set", style("✓").green());
                redeploy_hint(&app, &info);
            }
        }
        SecretsCommand::Generate {
            name,
            force,
            app: app_args,
            yes,
        } => {
            let app = resolve_app(&app_args)?;
            confirm_app(&client, &app_args, &app, yes).await?;
            let info: SecretInfo = client
                .request(
                    http::Method::POST,
                    &format!("/v1/apps/{app}/secrets/{name}/generate?force={force}"),
                    &(),
                )
                .await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!(
                    "{} secret {name} of {app} is set to 32 random bytes (see it with `berth secrets get {name}`)",
                    style("✓").green()
                );
                redeploy_hint(&app, &info);
            }
        }
        SecretsCommand::Get { name, app } => {
            let app = resolve_app(&app)?;
            let value: SecretValue = client
                .get(&format!("/v1/apps/{app}/secrets/{name}"))
                .await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{}", value.value);
            }
        }
        SecretsCommand::List { app } => {
            let app = resolve_app(&app)?;
            let list: Vec<SecretInfo> = client.get(&format!("/v1/apps/{app}/secrets")).await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("app {app} has no secrets");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            output::time(s.updated_at),
                            if s.used_by.is_empty() {
                                "-".into()
                            } else {
                                s.used_by.join(", ")
                            },
                        ]
                    })
                    .collect();
                print!("{}", output::table(&["NAME", "UPDATED", "USED BY"], &rows));
            }
        }
        SecretsCommand::Rm { name, app } => {
            let app = resolve_app(&app)?;
            client
                .delete(&format!("/v1/apps/{app}/secrets/{name}"))
                .await?;
            if !ctx.json {
                println!("{} secret {name} of {app} is deleted", style("✓").green());
            } else {
                println!("{}", serde_json::json!({ "ok": true }));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---- maintenance and certificates -----------------------------------------------------

async fn maintenance(ctx: &Ctx, action: MaintenanceCommand) -> anyhow::Result<ExitCode> {
    let (app, request) = match action {
        MaintenanceCommand::On { message, app } => (
            resolve_app(&app)?,
            MaintenanceRequest {
                enabled: true,
                message,
            },
        ),
        MaintenanceCommand::Off { app } => (
            resolve_app(&app)?,
            MaintenanceRequest {
                enabled: false,
                message: None,
            },
        ),
    };
    let status: AppStatus = ctx
        .client()?
        .request(
            http::Method::POST,
            &format!("/v1/apps/{app}/maintenance"),
            &request,
        )
        .await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else if status.maintenance.is_some() {
        println!(
            "{} {app} now serves a maintenance page (503); `berth maintenance off` brings it back",
            style("✓").green()
        );
    } else {
        println!("{} {app} is served again", style("✓").green());
    }
    Ok(ExitCode::SUCCESS)
}

async fn certs(ctx: &Ctx, action: CertsCommand) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match action {
        CertsCommand::Renew { domain } => {
            let _: serde_json::Value = client
                .request(
                    http::Method::POST,
                    &format!("/v1/certificates/{domain}/renew"),
                    &(),
                )
                .await
                .or_else(|e| match e {
                    // 202 with an empty body is the expected answer.
                    crate::client::ClientError::Protocol { .. } => Ok(serde_json::Value::Null),
                    other => Err(other),
                })?;
            if !ctx.json {
                println!(
                    "{} renewal of {domain} started; `berth certs` shows when it is done",
                    style("✓").green()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::List => {
            let status: Status = client.get("/v1/status").await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&status.certificates)?);
                return Ok(ExitCode::SUCCESS);
            }
            if status.certificates.is_empty() {
                let why = if status.agent.https.is_none() {
                    " (the agent serves no HTTPS: start it with --https)"
                } else {
                    ""
                };
                println!("no certificates{why}");
                return Ok(ExitCode::SUCCESS);
            }
            print!(
                "{}",
                output::table(
                    &["DOMAIN", "SOURCE", "STATE", "EXPIRES", "NOTE"],
                    &certificate_rows(&status.certificates)
                )
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn certificate_rows(certificates: &[CertificateInfo]) -> Vec<Vec<String>> {
    certificates
        .iter()
        .map(|c| {
            let state = match c.state.as_str() {
                "valid" => style("valid").green().to_string(),
                "pending" => style("pending").yellow().to_string(),
                other => style(other).red().to_string(),
            };
            let expires = c
                .not_after
                .map(|t| output::time(t * 1000))
                .unwrap_or_else(|| "-".into());
            let note = match (&c.last_error, c.next_attempt) {
                (Some(error), Some(next)) => {
                    format!("{error} (next attempt {})", output::time(next * 1000))
                }
                (Some(error), None) => error.clone(),
                _ => String::new(),
            };
            vec![c.domain.clone(), c.source.clone(), state, expires, note]
        })
        .collect()
}

// ---- backups --------------------------------------------------------------------------

/// The app a backup command is about and, when its manifest is at hand, the manifest (sent
/// so backups work before the first deploy and on a new server).
fn backup_target(args: &AppArgs) -> anyhow::Result<(String, Option<ManifestText>)> {
    if !args.file.exists() {
        return Ok((resolve_app(args)?, None));
    }
    let loaded = load_manifest(&ManifestArgs {
        file: args.file.clone(),
        environment: args.environment.clone(),
    })?;
    if let Some(app) = &args.app
        && app != &loaded.manifest.app
    {
        return Err(invalid(
            format!(
                "--app {app} does not match the app of {} ({})",
                loaded.path.display(),
                loaded.manifest.app
            ),
            Some("drop --app, or point --file at that app's manifest"),
        ));
    }
    let text = ManifestText {
        manifest: loaded.text,
        manifest_path: loaded.path.display().to_string(),
        base_dir: loaded.base_dir.display().to_string(),
        environment: loaded.manifest.environment.clone(),
    };
    Ok((loaded.manifest.app, Some(text)))
}

async fn backup(ctx: &Ctx, action: BackupCommand) -> anyhow::Result<ExitCode> {
    match action {
        BackupCommand::Run { name, app } => {
            let (app, manifest) = backup_target(&app)?;
            let request = BackupRunRequest {
                manifest,
                names: name.into_iter().collect(),
            };
            operation(
                ctx,
                &format!("/v1/apps/{app}/backups/run"),
                &request,
                &format!("backing up {app}"),
            )
            .await
        }
        BackupCommand::Verify {
            name,
            app,
            id,
            adopt_unsigned,
            identity,
        } => {
            let (app, manifest) = backup_target(&app)?;
            let request = BackupVerifyRequest {
                manifest,
                names: name.into_iter().collect(),
                id,
                adopt_unsigned,
                identity: read_identity(identity.as_deref())?,
            };
            operation(
                ctx,
                &format!("/v1/apps/{app}/backups/verify"),
                &request,
                &format!("verifying the backups of {app}"),
            )
            .await
        }
        BackupCommand::Prune { name, app, dry_run } => {
            let (app, manifest) = backup_target(&app)?;
            let request = BackupPruneRequest {
                manifest,
                names: name.into_iter().collect(),
                dry_run,
            };
            operation(
                ctx,
                &format!("/v1/apps/{app}/backups/prune"),
                &request,
                &format!("pruning the backups of {app}"),
            )
            .await
        }
        BackupCommand::List { name, app, refresh } => {
            let (app, manifest) = backup_target(&app)?;
            let request = BackupListRequest {
                manifest,
                name,
                refresh,
            };
            let list: BackupList = ctx
                .client()?
                .request(
                    http::Method::POST,
                    &format!("/v1/apps/{app}/backups/list"),
                    &request,
                )
                .await?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                output::backup_list(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Rows of `berth status`'s backup table; true when any backup is failing.
fn backup_status_rows(backups: &[BackupStatus]) -> Vec<Vec<String>> {
    backups
        .iter()
        .map(|b| {
            let last_run = match &b.last_run {
                None => "-".to_owned(),
                Some(run) => {
                    let text = format!(
                        "{} {} {}",
                        run.operation,
                        run.status,
                        output::time(run.finished_at.unwrap_or(run.started_at))
                    );
                    if run.status.is_good() {
                        style(text).green().to_string()
                    } else {
                        style(text).red().to_string()
                    }
                }
            };
            vec![
                format!("  {}", b.name),
                b.schedule.clone().unwrap_or_else(|| "by hand".into()),
                b.last_ok
                    .map(output::time)
                    .unwrap_or_else(|| "never".into()),
                last_run,
                b.next_run.map(output::time).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

/// `berth man DIR`: a page per command (`berth.1`, `berth-deploy.1`, `berth-alerts-mute.1`,
/// ...); how many were written.
pub(crate) fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    let command = <crate::Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(command, dir)
        .map_err(|e| anyhow!("cannot write the man pages into {}: {e}", dir.display()))?;
    let pages = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("berth") && name.ends_with(".1")
                })
                .count()
        })
        .unwrap_or(0);
    Ok(pages)
}
