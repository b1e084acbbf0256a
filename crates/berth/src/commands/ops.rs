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
        eprintln!(
            "{} {warnings} warning{} (! not carried over) and {} note{} (· carried over differently):",
            style("→").yellow(),
            if warnings == 1 { "" } else { "s" },
            import.findings.len() - warnings,
            if import.findings.len() - warnings == 1 {
                ""
            } else {
                "s"
            }
        );
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
    let text = std::fs::read_to_string(&args.file).map_err(|e| {
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
    let text = std::fs::read_to_string(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            invalid(format!("there is no file at {}", file.display()), None)
        } else {
            anyhow!("cannot read {}: {e}", file.display())
        }
    })?;
    let entries = berth_ops::dotenv::parse(&text).map_err(|e| {
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
        let valid = entry
            .key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !entry.key.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
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
