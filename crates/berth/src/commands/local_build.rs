//! `berth deploy --build local`: build the manifest's images with this machine's Docker (a CI
//! runner's, typically) and send them to the agent as one `docker save` archive, so the server
//! spends no CPU on builds and no registry is involved. The images are named
//! `berth/APP/SERVICE:local-…`, the only names an app-limited deploy token may load.

use super::{Ctx, invalid};
use crate::output::Mode;
use anyhow::Context as _;
use berth_manifest::{BuildSpec, ImageSource, Manifest};
use console::style;
use std::collections::BTreeMap;
use std::process::Stdio;

/// The images built here: one archive holding them all, and the name each service takes.
pub struct Built {
    pub archive: tempfile::NamedTempFile,
    pub images: BTreeMap<String, String>,
}

/// The tag this run's images share: unique per run, so two deploys never race for one name.
fn run_tag() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{now}-{}", std::process::id())
}

pub async fn build(ctx: &Ctx, manifest: &Manifest) -> anyhow::Result<Option<Built>> {
    let tag = run_tag();
    let mut images = BTreeMap::new();
    // Services that build the same thing share one build, as on the server.
    let mut built: Vec<(&BuildSpec, String)> = Vec::new();
    for service in manifest
        .services
        .values()
        .chain(manifest.accessories.values())
    {
        let ImageSource::Build(spec) = &service.source else {
            continue;
        };
        if let Some((_, name)) = built.iter().find(|(s, _)| *s == spec) {
            images.insert(service.name.clone(), name.clone());
            continue;
        }
        let name = berth_core::names::uploaded_image(&manifest.app, &service.name, &tag);
        docker_build(ctx, &service.name, spec, &name).await?;
        images.insert(service.name.clone(), name.clone());
        built.push((spec, name));
    }
    if built.is_empty() {
        return Ok(None);
    }
    let archive = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
    let names: Vec<&String> = built.iter().map(|(_, name)| name).collect();
    let saved = tokio::process::Command::new("docker")
        .arg("save")
        .arg("--output")
        .arg(archive.path())
        .args(&names)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run `docker save`")?;
    // The names served their purpose once saved; the layers stay as this machine's cache.
    let _ = tokio::process::Command::new("docker")
        .args(["image", "rm", "--no-prune"])
        .args(&names)
        .stdin(Stdio::null())
        .output()
        .await;
    if !saved.status.success() {
        return Err(invalid(
            format!(
                "`docker save` failed: {}",
                String::from_utf8_lossy(&saved.stderr).trim()
            ),
            Some(
                "check that this machine's Docker has room for the archive in the temporary directory (TMPDIR)",
            ),
        ));
    }
    Ok(Some(Built { archive, images }))
}

async fn docker_build(
    ctx: &Ctx,
    service: &str,
    spec: &BuildSpec,
    name: &str,
) -> anyhow::Result<()> {
    if ctx.mode != Mode::Json {
        eprintln!(
            "  {} build {service} here ({})",
            style("⚒").dim(),
            spec.context.display()
        );
    }
    let mut command = tokio::process::Command::new("docker");
    command
        .arg("build")
        .arg("--file")
        .arg(spec.context.join(&spec.dockerfile))
        .arg("--tag")
        .arg(name);
    if let Some(target) = &spec.target {
        command.arg("--target").arg(target);
    }
    for (key, value) in &spec.args {
        command.arg("--build-arg").arg(format!("{key}={value}"));
    }
    command.arg(&spec.context).stdin(Stdio::null());
    // The build's own output shows its progress, in a terminal and in a CI log; with --json
    // it is kept and only its tail is shown when the build fails.
    let shown = ctx.mode != Mode::Json;
    let failed = |error: std::io::Error| {
        invalid(
            format!("cannot run `docker build` for service {service}: {error}"),
            Some(
                "`--build local` builds with this machine's Docker: install it, or leave the build to the server (`--build server`)",
            ),
        )
    };
    let mut message = format!("building service {service} here failed");
    if shown {
        // `status`, not `output`: `output` would capture what is meant to be seen. Both
        // streams go to standard error; standard output stays the command's result.
        command
            .stdout(Stdio::from(std::io::stderr()))
            .stderr(Stdio::inherit());
        if command.status().await.map_err(failed)?.success() {
            return Ok(());
        }
    } else {
        let output = command.output().await.map_err(failed)?;
        if output.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        message.push_str(":\n");
        for line in tail.into_iter().rev() {
            message.push_str("  ");
            message.push_str(line);
            message.push('\n');
        }
    }
    Err(invalid(
        message.trim_end().to_owned(),
        Some("fix the Dockerfile or the build context; the same `docker build` reproduces it"),
    ))
}
