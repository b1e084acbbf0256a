//! `berth.toml`: parse, apply an `[environments.NAME]` overlay, validate, and resolve into a
//! [`Manifest`] the agent can act on.
//!
//! This crate does no I/O: callers read the file and pass its text with the directory that
//! relative paths are resolved against. Every problem is reported as a [`Diagnostic`] that
//! names the line and column and, where possible, how to fix it.

mod backups;
mod diagnostic;
mod model;
mod overlay;
mod raw;
mod risks;
mod shell;
pub mod units;
mod validate;

pub use backups::*;
pub use diagnostic::{Diagnostic, LocatedDiagnostic, ManifestError, line_column};
pub use model::*;
pub use risks::{Risk, risks};

use serde::Deserialize;
use std::path::Path;
use toml::de::{DeTable, Deserializer};

/// The manifest text and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct ManifestSource<'a> {
    /// Shown in messages, such as `berth.toml` or `deploy/berth.toml`.
    pub file: &'a str,
    pub text: &'a str,
    /// Relative build contexts and bind mounts are resolved against this directory.
    pub base_dir: &'a Path,
}

/// Parses and validates the manifest with the named environment overlay applied.
pub fn load(
    source: ManifestSource<'_>,
    environment: Option<&str>,
) -> Result<Manifest, ManifestError> {
    let fail = |diagnostics| ManifestError::new(source.file, source.text, diagnostics);
    if let Some(env) = environment
        && !validate::valid_name(env, 24)
    {
        return Err(fail(vec![
            Diagnostic::new(format!("`{env}` is not a valid environment name"), None)
                .with_help("use lower-case letters, digits and dashes, starting with a letter"),
        ]));
    }
    let parsed = DeTable::parse(source.text).map_err(|e| fail(vec![from_toml_error(&e)]))?;
    let whole = parsed.span();
    let mut root = parsed.into_inner();
    let overlay_sets_app = overlay::apply(&mut root, environment).map_err(|d| fail(vec![d]))?;
    let raw =
        raw::RawManifest::deserialize(Deserializer::from(toml::Spanned::new(whole.clone(), root)))
            .map_err(|e| fail(vec![from_toml_error(&e)]))?;
    let mut checker = validate::Checker::new(source.base_dir);
    match checker.manifest(raw, environment, overlay_sets_app, whole) {
        Some(manifest) if checker.diagnostics.is_empty() => Ok(manifest),
        _ => Err(fail(checker.diagnostics)),
    }
}

/// The environments a manifest defines.
pub fn environments(source: ManifestSource<'_>) -> Result<Vec<String>, ManifestError> {
    let parsed = DeTable::parse(source.text)
        .map_err(|e| ManifestError::new(source.file, source.text, vec![from_toml_error(&e)]))?;
    Ok(overlay::names(parsed.get_ref()))
}

/// Validates the base manifest and every environment overlay, as `berth check` does without
/// `--env`. Returns each resolved manifest, base first.
pub fn check_all(source: ManifestSource<'_>) -> Result<Vec<Manifest>, ManifestError> {
    let mut resolved = vec![load(source, None)?];
    for env in environments(source)? {
        resolved.push(load(source, Some(&env))?);
    }
    Ok(resolved)
}

/// Turns a TOML parse or type error into a diagnostic, rewriting serde's wording where a
/// plainer message and a suggestion help more.
fn from_toml_error(error: &toml::de::Error) -> Diagnostic {
    let message = error.message().trim().to_owned();
    let span = error.span();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let candidates: Vec<&str> = expected
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s)
            .collect();
        let help = match diagnostic::did_you_mean(field, candidates.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if candidates.is_empty() => "remove it".to_owned(),
            None => format!("valid keys here: {}", candidates.join(", ")),
        };
        return Diagnostic::new(format!("unknown key `{field}`"), span).with_help(help);
    }
    let untagged = [
        (
            "StringOrList",
            "expected a string or a list of strings",
            "such as command = [\"python\", \"app.py\"]",
        ),
        (
            "Scalar",
            "expected a string or a number",
            "such as \"512m\" or 2",
        ),
    ];
    for (name, plain, help) in untagged {
        if message.contains(&format!("untagged enum {name}")) {
            return Diagnostic::new(plain, span).with_help(help);
        }
    }
    if message.contains("duplicate key") {
        return Diagnostic::new(message, span)
            .with_help("each key may appear once per table; remove or merge the duplicate");
    }
    Diagnostic::new(message, span)
}
