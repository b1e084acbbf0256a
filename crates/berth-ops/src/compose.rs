//! `berth import compose`: a Compose file (the Compose Specification) becomes a `berth.toml`.
//!
//! Long-lived databases, caches, vector databases and LLM runtimes become accessories; the
//! rest become services; a published HTTP port becomes a route. Values that look secret, and
//! everything from `env_file`s and Compose `secrets`, become berth secrets: their names go into
//! the manifest, never their values (`berth secrets import .env` loads them). Whatever berth
//! cannot express is reported as a [`Finding`] with the Compose file's line, never dropped
//! silently. The result is checked as `berth check` would before it is returned.

mod ports;
mod service;

use crate::draft::{Draft, DraftRoute, DraftService};
use crate::{dotenv, interpolate, yaml};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// What the caller knows about the import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The Compose file's name as messages should show it.
    pub file_name: String,
    /// The directory the Compose file is in: its relative paths and `.env` resolve here.
    pub compose_dir: PathBuf,
    /// The directory the `berth.toml` is written to: relative paths are rewritten for it.
    pub output_dir: PathBuf,
    /// The app's name (default: the Compose `name`, else the Compose file's directory).
    pub app: Option<String>,
    /// Compose profiles to treat as active (`--profile`); services of other profiles are
    /// left out, as `docker compose up` leaves them out.
    pub profiles: Vec<String>,
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Something the Compose file asks for that the manifest does not do.
    Warning,
    /// Carried over differently, or needs nothing from the user.
    Note,
}

/// Something the import could not carry over as written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The line in the Compose file.
    pub line: Option<u64>,
    /// The Compose service it is about.
    pub service: Option<String>,
    pub message: String,
}

impl Finding {
    pub fn display<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        struct Shown<'a>(&'a Finding, &'a str);
        impl fmt::Display for Shown<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let Shown(finding, file) = self;
                match finding.line {
                    Some(line) => write!(f, "{file}:{line}: ")?,
                    None => write!(f, "{file}: ")?,
                }
                if let Some(service) = &finding.service {
                    write!(f, "service `{service}`: ")?;
                }
                f.write_str(&finding.message)
            }
        }
        Shown(self, file)
    }
}

/// A secret the manifest names, and where its value is to come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretToSet {
    pub name: String,
    /// What to run or do to set it.
    pub how: String,
}

/// What a Compose service became.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Converted {
    pub compose: String,
    /// The name in `berth.toml`, or `None` when it was left out.
    pub berth: Option<String>,
    /// `service`, `accessory`, `release_command` or `left_out`.
    pub became: &'static str,
}

#[derive(Debug, Clone)]
pub struct Import {
    pub draft: Draft,
    /// The `berth.toml` text, already checked.
    pub manifest: String,
    pub findings: Vec<Finding>,
    pub secrets: Vec<SecretToSet>,
    pub converted: Vec<Converted>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}{}: not valid YAML: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Yaml {
        file: String,
        line: Option<u64>,
        message: String,
    },
    #[error("{file}: {reason}")]
    NotCompose { file: String, reason: String },
    #[error("{file}: {reason}")]
    Dotenv { file: String, reason: String },
    #[error("{file}:{line}: {reason}")]
    Interpolation {
        file: String,
        line: u64,
        reason: String,
    },
    /// The manifest the import wrote does not pass `berth check`: a bug in the import.
    #[error(
        "the manifest written from {file} does not pass `berth check` (please report this):\n{details}"
    )]
    Unchecked { file: String, details: String },
}

