//! `berth init`, `berth import compose` and `berth secrets import`: the commands that start an
//! app's manifest from what it already has. The decisions are `berth_ops`'; this module writes
//! files, talks to the agent and shows the results.

use super::{Ctx, invalid, load_manifest, resolve_app};
use crate::{AppArgs, ManifestArgs};
use anyhow::anyhow;
use berth_api::{SecretInfo, SecretValue};
use berth_ops::compose::{Finding, Import, ImportOptions, Severity};
use berth_ops::init::Init;
use console::style;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// An `--app` name berth accepts, checked before anything is written: lower-case letters,
/// digits and dashes, starting with a letter, at most 40 characters (as `berth check` wants).
fn check_app_name(app: Option<&str>) -> anyhow::Result<()> {
    let Some(name) = app else {
        return Ok(());
    };
    if berth_manifest::valid_name(name, 40) {
        return Ok(());
    }
    Err(invalid(
        format!("`{name}` is not an app name"),
        Some(
            "use lower-case letters, digits and dashes, starting with a letter; at most 40 characters",
        ),
    ))
}

/// Writes `text` to `path`: refused when it exists unless `force`, and never half-written
/// (a new file is created exclusively; a replacement goes through a temporary file).
fn write_manifest(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    let exists_hint = format!(
        "{} exists; pass --force to replace it, or --output FILE to write elsewhere",
        path.display()
    );
    if !force {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => invalid(
                    format!("{} already exists: not overwritten", path.display()),
                    Some(&exists_hint),
                ),
                _ => anyhow!("cannot create {}: {e}", path.display()),
            })?;
        file.write_all(text.as_bytes())
            .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        return Ok(());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| anyhow!("cannot write in {}: {e}", dir.display()))?;
    temp.write_all(text.as_bytes())
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    temp.persist(path)
        .map_err(|e| anyhow!("cannot replace {}: {}", path.display(), e.error))?;
    Ok(())
}

fn show_findings(file: &str, findings: &[Finding]) {
    for finding in findings {
        let mark = match finding.severity {
            Severity::Warning => style("!").yellow().bold(),
            Severity::Note => style("·").dim(),
        };
        eprintln!("  {mark} {}", finding.display(file));
    }
}

fn show_import(file: &str, written: &Path, import: &Import) {
    let services: Vec<&str> = import.draft.services.keys().map(String::as_str).collect();
    let accessories: Vec<&str> = import
        .draft
        .accessories
        .keys()
        .map(String::as_str)
        .collect();
    let warnings = import
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    println!(
        "{} wrote {} from {file}: app {}, {} service{} ({}){}",
        style("✓").green(),
        written.display(),
        style(&import.draft.app).bold(),
        services.len(),
        if services.len() == 1 { "" } else { "s" },
        services.join(", "),
        if accessories.is_empty() {
            String::new()
        } else {
            format!(
                ", {} accessor{} ({})",
                accessories.len(),
                if accessories.len() == 1 { "y" } else { "ies" },
                accessories.join(", ")
            )
        }
    );
    if !import.findings.is_empty() {
        let notes = import.findings.len() - warnings;
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let mut parts = Vec::new();
        if warnings > 0 {
            parts.push(format!(
                "{} (! not carried over)",
                plural(warnings, "warning")
            ));
        }
        if notes > 0 {
            parts.push(format!(
                "{} (· carried over differently)",
                plural(notes, "note")
            ));
        }
        eprintln!("{} {}:", style("→").yellow(), parts.join(" and "));
        show_findings(file, &import.findings);
    }
    if !import.secrets.is_empty() {
        println!(
            "Secrets it names, to set before deploying (values are never written into the manifest):"
        );
        let width = import
            .secrets
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        for secret in &import.secrets {
            println!("  {:width$}  {}", secret.name, secret.how);
        }
    }
    println!("Next: review it, `berth check`, then `berth deploy`.");
}

