//! What changes between two resolved manifests, for people: `berth rollback` shows it before
//! it brings an older release's configuration back.

use crate::Manifest;
use serde_json::Value;

/// One line per difference, from `from` (live now) to `to`: `+ path` for what `to` adds,
/// `- path` for what it removes, `~ path: old → new` for a changed value. A table present
/// on one side only is one line. Environment values are not shown, only their names. Images
/// and builds are left out: they are the code a rollback is meant to change.
pub fn changes(from: &Manifest, to: &Manifest) -> Vec<String> {
    let (Ok(from), Ok(to)) = (serde_json::to_value(from), serde_json::to_value(to)) else {
        return vec!["~ (the manifests could not be compared)".to_owned()];
    };
    let mut lines = Vec::new();
    diff(&mut lines, "", &from, &to);
    lines
}

fn diff(lines: &mut Vec<String>, path: &str, from: &Value, to: &Value) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if is_code(&here) {
                    continue;
                }
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) if x != y => diff(lines, &here, x, y),
                    (Some(x), None) if !x.is_null() => lines.push(format!("- {here}")),
                    (None, Some(y)) if !y.is_null() => lines.push(format!("+ {here}")),
                    _ => {}
                }
            }
        }
        _ if from == to => {}
        _ if from.is_null() => lines.push(format!("+ {path}")),
        _ if to.is_null() => lines.push(format!("- {path}")),
        _ if is_scalar(from) && is_scalar(to) && !path.contains(".env.") => {
            lines.push(format!("~ {path}: {} → {}", shown(from), shown(to)));
        }
        _ => lines.push(format!("~ {path}")),
    }
}

/// A service's image or build is its code, which a rollback changes by design.
fn is_code(path: &str) -> bool {
    let parts: Vec<&str> = path.split('.').collect();
    matches!(parts.as_slice(), ["services" | "accessories", _, "source"])
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Object(_) | Value::Array(_))
}

fn shown(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(59).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManifestSource, load};
    use std::path::Path;

    fn manifest(text: &str) -> Manifest {
        load(
            ManifestSource {
                file: "berth.toml",
                text,
                base_dir: Path::new("/srv/app"),
            },
            None,
        )
        .unwrap()
    }

    #[test]
    fn changes_name_what_comes_back_goes_away_and_moves() {
        let live = manifest(
            "app = \"a\"\n[services.web]\nimage = \"x:1\"\nport = 80\nreplicas = 2\nenv = { LEVEL = \"debug\", NEW = \"1\" }\nsecrets = [\"TOKEN\"]\nvolumes = [\"data:/data\"]\n[backups.db]\nsource = { volume = { name = \"data\" } }\n",
        );
        let old = manifest(
            "app = \"a\"\n[services.web]\nimage = \"x:0\"\nport = 80\nreplicas = 1\nenv = { LEVEL = \"info\" }\n[services.worker]\nimage = \"x:1\"\n",
        );
        let lines = changes(&live, &old);
        let has = |line: &str| lines.iter().any(|l| l == line);
        assert!(has("~ services.web.replicas: 2 → 1"), "{lines:#?}");
        assert!(has("- services.web.env.NEW"), "{lines:#?}");
        assert!(has("~ services.web.env.LEVEL"), "values hidden: {lines:#?}");
        assert!(has("+ services.worker"), "{lines:#?}");
        assert!(has("- backup.backups.db"), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("~ services.web.secrets")),
            "{lines:#?}"
        );
        assert!(!lines.iter().any(|l| l.contains("source")), "{lines:#?}");
        assert!(changes(&live, &live).is_empty());
    }
}
