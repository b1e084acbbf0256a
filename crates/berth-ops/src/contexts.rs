//! Remote contexts: named agents the CLI talks to (`berth context add prod ssh://deploy@host`,
//! `berth context use prod`, `--context prod`), kept in `contexts.toml` in berth's config
//! directory. A context may hold an API token, so the file is the user's alone (0600 in a 0700
//! directory), written whole to a new file and renamed over the old one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    /// The context commands use when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// `ssh://user@host[:port][/path/to/berth.sock]`, `https://host:port` or `unix:/path`.
    pub agent: String,
    /// The agent's API token (for `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The agent's certificate fingerprint, `sha256:…` (for `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a contexts file berth can read: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path} can be read by other users, and it may hold API tokens")]
    Exposed { path: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("there is no context named `{name}`{}", if known.is_empty() { String::new() } else { format!(" (known: {})", known.join(", ")) })]
    Unknown { name: String, known: Vec<String> },
    #[error(
        "`{0}` is not a context name: use lower-case letters, digits and dashes, starting with a letter"
    )]
    BadName(String),
}

/// Where berth keeps its configuration: `$BERTH_CONFIG_DIR`, else `$XDG_CONFIG_HOME/berth`,
/// else `~/.config/berth`.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_CONFIG_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("berth"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".config/berth"),
    }
}

/// A context's name: as an app's, lower-case letters, digits and dashes.
pub fn valid_name(name: &str) -> bool {
    berth_manifest::valid_name(name, 40)
}

impl Contexts {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("contexts.toml")
    }

    /// The contexts in `dir`; none when the file does not exist. A file others can read is
    /// refused: it may hold tokens.
    pub fn load(dir: &Path) -> Result<Contexts, ContextError> {
        let path = Self::path(dir);
        let shown = path.display().to_string();
        let text = match crate::files::read_text(&path, 1 << 20) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contexts::default()),
            Err(source) => {
                return Err(ContextError::Read {
                    path: shown,
                    source,
                });
            }
        };
        let mode = std::fs::metadata(&path)
            .map_err(|source| ContextError::Read {
                path: shown.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ContextError::Exposed { path: shown });
        }
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
            ContextError::Parse {
                path: shown,
                reason: match line {
                    Some(line) => format!("line {line}: {}", e.message()),
                    None => e.message().to_owned(),
                },
            }
        })
    }

    /// Writes the file: the directory made 0700 when new, a new 0600 file renamed into place.
    pub fn save(&self, dir: &Path) -> Result<(), ContextError> {
        let path = Self::path(dir);
        let fail = |source: std::io::Error| ContextError::Write {
            path: path.display().to_string(),
            source,
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(fail)?;
        }
        let text = toml::to_string(self).map_err(|e| fail(std::io::Error::other(e)))?;
        let temp = dir.join(format!(".contexts.toml.{}", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(fail)?;
        file.write_all(
            b"# berth's remote contexts (`berth context`). May hold API tokens: keep it 0600.\n",
        )
        .and_then(|()| file.write_all(text.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
        std::fs::rename(&temp, &path).map_err(fail)
    }

    pub fn get(&self, name: &str) -> Result<&Context, ContextError> {
        self.contexts
            .get(name)
            .ok_or_else(|| ContextError::Unknown {
                name: name.to_owned(),
                known: self.contexts.keys().cloned().collect(),
            })
    }

    /// The context a command uses: the one named, else the current one, else none (the local
    /// agent).
    pub fn selected<'a>(
        &'a self,
        named: Option<&'a str>,
    ) -> Result<Option<(&'a str, &'a Context)>, ContextError> {
        match named.or(self.current.as_deref()) {
            None | Some("default") => Ok(None),
            Some(name) => self.get(name).map(|c| Some((name, c))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_private_and_read_back() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("config/berth");
        let mut contexts = Contexts::default();
        contexts.contexts.insert(
            "prod".into(),
            Context {
                agent: "https://203.0.113.7:7070".into(),
                token: Some("t0ken".into()),
                fingerprint: Some(format!("sha256:{}", "ab".repeat(32))),
            },
        );
        contexts.current = Some("prod".into());
        contexts.save(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&Contexts::path(&dir)), 0o600);
        let back = Contexts::load(&dir).unwrap();
        assert_eq!(back, contexts);
        assert_eq!(back.selected(None).unwrap().unwrap().0, "prod");
        assert!(back.selected(Some("default")).unwrap().is_none());
        assert!(matches!(
            back.selected(Some("nope")),
            Err(ContextError::Unknown { .. })
        ));

        std::fs::set_permissions(Contexts::path(&dir), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(matches!(
            Contexts::load(&dir),
            Err(ContextError::Exposed { .. })
        ));
    }

    #[test]
    fn names() {
        assert!(valid_name("prod-eu-1"));
        assert!(!valid_name("Prod"));
        assert!(!valid_name("1st"));
        assert!(!valid_name(""));
    }
}
