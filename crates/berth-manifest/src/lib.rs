//! `berth.toml`: parse, apply an `[environments.NAME]` overlay, validate, and resolve into a
//! [`Manifest`] the agent can act on.
//!
//! This crate does no I/O: callers read the file and pass its text with the directory that
//! relative paths are resolved against. Every problem is reported as a [`Diagnostic`] that
//! names the line and column and, where possible, how to fix it.

mod alerts;
mod backups;
mod diagnostic;
mod diff;
mod model;
mod overlay;
mod raw;
mod risks;
mod shell;
mod thresholds;
pub mod units;
mod validate;

pub use alerts::*;
pub use backups::*;
pub use diagnostic::{Diagnostic, LocatedDiagnostic, ManifestError, line_column};
pub use diff::changes;
pub use model::*;
pub use risks::{Risk, risks};
/// Splits a command line into words as a POSIX shell would (quotes, backslashes; no
/// expansion): how a `command` written as one string is read.
pub use shell::split as split_command_line;
pub use thresholds::*;
/// `a/./b/../c` → `a/c`, without touching the file system.
pub use validate::normalize as normalize_path;
pub use validate::{check_domain, valid_env_name, valid_name};

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
    let fail = |mut diagnostics: Vec<Diagnostic>| {
        diagnostics.sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
        ManifestError::new(source.file, source.text, diagnostics)
    };
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
    // serde stops at the first unknown key; each one found is noted, taken out, and the
    // rest read again, so every unknown key is reported at once, with everything else.
    let mut unknown = Vec::new();
    let raw = loop {
        let attempt = raw::RawManifest::deserialize(Deserializer::from(toml::Spanned::new(
            whole.clone(),
            root.clone(),
        )));
        match attempt {
            Ok(raw) => break raw,
            Err(error) => {
                let diagnostic = from_toml_error(&error);
                // A required key taken out for a bad value is not missing too.
                if !unknown.is_empty() && diagnostic.message.starts_with("missing field") {
                    return Err(fail(unknown));
                }
                let removed = unknown.len() < 100
                    && error.span().is_some_and(|span| {
                        if diagnostic.message.starts_with("unknown key") {
                            remove_key_at(&mut root, &span)
                        } else {
                            remove_entry_with_value_at(&mut root, &span)
                        }
                    });
                unknown.push(diagnostic);
                if !removed {
                    return Err(fail(unknown));
                }
            }
        }
    };
    // The checks run on a manifest that read cleanly: one with keys taken out would get
    // reports of their absence too (a typo'd `[service]` is "no services").
    if !unknown.is_empty() {
        return Err(fail(unknown));
    }
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

/// Removes the key whose span is `span`, wherever it is in the tree; whether one was found.
fn remove_key_at(table: &mut DeTable<'_>, span: &std::ops::Range<usize>) -> bool {
    if let Some(key) = table.keys().find(|k| k.span() == *span).cloned() {
        table.remove(&key);
        return true;
    }
    table.iter_mut().any(|(_, value)| {
        let value_span = value.span();
        let contains = value_span.start <= span.start && span.end <= value_span.end;
        // A `[header]` table's span need not cover its keys: always look inside tables.
        let look_inside = contains || matches!(value.get_ref(), toml::de::DeValue::Table(_));
        if !look_inside {
            return false;
        }
        match value.get_mut() {
            toml::de::DeValue::Table(inner) => remove_key_at(inner, span),
            toml::de::DeValue::Array(items) => items.iter_mut().any(|item| match item.get_mut() {
                toml::de::DeValue::Table(inner) => remove_key_at(inner, span),
                _ => false,
            }),
            _ => false,
        }
    })
}

/// Removes the entry whose value's span is `span` (a value of the wrong type), wherever it
/// is in the tree; whether one was found.
fn remove_entry_with_value_at(table: &mut DeTable<'_>, span: &std::ops::Range<usize>) -> bool {
    if let Some(key) = table
        .iter()
        .find(|(_, v)| v.span() == *span)
        .map(|(k, _)| k.clone())
    {
        table.remove(&key);
        return true;
    }
    table.iter_mut().any(|(_, value)| match value.get_mut() {
        toml::de::DeValue::Table(inner) => remove_entry_with_value_at(inner, span),
        toml::de::DeValue::Array(items) => items.iter_mut().any(|item| match item.get_mut() {
            toml::de::DeValue::Table(inner) => remove_entry_with_value_at(inner, span),
            _ => false,
        }),
        _ => false,
    })
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
    Diagnostic::new(plain_types(&message), span)
}

/// serde names Rust types (`expected i64`); a manifest's author thinks in TOML's.
fn plain_types(message: &str) -> String {
    let mut plain = message.to_owned();
    for (rust, toml) in [
        ("expected i64", "expected a whole number"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number (0 or more)"),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list, such as [\"a\", \"b\"]",
        ),
        (
            "expected a map",
            "expected a table, such as { key = \"value\" }",
        ),
    ] {
        plain = plain.replace(rust, toml);
    }
    plain
}