fn import_json(file: &str, written: &Path, import: &Import) -> serde_json::Value {
    serde_json::json!({
        "written": written,
        "from": file,
        "app": import.draft.app,
        "services": import.draft.services.keys().collect::<Vec<_>>(),
        "accessories": import.draft.accessories.keys().collect::<Vec<_>>(),
        "converted": import.converted,
        "findings": import.findings,
        "secrets": import.secrets,
    })
}

pub(super) fn init(
    ctx: &Ctx,
    output: &Path,
    app: Option<String>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(
        output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    if output.exists() && !force {
        return Err(invalid(
            format!("{} already exists: not overwritten", output.display()),
            Some(
                "pass --force to write a new one over it (`berth check` tells what is wrong with the one there)",
            ),
        ));
    }
    let result = berth_ops::init::init(&dir, app).map_err(|e| match e {
        berth_ops::init::InitError::NothingToDeploy { .. } => invalid(
            e.to_string(),
            Some("add a Dockerfile (or a compose.yaml), or run berth init in the app's directory"),
        ),
        berth_ops::init::InitError::Compose(
            berth_ops::compose::ImportError::Yaml { .. }
            | berth_ops::compose::ImportError::NotCompose { .. }
            | berth_ops::compose::ImportError::Interpolation { .. }
            | berth_ops::compose::ImportError::Dotenv { .. },
        ) => invalid(e.to_string(), None),
        other => anyhow!(other),
    })?;
    match result {
        Init::Compose { file, import } => {
            write_manifest(output, &import.manifest, force)?;
            if ctx.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&import_json(&file, output, &import))?
                );
            } else {
                println!(
                    "Found {file}: importing it (`berth import compose {file}` does the same)."
                );
                show_import(&file, output, &import);
            }
        }
        Init::Dockerfiles { manifest, found } => {
            write_manifest(output, &manifest, force)?;
            if ctx.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "written": output,
                        "from": "dockerfiles",
                        "found": found,
                    }))?
                );
            } else {
                for line in &found {
                    println!("  {line}");
                }
                println!(
                    "{} wrote {}: review it (each key says where it came from), `berth check`, then `berth deploy`",
                    style("✓").green(),
                    output.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) struct ComposeImport {
    pub file: PathBuf,
    pub output: Option<PathBuf>,
    pub app: Option<String>,
    pub profiles: Vec<String>,
    pub force: bool,
}

pub(super) fn import_compose(ctx: &Ctx, args: ComposeImport) -> anyhow::Result<ExitCode> {
    let text =
        berth_ops::files::read_text(&args.file, berth_ops::files::MAX_TEXT_FILE).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                invalid(
                    format!("there is no Compose file at {}", args.file.display()),
                    Some("name it: berth import compose docker-compose.yml"),
                )
            } else {
                anyhow!("cannot read {}: {e}", args.file.display())
            }
        })?;
    let compose_dir = std::path::absolute(
        args.file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| compose_dir.join("berth.toml"));
    let output_dir = std::path::absolute(
        output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    if output.exists() && !args.force {
        return Err(invalid(
            format!("{} already exists: not overwritten", output.display()),
            Some("pass --force to replace it, or --output FILE to write elsewhere"),
        ));
    }
    check_app_name(args.app.as_deref())?;
    let file = args.file.display().to_string();
    let options = ImportOptions {
        file_name: file.clone(),
        compose_dir,
        output_dir,
        app: args.app,
        profiles: args.profiles,
    };
    let import = berth_ops::compose::import(&text, &options).map_err(|e| match e {
        berth_ops::compose::ImportError::Unchecked { .. } => anyhow!(e),
        other => invalid(other.to_string(), None),
    })?;
    write_manifest(&output, &import.manifest, args.force)?;
    let shown = pathdiff_display(&output);
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&import_json(&file, &output, &import))?
        );
    } else {
        show_import(&file, Path::new(&shown), &import);
    }
    Ok(ExitCode::SUCCESS)
}