/// Long-lived stateful images that become accessories (matched on the image's last path
/// component, without tag).
const ACCESSORY_IMAGES: &[&str] = &[
    "postgres",
    "postgis",
    "pgvector",
    "timescaledb",
    "timescaledb-ha",
    "mysql",
    "mariadb",
    "mongo",
    "mongodb",
    "redis",
    "redis-stack",
    "redis-stack-server",
    "valkey",
    "keydb",
    "dragonfly",
    "memcached",
    "qdrant",
    "chroma",
    "chromadb",
    "weaviate",
    "milvus",
    "meilisearch",
    "typesense",
    "elasticsearch",
    "opensearch",
    "rabbitmq",
    "nats",
    "minio",
    "clickhouse-server",
    "neo4j",
    "ollama",
    "vllm-openai",
    "text-generation-inference",
];

/// Reverse proxies whose job berth's proxy does.
const PROXY_IMAGES: &[&str] = &["nginx", "caddy", "traefik", "haproxy", "envoy"];

/// Names that make a service the app's front when several publish ports.
const FRONT_NAMES: &[&str] = &[
    "web", "frontend", "front", "app", "ui", "client", "site", "www",
];

pub fn image_name(reference: &str) -> String {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last).to_ascii_lowercase()
}

/// `.env` beside the Compose file, its values expanded; empty when there is none.
fn dotenv_file(compose_dir: &Path) -> Result<BTreeMap<String, String>, ImportError> {
    let path = compose_dir.join(".env");
    match crate::files::read_text(&path, crate::files::MAX_TEXT_FILE) {
        Ok(text) => dotenv::parse(&text)
            .and_then(|entries| dotenv::expanded(entries, &std::env::vars().collect()))
            .map(|entries| entries.into_iter().map(|e| (e.key, e.value)).collect())
            .map_err(|e| ImportError::Dotenv {
                file: path.display().to_string(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(ImportError::Dotenv {
            file: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Converts Compose text into a checked `berth.toml`.
pub fn import(text: &str, options: &ImportOptions) -> Result<Import, ImportError> {
    let file = options.file_name.clone();
    let doc = yaml::parse(text).map_err(|e| ImportError::Yaml {
        file: file.clone(),
        line: e.line,
        message: e.message,
    })?;
    if !doc.is_map() {
        return Err(ImportError::NotCompose {
            file,
            reason: "the file is not a mapping of top-level keys such as `services:`".into(),
        });
    }
    let Some(services) = doc.get("services").filter(|s| s.is_map()) else {
        return Err(ImportError::NotCompose {
            file,
            reason: "there is no `services:` mapping: is this a Compose file?".into(),
        });
    };
    // What Compose interpolates with: `.env` beside the Compose file, the shell's environment
    // over it.
    let dotenv = dotenv_file(&options.compose_dir)?;
    let in_dotenv: BTreeSet<String> = dotenv.keys().cloned().collect();
    let mut vars = dotenv;
    vars.extend(std::env::vars());
    let mut cx = Context {
        options,
        vars,
        in_dotenv,
        literal_secrets: BTreeMap::new(),
        findings: Vec::new(),
        secrets: BTreeMap::new(),
        volumes: BTreeMap::new(),
        secret_defs: BTreeMap::new(),
    };
    cx.top_level(&doc)?;

    let mut converted = Vec::new();
    let mut drafts: Vec<service::Converted> = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for (key, node) in services.entries() {
        let compose_name = key.name.clone();
        if let Some(profiles) = node.get("profiles") {
            let listed: Vec<String> = profiles.items().iter().filter_map(|p| p.scalar()).collect();
            if !listed.iter().any(|p| options.profiles.contains(p)) {
                cx.note(
                    profiles.line,
                    Some(&compose_name),
                    format!(
                        "left out: it belongs to profile {} (pass --profile {} to include it)",
                        listed.join(", "),
                        listed.first().map(String::as_str).unwrap_or("NAME")
                    ),
                );
                converted.push(Converted {
                    compose: compose_name,
                    berth: None,
                    became: "left_out",
                });
                continue;
            }
        }
        let berth_name = berth_name(&compose_name);
        if berth_name != compose_name {
            cx.note(
                key.line,
                Some(&compose_name),
                format!(
                    "named `{berth_name}` in berth.toml (lower-case letters, digits and dashes): other containers reach it as `{berth_name}`, so update any address that says `{compose_name}`"
                ),
            );
        }
        if names.values().any(|n| n == &berth_name) {
            cx.warn(
                key.line,
                Some(&compose_name),
                format!("left out: its berth name `{berth_name}` is taken by another service"),
            );
            continue;
        }
        names.insert(compose_name.clone(), berth_name.clone());
        if let Some(done) = cx.service(&compose_name, &berth_name, key.line, node)? {
            drafts.push(done);
        } else {
            names.remove(&compose_name);
            converted.push(Converted {
                compose: compose_name,
                berth: None,
                became: "left_out",
            });
        }
    }

    let release_commands = cx.fold_one_off_services(&mut drafts);
    cx.wire_dependencies(&mut drafts, &names);
    cx.routes(&mut drafts);

    let app = options
        .app
        .clone()
        .or_else(|| {
            doc.get("name")
                .and_then(yaml::Node::scalar)
                .map(|n| berth_name(&n))
        })
        .unwrap_or_else(|| {
            let dir = options
                .compose_dir
                .canonicalize()
                .unwrap_or_else(|_| options.compose_dir.clone());
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            berth_name(&name)
        });
    let app = if app.is_empty() {
        "app".to_owned()
    } else {
        app
    };

    let mut draft = Draft {
        app,
        header: vec![
            format!("Imported from {file} by `berth import compose`."),
            "Each table names the Compose service it came from; the import printed what it could not carry over."
                .into(),
            if options.compose_dir.join(".env").is_file() {
                "Check it with `berth check`, set the secrets it names (`berth secrets import .env`), then `berth deploy`.".into()
            } else {
                "Check it with `berth check`, set the secrets it names (`berth secrets set NAME`), then `berth deploy`.".into()
            },
        ],
        ..Draft::default()
    };
    for done in drafts {
        let became = if done.accessory {
            "accessory"
        } else {
            "service"
        };
        converted.push(Converted {
            compose: done.compose_name.clone(),
            berth: Some(done.name.clone()),
            became,
        });
        if done.accessory {
            draft.accessories.insert(done.name, done.draft);
        } else {
            draft.services.insert(done.name, done.draft);
        }
    }
    for (compose, service) in release_commands {
        converted.push(Converted {
            compose,
            berth: Some(service),
            became: "release_command",
        });
    }
    if draft.services.is_empty() && draft.accessories.is_empty() {
        let why: Vec<String> = cx
            .findings
            .iter()
            .filter(|f| f.message.starts_with("left out"))
            .map(|f| f.display(&file).to_string())
            .collect();
        return Err(ImportError::NotCompose {
            file,
            reason: if why.is_empty() {
                "it defines no service".into()
            } else {
                format!("no service could be converted:\n  {}", why.join("\n  "))
            },
        });
    }
    draft.footer = backup_suggestions(&draft);
    let manifest = draft
        .checked("berth.toml", &options.output_dir)
        .map_err(|details| ImportError::Unchecked {
            file: file.clone(),
            details,
        })?;
    converted.sort_by(|a, b| a.compose.cmp(&b.compose));
    cx.findings.sort_by_key(|f| f.line);
    // A value merged into several services (an anchor) is said once, at its line.
    let mut said = BTreeSet::new();
    cx.findings
        .retain(|f| said.insert((f.line, f.message.clone())));
    Ok(Import {
        draft,
        manifest,
        findings: cx.findings,
        secrets: cx.secrets.into_values().collect(),
        converted,
    })
}

/// Commented `[backups.*]` tables for what the accessories keep: databases dumped with their
/// own tools, other accessories' volumes copied. Written commented out: backups also want an
/// off-server destination the import cannot know.
fn backup_suggestions(draft: &Draft) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, accessory) in &draft.accessories {
        let image = accessory
            .image
            .as_deref()
            .map(image_name)
            .unwrap_or_default();
        let env = |key: &str| accessory.env.get(key).cloned();
        let has_secret = |key: &str| accessory.secrets.iter().any(|s| s == key);
        let source = match image.as_str() {
            "postgres" | "postgis" | "pgvector" | "timescaledb" | "timescaledb-ha" => {
                let mut fields = vec![format!("service = {}", crate::draft::quote(name))];
                // The image's own default: the user's name, else `postgres`.
                let db = env("POSTGRES_DB")
                    .or_else(|| env("POSTGRES_USER"))
                    .unwrap_or_else(|| "postgres".into());
                fields.push(format!("database = {}", crate::draft::quote(&db)));
                if let Some(user) = env("POSTGRES_USER") {
                    fields.push(format!("user = {}", crate::draft::quote(&user)));
                }
                if has_secret("POSTGRES_PASSWORD") {
                    fields.push("password_secret = \"POSTGRES_PASSWORD\"".into());
                }
                format!("{{ postgres = {{ {} }} }}", fields.join(", "))
            }
            "mysql" | "mariadb"
                if env("MYSQL_DATABASE")
                    .or_else(|| env("MARIADB_DATABASE"))
                    .is_some() =>
            {
                let mut fields = vec![format!("service = {}", crate::draft::quote(name))];
                if let Some(db) = env("MYSQL_DATABASE").or_else(|| env("MARIADB_DATABASE")) {
                    fields.push(format!("database = {}", crate::draft::quote(&db)));
                }
                for key in ["MYSQL_ROOT_PASSWORD", "MARIADB_ROOT_PASSWORD"] {
                    if has_secret(key) {
                        fields.push(format!("user = \"root\", password_secret = \"{key}\""));
                        break;
                    }
                }
                format!("{{ mysql = {{ {} }} }}", fields.join(", "))
            }
            _ => match accessory.volumes.iter().find_map(|v| {
                let (source, _) = v.split_once(':')?;
                (!source.starts_with(['.', '/'])).then(|| source.to_owned())
            }) {
                Some(volume) => format!(
                    "{{ volume = {{ name = {}, pause = true }} }}",
                    crate::draft::quote(&volume)
                ),
                None => continue,
            },
        };
        if lines.is_empty() {
            lines.push("Back up what the accessories keep (uncomment; add `to = [...]` for an off-server copy):".into());
        }
        lines.push(String::new());
        lines.push(format!("[backups.{name}]"));
        lines.push(format!("source = {source}"));
        lines.push("schedule = \"0 3 * * *\"".into());
        lines.push("keep = { daily = 7, weekly = 4 }".into());
    }
    lines
}

/// A Compose service name as a berth name: lower case, dashes for anything else.
pub fn berth_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.starts_with(|c: char| c.is_ascii_digit()) {
        out.remove(0);
    }
    out.truncate(32);
    out.trim_end_matches('-').to_owned()
}

/// Whether a variable's name says it holds a credential.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE",
        "CREDENTIAL",
        "ACCESS_KEY",
        "_PASS",
        "AUTH",
        "SALT",
    ]
    .iter()
    .any(|word| upper.contains(word))
        || upper.ends_with("_KEY")
        || upper.ends_with("_DSN")
        || upper.ends_with("PASS")
        || upper.ends_with("_PWD")
}

/// Whether a value is a credential by its shape: API keys of well-known services, JSON web
/// tokens, a password in a URL.
pub fn value_looks_secret(value: &str) -> bool {
    let prefixes = [
        "sk-",
        "sk_live_",
        "rk_live_",
        "ghp_",
        "gho_",
        "ghs_",
        "github_pat_",
        "glpat-",
        "xoxb-",
        "xoxp-",
        "AKIA",
        "AIza",
        "hf_",
    ];
    let jwt = value.starts_with("eyJ") && value.split('.').count() == 3;
    (prefixes.iter().any(|p| value.starts_with(p)) && value.len() >= 16)
        || jwt
        || value_has_credentials(value)
}

/// A flag such as `MYSQL_RANDOM_ROOT_PASSWORD: "1"`: not a secret, whatever its name.
pub fn is_flag(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "" | "0" | "1" | "true" | "false" | "yes" | "no" | "on" | "off"
    )
}

/// Words of a command that carry a password in the clear (`--requirepass x`, `-u user:pw`,
/// `PASSWORD=x`), for a warning: berth writes commands into the manifest as they are.
pub fn command_reveals_secret(words: &[String]) -> bool {
    words.iter().enumerate().any(|(i, word)| {
        let lower = word.to_ascii_lowercase();
        let next_is_value = words.get(i + 1).is_some_and(|n| !n.starts_with('-'));
        (matches!(
            lower.as_str(),
            "--requirepass" | "--password" | "--pass" | "-u" | "--user" | "--token" | "--api-key"
        ) && next_is_value
            && (lower != "-u" && lower != "--user" || words[i + 1].contains(':')))
            || lower.starts_with("--password=")
            || lower.starts_with("--requirepass=")
            || lower.starts_with("--token=")
            || (lower.contains("password=") && !lower.ends_with('='))
            || value_has_credentials(word)
    })
}

/// Whether a value carries a password in a URL (`scheme://user:password@host`).
fn value_has_credentials(value: &str) -> bool {
    value.split_once("://").is_some_and(|(_, rest)| {
        let authority = rest.split('/').next().unwrap_or(rest);
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

struct Context<'a> {
    options: &'a ImportOptions,
    vars: BTreeMap<String, String>,
    /// The names `.env` sets (the values to load with `berth secrets import .env`).
    in_dotenv: BTreeSet<String>,
    /// Secrets whose value is written in the Compose file: the value, its service and line.
    literal_secrets: BTreeMap<String, (String, String, u64)>,
    findings: Vec<Finding>,
    secrets: BTreeMap<String, SecretToSet>,
    /// Top-level named volumes: their berth name and whether berth can own them.
    volumes: BTreeMap<String, u64>,
    /// Top-level secrets: where their value is.
    secret_defs: BTreeMap<String, String>,
}

impl Context<'_> {
    fn warn(&mut self, line: u64, service: Option<&str>, message: String) {
        self.findings.push(Finding {
            severity: Severity::Warning,
            line: Some(line),
            service: service.map(str::to_owned),
            message,
        });
    }

    fn note(&mut self, line: u64, service: Option<&str>, message: String) {
        self.findings.push(Finding {
            severity: Severity::Note,
            line: Some(line),
            service: service.map(str::to_owned),
            message,
        });
    }

    fn secret(&mut self, name: &str, how: String) {
        self.secrets
            .entry(name.to_owned())
            .or_insert_with(|| SecretToSet {
                name: name.to_owned(),
                how,
            });
    }

    /// A scalar with Compose's interpolation applied.
    fn text(&mut self, node: &yaml::Node, service: Option<&str>) -> Result<String, ImportError> {
        let raw = node.scalar().unwrap_or_default();
        let done = interpolate::interpolate(&raw, &self.vars).map_err(|reason| {
            ImportError::Interpolation {
                file: self.options.file_name.clone(),
                line: node.line,
                reason,
            }
        })?;
        for name in &done.missing {
            self.warn(
                node.line,
                service,
                format!("${{{name}}} is not set in .env and has no default: it was left empty, as Compose would"),
            );
        }
        Ok(done.text)
    }

    fn top_level(&mut self, doc: &yaml::Node) -> Result<(), ImportError> {
        for (key, node) in doc.entries() {
            match key.name.as_str() {
                "services" | "name" => {}
                "version" => self.note(
                    key.line,
                    None,
                    "`version` is obsolete in the Compose Specification; nothing to carry over"
                        .into(),
                ),
                "volumes" => {
                    for (name, def) in node.entries() {
                        self.volumes.insert(name.name.clone(), name.line);
                        for (opt, value) in def.entries() {
                            match opt.name.as_str() {
                                "external" if value.as_bool() == Some(true) => self.warn(
                                    opt.line,
                                    None,
                                    format!("volume `{}` is external (made outside Compose): berth makes its own volume for the app; copy the data into it or mount the directory with a bind mount", name.name),
                                ),
                                "name" => self.warn(
                                    opt.line,
                                    None,
                                    format!("volume `{}` has a fixed Docker name: berth names the app's volumes itself (an existing volume's data is not reused)", name.name),
                                ),
                                "driver" | "driver_opts" => self.warn(
                                    opt.line,
                                    None,
                                    format!("volume `{}`: `{}` is not carried over: berth uses Docker's local volumes", name.name, opt.name),
                                ),
                                "labels" => {}
                                other if other.starts_with("x-") => {}
                                other => self.warn(opt.line, None, format!("volume `{}`: `{other}` is not carried over", name.name)),
                            }
                        }
                    }
                }
                "secrets" => {
                    for (name, def) in node.entries() {
                        let how = if let Some(file) = def.get("file") {
                            let path = self.text(file, None)?;
                            format!("berth secrets set {} < {path}", secret_name(&name.name))
                        } else if let Some(var) = def.get("environment") {
                            let var = var.scalar().unwrap_or_default();
                            if self.in_dotenv.contains(&var) {
                                format!(
                                    "the value of {var} in .env: berth secrets set {}",
                                    secret_name(&name.name)
                                )
                            } else {
                                format!(
                                    "the value of ${var}: berth secrets set {}",
                                    secret_name(&name.name)
                                )
                            }
                        } else if def.get("external").and_then(yaml::Node::as_bool) == Some(true) {
                            format!(
                                "an external secret (made outside Compose): berth secrets set {}",
                                secret_name(&name.name)
                            )
                        } else {
                            format!("berth secrets set {}", secret_name(&name.name))
                        };
                        self.secret_defs.insert(name.name.clone(), how);
                    }
                }
                "networks" => self.note(
                    key.line,
                    None,
                    "networks are not carried over: berth puts all of an app's services and accessories on one private network, where each is reached by its name".into(),
                ),
                "configs" => self.warn(
                    key.line,
                    None,
                    "`configs` are not carried over: mount the file with a bind volume (./file:/path:ro) or make it a secret file (`secret_files`)".into(),
                ),
                "include" => self.warn(
                    key.line,
                    None,
                    "`include` is not followed: import each included Compose file and merge the services by hand".into(),
                ),
                other if other.starts_with("x-") => {}
                other => self.warn(
                    key.line,
                    None,
                    format!("top-level `{other}` is not part of the Compose Specification berth knows; not carried over"),
                ),
            }
        }
        Ok(())
    }

    /// A one-off service that another runs after (`condition: service_completed_successfully`)
    /// and that runs the same code becomes that service's `release_command`: berth runs it with
    /// the new image before traffic moves, which is what such a service is for (migrations).
    fn fold_one_off_services(
        &mut self,
        drafts: &mut Vec<service::Converted>,
    ) -> Vec<(String, String)> {
        let mut folded = Vec::new();
        let mut index = 0;
        while index < drafts.len() {
            let candidate = &drafts[index];
            let waiter = drafts.iter().position(|d| {
                !d.accessory
                    && d.completed_first
                        .iter()
                        .any(|(dep, _)| dep == &candidate.compose_name)
            });
            let same_code = |a: &DraftService, b: &DraftService| {
                (a.image.is_some() && a.image == b.image)
                    || (a.build.is_some()
                        && a.build.as_ref().map(|x| (&x.context, &x.dockerfile))
                            == b.build.as_ref().map(|x| (&x.context, &x.dockerfile)))
            };
            match waiter {
                Some(w)
                    if !candidate.accessory
                        && candidate.draft.port.is_none()
                        && candidate.draft.command.is_some()
                        && drafts[w].draft.release_command.is_none()
                        && same_code(&candidate.draft, &drafts[w].draft) =>
                {
                    let one_off = drafts.remove(index);
                    let w = if w > index { w - 1 } else { w };
                    let line = drafts[w]
                        .completed_first
                        .iter()
                        .find(|(dep, _)| dep == &one_off.compose_name)
                        .map_or(0, |(_, line)| *line);
                    self.note(
                        line,
                        Some(&drafts[w].compose_name),
                        format!(
                            "`{}` runs to completion before it with the same image: it became `{}`'s release_command, which berth runs with each new image before traffic moves",
                            one_off.compose_name, drafts[w].name
                        ),
                    );
                    let waiter_draft = &mut drafts[w].draft;
                    waiter_draft.release_command = one_off.draft.command.clone();
                    for secret in &one_off.draft.secrets {
                        if !waiter_draft.secrets.contains(secret) {
                            waiter_draft.secrets.push(secret.clone());
                        }
                    }
                    for volume in &one_off.draft.volumes {
                        if !waiter_draft.volumes.contains(volume) {
                            waiter_draft.volumes.push(volume.clone());
                        }
                    }
                    folded.push((one_off.compose_name.clone(), drafts[w].name.clone()));
                    // Anyone else waiting for it now waits for nothing: the release command
                    // runs before any new container starts.
                    for other in drafts.iter_mut() {
                        other
                            .completed_first
                            .retain(|(dep, _)| dep != &one_off.compose_name);
                        other
                            .depends_on
                            .retain(|(dep, _)| dep != &one_off.compose_name);
                    }
                }
                _ => index += 1,
            }
        }
        for draft in drafts.iter() {
            for (dep, line) in &draft.completed_first {
                self.warn(
                    *line,
                    Some(&draft.compose_name),
                    format!("waits for `{dep}` to complete: berth starts services once and keeps them running; if `{dep}` is a one-off task make its command a `release_command`"),
                );
            }
        }
        folded
    }

    fn wire_dependencies(
        &mut self,
        drafts: &mut [service::Converted],
        names: &BTreeMap<String, String>,
    ) {
        let accessories: BTreeSet<String> = drafts
            .iter()
            .filter(|d| d.accessory)
            .map(|d| d.compose_name.clone())
            .collect();
        let present: BTreeSet<String> = drafts.iter().map(|d| d.compose_name.clone()).collect();
        for draft in drafts.iter_mut() {
            let mut deps = Vec::new();
            for (dep, line) in &draft.depends_on {
                if !present.contains(dep) {
                    let why = if names.contains_key(dep) {
                        "it was folded into another service"
                    } else {
                        "it is not imported (another profile, or not convertible)"
                    };
                    self.note(
                        *line,
                        Some(&draft.compose_name),
                        format!("depends on `{dep}`, dropped: {why}"),
                    );
                    continue;
                }
                if draft.accessory && !accessories.contains(dep) {
                    self.warn(
                        *line,
                        Some(&draft.compose_name),
                        format!("depends on service `{dep}`: berth starts accessories before services, so an accessory can only wait for other accessories; dropped"),
                    );
                    continue;
                }
                let name = names.get(dep).cloned().unwrap_or_else(|| berth_name(dep));
                if !deps.contains(&name) {
                    deps.push(name);
                }
            }
            draft.draft.depends_on = deps;
        }
    }

    /// Published HTTP ports become routes. With one, it serves every host name; with several,
    /// the front (port 80/443, else a front-like name, else the first) does, and the others get
    /// a `NAME.localhost` placeholder the user replaces with a domain.
    fn routes(&mut self, drafts: &mut [service::Converted]) {
        let published: Vec<usize> = drafts
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.accessory && d.published_http.is_some())
            .map(|(i, _)| i)
            .collect();
        let front = published
            .iter()
            .copied()
            .find(|&i| {
                drafts[i]
                    .published_http
                    .as_ref()
                    .is_some_and(|p| matches!(p.host_port, Some(80 | 443)))
            })
            .or_else(|| {
                published
                    .iter()
                    .copied()
                    .find(|&i| FRONT_NAMES.contains(&drafts[i].name.as_str()))
            })
            .or_else(|| published.first().copied());
        for &i in &published {
            let d = &mut drafts[i];
            let Some(publish) = d.published_http.clone() else {
                continue;
            };
            if Some(i) == front {
                d.draft.route = Some(DraftRoute {
                    note: Some(format!(
                        "Was published on port {}: berth's proxy serves it on 80/443. Add your domains for automatic HTTPS.",
                        publish
                            .host_port
                            .map_or_else(|| "(any)".to_owned(), |p| p.to_string())
                    )),
                    ..DraftRoute::default()
                });
            } else {
                let placeholder = format!("{}.localhost", d.name);
                d.draft.route = Some(DraftRoute {
                    domains: vec![placeholder.clone()],
                    path: None,
                    tls_off: true,
                    note: Some("Replace the placeholder with this service's domain and remove tls = \"off\".".into()),
                });
                let line = publish.line;
                let name = d.compose_name.clone();
                self.warn(
                    line,
                    Some(&name),
                    format!("was published on its own port: berth routes by host name, so it is routed at `{placeholder}` until you give it a domain (or a path, route = {{ path = \"/api\" }})"),
                );
            }
        }
    }
}

/// The path of a healthcheck that fetches `http://localhost:PORT/path` (curl or wget).
pub(crate) fn local_http_path(command: &str, port: u16) -> Option<String> {
    for host in ["localhost", "127.0.0.1", "0.0.0.0"] {
        for scheme in ["http://", ""] {
            let prefix = format!("{scheme}{host}");
            let Some(at) = command.find(&prefix) else {
                continue;
            };
            let rest = &command[at + prefix.len()..];
            let (found_port, rest) = match rest.strip_prefix(':') {
                Some(after) => {
                    let digits = after
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(after.len());
                    (after[..digits].parse::<u16>().ok(), &after[digits..])
                }
                None => (Some(80), rest),
            };
            if found_port != Some(port) {
                continue;
            }
            let end = rest
                .find(|c: char| {
                    c.is_whitespace() || matches!(c, '"' | '\'' | '|' | ';' | '&' | ')')
                })
                .unwrap_or(rest.len());
            let path = &rest[..end];
            return Some(if path.is_empty() {
                "/".into()
            } else if path.starts_with('/') {
                path.to_owned()
            } else {
                continue;
            });
        }
    }
    None
}

/// A Compose secret's name as a berth secret name (letters, digits, underscores).
pub fn secret_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(berth_name("celery_worker"), "celery-worker");
        assert_eq!(berth_name("API"), "api");
        assert_eq!(berth_name("2fa-svc"), "fa-svc");
        assert_eq!(secret_name("db-password"), "db_password");
        assert_eq!(
            image_name("docker.io/library/postgres:16-alpine"),
            "postgres"
        );
        assert_eq!(image_name("qdrant/qdrant@sha256:abc"), "qdrant");
        assert_eq!(image_name("localhost:5000/team/api:1"), "api");
    }

    #[test]
    fn secret_looking_names_and_values() {
        assert!(looks_secret("POSTGRES_PASSWORD"));
        assert!(looks_secret("JWT_SECRET_KEY"));
        assert!(looks_secret("OPENAI_API_KEY"));
        assert!(looks_secret("SENTRY_DSN"));
        assert!(!looks_secret("LOG_LEVEL"));
        assert!(!looks_secret("KEYCLOAK_URL"));
        assert!(value_has_credentials("postgres://app:s3cret@db:5432/app"));
        assert!(!value_has_credentials("redis://cache:6379/0"));
        assert!(!value_has_credentials("http://user@host/"));
    }
}