/// A path as the user would type it from here: relative when it is below the current
/// directory.
fn pathdiff_display(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// `berth secrets import FILE`: each `KEY=value` of a `.env` file becomes a secret of the app.
/// With a manifest here, only the secrets it names are set (the rest of a Compose `.env` is
/// usually interpolation input), unless `--all`.
pub(super) async fn secrets_import(
    ctx: &Ctx,
    file: &Path,
    app_args: &AppArgs,
    all: bool,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let text = berth_ops::files::read_text(file, berth_ops::files::MAX_TEXT_FILE).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            invalid(format!("there is no file at {}", file.display()), None)
        } else {
            anyhow!("cannot read {}: {e}", file.display())
        }
    })?;
    let environment: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let entries = berth_ops::dotenv::parse(&text)
        .and_then(|entries| berth_ops::dotenv::expanded(entries, &environment))
        .map_err(|e| {
            invalid(
                format!("{}: {e}", file.display()),
                Some("each line is KEY=value, # a comment, or empty"),
            )
        })?;
    let app = resolve_app(app_args)?;
    let named: Option<Vec<String>> = if all || !app_args.file.exists() {
        None
    } else {
        let manifest = load_manifest(&ManifestArgs {
            file: app_args.file.clone(),
            environment: app_args.environment.clone(),
        })?;
        Some(
            manifest
                .manifest
                .secret_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        )
    };
    let client = ctx.client()?;
    super::confirm_app(&client, app_args, &app, yes).await?;
    let mut set = Vec::new();
    let mut skipped = Vec::new();
    let mut used_by: Vec<String> = Vec::new();
    for entry in entries {
        if !berth_manifest::valid_env_name(&entry.key) {
            skipped.push((
                entry.key,
                "not a secret name (letters, digits, underscores)",
            ));
            continue;
        }
        if let Some(named) = &named
            && !named.contains(&entry.key)
        {
            skipped.push((entry.key, "not named in berth.toml (--all sets it too)"));
            continue;
        }
        if entry.value.is_empty() {
            skipped.push((entry.key, "empty value"));
            continue;
        }
        let info: SecretInfo = client
            .request(
                http::Method::PUT,
                &format!("/v1/apps/{app}/secrets/{}", entry.key),
                &SecretValue { value: entry.value },
            )
            .await?;
        for service in info.used_by {
            if !used_by.contains(&service) {
                used_by.push(service);
            }
        }
        set.push(entry.key);
    }
    if ctx.json {
        let skipped: Vec<_> = skipped
            .iter()
            .map(|(name, why)| serde_json::json!({ "name": name, "why": why }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "app": app, "set": set, "skipped": skipped, "used_by": used_by
            }))?
        );
    } else {
        println!(
            "{} {} secret{} of {app} set from {}{}",
            style("✓").green(),
            set.len(),
            if set.len() == 1 { "" } else { "s" },
            file.display(),
            if set.is_empty() {
                String::new()
            } else {
                format!(": {}", set.join(", "))
            }
        );
        for (name, why) in &skipped {
            println!("  {} {name}: {why}", style("·").dim());
        }
        if !used_by.is_empty() {
            eprintln!(
                "  {} the live release uses them in {}: run `berth deploy` (or `berth restart SERVICE`) to roll them out",
                style("→").yellow(),
                used_by.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth secrets rotate NAME`: a new value (generated, or given), then the services of the
/// live release that use it restarted one after another through the zero-downtime path, so
/// the new value is in use when the command returns. An accessory that uses it is refused
/// unless forced: databases read their password variables only when they first create their
/// data, so a new value would lock the app out.
pub(super) async fn secrets_rotate(
    ctx: &Ctx,
    name: &str,
    value: Option<String>,
    app_args: &AppArgs,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let app = resolve_app(app_args)?;
    let client = ctx.client()?;
    let secrets: Vec<SecretInfo> = client.get(&format!("/v1/apps/{app}/secrets")).await?;
    let Some(current) = secrets.iter().find(|s| s.name == name) else {
        return Err(invalid(
            format!("app {app} has no secret {name}: nothing to rotate"),
            Some("set it first: `berth secrets generate NAME` or `berth secrets set NAME`"),
        ));
    };
    let status: berth_api::Status = client.get(&format!("/v1/status?app={app}")).await?;
    let roles: std::collections::BTreeMap<String, String> = status
        .apps
        .iter()
        .filter(|a| a.name == app)
        .flat_map(|a| a.services.iter().map(|s| (s.name.clone(), s.role.clone())))
        .collect();
    let accessories: Vec<&String> = current
        .used_by
        .iter()
        .filter(|s| roles.get(*s).map(String::as_str) == Some("accessory"))
        .collect();
    if !accessories.is_empty() && !force {
        let names: Vec<&str> = accessories.iter().map(|s| s.as_str()).collect();
        return Err(invalid(
            format!(
                "{name} is used by the accessory {}: a database reads such a variable only when it first creates its data, so a new value would not change its password and the app could no longer connect",
                names.join(", ")
            ),
            Some(
                "change the password inside the database first (ALTER USER ... PASSWORD ...), then `berth secrets set NAME` and `berth restart SERVICE`; or pass --force if the accessory does read it on every start",
            ),
        ));
    }
    let info: SecretInfo = match value {
        Some(value) if value.is_empty() => {
            return Err(invalid("the new value is empty", None));
        }
        Some(value) => {
            client
                .request(
                    http::Method::PUT,
                    &format!("/v1/apps/{app}/secrets/{name}"),
                    &SecretValue { value },
                )
                .await?
        }
        None => {
            client
                .request(
                    http::Method::POST,
                    &format!("/v1/apps/{app}/secrets/{name}/generate?force=true"),
                    &(),
                )
                .await?
        }
    };
    if !ctx.json {
        println!("{} {name} of {app} has a new value", style("✓").green());
    }
    let mut restarted = Vec::new();
    for service in &info.used_by {
        if !ctx.json {
            eprintln!("restarting {service} so it reads the new value");
        }
        let path = format!("/v1/apps/{app}/services/{service}/restart");
        let request = berth_api::RestartRequest {
            wait_for_lock: true,
        };
        let ok = if ctx.json {
            // The outcome goes into this command's one JSON answer, not printed on its own.
            let mut lines = client
                .stream(http::Method::POST, &path, Some(&request))
                .await?;
            loop {
                match lines.next::<berth_api::OperationEvent>().await? {
                    Some(berth_api::OperationEvent::Finished(outcome)) => break outcome.ok,
                    Some(_) => {}
                    None => break false,
                }
            }
        } else {
            let code = super::operation(
                ctx,
                &path,
                &request,
                &format!("restarting {service} of {app}"),
            )
            .await?;
            code == ExitCode::SUCCESS
        };
        if !ok {
            return Err(anyhow!(
                "{name} has its new value, but restarting {service} failed (its old containers keep serving with the old value): fix the cause and run `berth restart {service}`{}",
                if restarted.is_empty() {
                    String::new()
                } else {
                    format!("; already restarted: {}", restarted.join(", "))
                }
            ));
        }
        restarted.push(service.clone());
    }
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "app": app, "secret": name, "restarted": restarted })
            )?
        );
    } else if restarted.is_empty() {
        println!("  no service of the live release uses it: the next deploy reads it");
    } else {
        println!(
            "{} {} now run{} with the new value",
            style("✓").green(),
            restarted.join(", "),
            if restarted.len() == 1 { "s" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth runbook`: Markdown on stdout, from the manifest and what the agent says is live
/// (without an answering agent, from the manifest alone, and it says so).
pub(super) async fn runbook(ctx: &Ctx, args: &ManifestArgs) -> anyhow::Result<ExitCode> {
    let loaded = load_manifest(args)?;
    let app = loaded.manifest.app.clone();
    let live = match ctx.client() {
        Ok(client) => {
            let target = client.target.to_string();
            match client
                .get::<berth_api::Status>(&format!("/v1/status?app={app}"))
                .await
            {
                Ok(status) => Some(berth_ops::runbook::Live {
                    agent: target,
                    agent_version: status.agent.version.clone(),
                    https: status.agent.https.clone(),
                    status: status.apps.into_iter().find(|a| a.name == app),
                }),
                // Not deployed yet: the agent's own facts, and no live release.
                Err(crate::client::ClientError::Api { error, .. })
                    if error.kind == berth_api::ErrorKind::NotFound =>
                {
                    let status: Option<berth_api::Status> = client.get("/v1/status").await.ok();
                    Some(berth_ops::runbook::Live {
                        agent: target,
                        agent_version: status
                            .as_ref()
                            .map(|s| s.agent.version.clone())
                            .unwrap_or_default(),
                        https: status.and_then(|s| s.agent.https),
                        status: None,
                    })
                }
                Err(error) => {
                    eprintln!(
                        "{} the agent did not answer ({error}): the runbook has the manifest only",
                        style("!").yellow()
                    );
                    None
                }
            }
        }
        Err(_) => None,
    };
    let today = jiff::Zoned::now().date().to_string();
    let text = berth_ops::runbook::runbook(
        &loaded.manifest,
        &args.file.display().to_string(),
        &loaded.base_dir,
        live.as_ref(),
        &today,
    );
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "app": app, "markdown": text }))?
        );
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth ci init`: the workflow file, written beside the manifest (the repository's root).
pub(super) fn ci_init(
    ctx: &Ctx,
    mut workflow: berth_ops::ci::Workflow,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let dir = std::env::current_dir()?;
    if !berth_ops::ci::valid_branch(&workflow.branch) {
        return Err(invalid(
            format!(
                "`{}` is not a branch name the workflow can use",
                workflow.branch
            ),
            Some("one branch, as git names it: letters, digits, `.`, `_`, `-` and `/` (no glob)"),
        ));
    }
    if let Some(env) = &workflow.environment
        && !berth_manifest::valid_name(env, 24)
    {
        return Err(invalid(
            format!("`{env}` is not an environment name"),
            Some("an [environments.NAME] of berth.toml: lower-case letters, digits and dashes"),
        ));
    }
    if !dir.join("berth.toml").is_file() {
        eprintln!(
            "{} there is no berth.toml here: the deploy job runs `berth deploy` in the repository's root, so write it there (`berth init`)",
            style("!").yellow()
        );
    }
    workflow.test_image = berth_ops::ci::detect_test_image(&dir).to_owned();
    if workflow.test_command.is_empty() {
        let (command, from) = berth_ops::ci::detect_tests(&dir);
        workflow.test_command = command;
        workflow.test_from = from;
    }
    let path = dir.join(workflow.provider.path());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    if path.exists() && !force {
        return Err(invalid(
            format!(
                "{} already exists: not overwritten",
                workflow.provider.path()
            ),
            Some("pass --force to replace it"),
        ));
    }
    write_manifest(&path, &workflow.render(), force)?;
    let secrets: &[&str] = match workflow.access {
        berth_ops::ci::Access::Token => &["BERTH_AGENT", "BERTH_TOKEN", "BERTH_AGENT_FINGERPRINT"],
        berth_ops::ci::Access::Ssh => &["BERTH_AGENT", "SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS"],
    };
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "written": workflow.provider.path(),
                "test_command": workflow.test_command,
                "secrets": secrets,
                "variables": ["BERTH_DOWNLOAD_URL", "BERTH_SHA256"],
            }))?
        );
    } else {
        println!(
            "{} wrote {}: tests `{}` ({}); pushes to {} deploy",
            style("✓").green(),
            workflow.provider.path(),
            workflow.test_command,
            workflow.test_from,
            workflow.branch
        );
        println!(
            "Store these as the CI system's secrets (never in the file): {}",
            secrets.join(", ")
        );
        println!(
            "and the variables BERTH_DOWNLOAD_URL (where the job downloads berth) and BERTH_SHA256 (its checksum)."
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn app_names_are_checked_as_berth_check_does() {
        assert!(super::check_app_name(Some("shop")).is_ok());
        assert!(super::check_app_name(Some(&format!("a{}", "b".repeat(39)))).is_ok());
        assert!(super::check_app_name(Some(&format!("a{}", "b".repeat(40)))).is_err());
        for bad in ["", "Bad Name!", "1shop", "shop-", "shop_1"] {
            assert!(super::check_app_name(Some(bad)).is_err(), "{bad}");
        }
    }

    /// Words of a command line: whitespace-separated, double quotes grouping.
    fn words(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out
    }

    /// Every `berth …` line of the runbook's command blocks is a command this CLI takes.
    #[test]
    fn the_runbook_only_names_commands_berth_has() {
        let text = r#"
app = "memo"
[services.web]
image = "memo:1"
port = 8000
secrets = ["JWT_SECRET"]
volumes = ["uploads:/app/uploads"]
route = { domains = ["memo.example.com"] }
[services.worker]
image = "memo:1"
command = ["worker"]
[accessories.db]
image = "postgres:17"
secrets = ["POSTGRES_PASSWORD"]
volumes = ["pgdata:/var/lib/postgresql/data"]
[backups.db]
source = { postgres = { service = "db", database = "memo", password_secret = "POSTGRES_PASSWORD" } }
schedule = "0 3 * * *"
keep = { daily = 7, weekly = 4 }
[backups.uploads]
source = { volume = { name = "uploads" } }
[alerts.ops]
type = "webhook"
url = "https://hooks.example.com/berth"
"#;
        let source = berth_manifest::ManifestSource {
            file: "berth.toml",
            text,
            base_dir: std::path::Path::new("/tmp"),
        };
        let manifest = berth_manifest::load(source, None).unwrap();
        let runbook = berth_ops::runbook::runbook(
            &manifest,
            "berth.toml",
            std::path::Path::new("/tmp"),
            None,
            "2026-12-03",
        );
        let mut in_block = false;
        let mut checked = 0;
        for line in runbook.lines() {
            if line.starts_with("```") {
                in_block = !in_block;
                continue;
            }
            // Commands in blocks, and `berth …` quoted in the tables.
            let mut commands: Vec<String> = Vec::new();
            if in_block && line.starts_with("berth ") {
                let command = line.split(" # ").next().unwrap_or(line);
                commands.extend(command.split("; ").map(str::to_owned));
            } else {
                for quoted in line.split('`').skip(1).step_by(2) {
                    if quoted.starts_with("berth ")
                        && !quoted.contains("NAME")
                        && !quoted.contains("SERVICE")
                        && !quoted.contains("CHANNEL")
                        && !quoted.contains("DOMAIN")
                        && !quoted.contains(" > ")
                    {
                        commands.push(quoted.to_owned());
                    }
                }
            }
            for command in commands {
                let args = words(command.trim());
                if let Err(error) = crate::Cli::try_parse_from(&args) {
                    panic!("the runbook says `{command}`, which berth does not take:\n{error}");
                }
                checked += 1;
            }
        }
        assert!(
            checked > 30,
            "only {checked} commands were found in:\n{runbook}"
        );
        for needle in [
            "berth restore db --identity ~/keys/old-server-backup.key",
            "`JWT_SECRET` | web | `berth secrets rotate JWT_SECRET`",
            "`POSTGRES_PASSWORD` | db | change it inside the database first",
            "`memo.example.com`: from the agent's ACME CA",
            "| db | PostgreSQL `memo` | 0 3 * * * | 7 daily, 4 weekly | local |",
            "Sent to: `ops` (from warning)",
            "- `uploads`: web at `/app/uploads`",
        ] {
            assert!(
                runbook.contains(needle),
                "`{needle}` is missing from:\n{runbook}"
            );
        }
    }
}
