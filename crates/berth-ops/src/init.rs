//! `berth init`: a first `berth.toml` from what an app's directory holds.
//!
//! A Compose file wins (it says the most); otherwise each Dockerfile becomes a service: the
//! root one `web`, one in a subdirectory named after it. The port comes from the Dockerfile
//! (`EXPOSE`, `ENV PORT`, the command's `--port`), else from the framework the directory
//! looks like; the health path from the Dockerfile's `HEALTHCHECK`, else from a route such as
//! `"/health"` found in the source. What was found, and why, is written beside each key.

use crate::compose::{self, Import, ImportError, ImportOptions, berth_name};
use crate::draft::{Draft, DraftBuild, DraftHealthcheck, DraftRoute, DraftService};
use std::path::{Path, PathBuf};

/// Compose file names, in the order `docker compose` looks for them.
pub const COMPOSE_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// What `berth init` wrote its manifest from.
#[derive(Debug)]
pub enum Init {
    /// The directory has a Compose file: the manifest is its import.
    Compose { file: String, import: Box<Import> },
    /// The manifest was written from the Dockerfiles found.
    Dockerfiles {
        manifest: String,
        /// One line per thing found, for the user.
        found: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "no Dockerfile or Compose file in {dir}: berth deploys images built from a Dockerfile (or pulled: write `image = \"...\"` in berth.toml by hand)"
    )]
    NothingToDeploy { dir: String },
    #[error(transparent)]
    Compose(#[from] ImportError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The manifest written does not pass `berth check`: a bug in `berth init`.
    #[error("the manifest berth init wrote does not pass `berth check` (please report this):\n{0}")]
    Unchecked(String),
}

/// One Dockerfile and the service it becomes.
struct Found {
    name: String,
    context: String,
    dockerfile: Option<String>,
    path: PathBuf,
}

pub fn init(dir: &Path, app: Option<String>) -> Result<Init, InitError> {
    for name in COMPOSE_FILES {
        let path = dir.join(name);
        if path.is_file() {
            let text =
                crate::files::read_text(&path, crate::files::MAX_TEXT_FILE).map_err(|source| {
                    InitError::Read {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
            let options = ImportOptions {
                file_name: (*name).to_owned(),
                compose_dir: dir.to_path_buf(),
                output_dir: dir.to_path_buf(),
                app,
                profiles: Vec::new(),
            };
            let import = compose::import(&text, &options)?;
            return Ok(Init::Compose {
                file: (*name).to_owned(),
                import: Box::new(import),
            });
        }
    }

    let dockerfiles = find_dockerfiles(dir);
    if dockerfiles.is_empty() {
        return Err(InitError::NothingToDeploy {
            dir: dir.display().to_string(),
        });
    }
    let app = app.unwrap_or_else(|| {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let name = canonical
            .file_name()
            .map(|n| berth_name(&n.to_string_lossy()))
            .unwrap_or_default();
        if name.is_empty() { "app".into() } else { name }
    });
    let mut draft = Draft {
        app,
        header: vec![
            "Written by `berth init`. `berth check` validates it; `berth deploy` deploys it."
                .into(),
            "Every key is explained in the README's manifest reference.".into(),
        ],
        ..Draft::default()
    };
    let mut found_lines = Vec::new();
    let mut web_services = Vec::new();
    let mut hints = Hints::default();
    for found in &dockerfiles {
        let text = crate::files::read_text(&found.path, crate::files::MAX_TEXT_FILE).map_err(
            |source| InitError::Read {
                path: found.path.display().to_string(),
                source,
            },
        )?;
        let facts = dockerfile_facts(&text);
        let context_dir = dir.join(&found.context);
        hints.read(&context_dir);
        let shown = found
            .path
            .strip_prefix(dir)
            .unwrap_or(&found.path)
            .display()
            .to_string();
        let mut service = DraftService {
            build: Some(DraftBuild {
                context: found.context.clone(),
                dockerfile: found.dockerfile.clone(),
                ..DraftBuild::default()
            }),
            ..DraftService::default()
        };
        let port = facts
            .port
            .map(|(p, why)| (p, why.to_owned()))
            .or_else(|| framework_port(&context_dir).map(|(p, why)| (p, why.to_owned())));
        match &port {
            Some((port, why)) => {
                service.port = Some(*port);
                service
                    .comment
                    .push(format!("Built from {shown}; port {port} from {why}."));
                found_lines.push(format!(
                    "{shown}: service `{}`, port {port} ({why})",
                    found.name
                ));
            }
            None => {
                service.comment.push(format!("Built from {shown}; no port found, so a worker (no HTTP). Add `port = N` and a route if it serves HTTP."));
                found_lines.push(format!(
                    "{shown}: service `{}`, no port found (a worker)",
                    found.name
                ));
            }
        }
        if let Some(warning) = loopback_only(&facts.command) {
            service.comment.push(format!(
                "Warning: {warning}, or the health gate never sees it."
            ));
            found_lines.push(format!("  ! {warning}"));
        }
        if let Some(port) = service.port {
            let path = facts
                .health_path(port)
                .map(|p| (p, "the Dockerfile's HEALTHCHECK".to_owned()))
                .or_else(|| {
                    source_health_path(&context_dir)
                        .map(|(p, file)| (p, format!("a route in {file}")))
                });
            match path {
                Some((path, why)) => {
                    found_lines.push(format!("  health check GET {path} ({why})"));
                    service.comment.push(format!(
                        "Health check {path} from {why}: berth waits for it before moving traffic."
                    ));
                    service.healthcheck = Some(DraftHealthcheck {
                        path: Some(path),
                        ..DraftHealthcheck::default()
                    });
                }
                None => {
                    service.healthcheck_hint = Some("healthcheck = { path = \"/health\" }   # no health route found: berth waits for any answer below 500 on /".into());
                }
            }
            web_services.push(found.name.clone());
        }
        draft.services.insert(found.name.clone(), service);
    }
    // One web service serves every host; the others get placeholders to replace.
    let front = web_services
        .iter()
        .find(|n| matches!(n.as_str(), "web" | "frontend" | "app" | "ui"))
        .or_else(|| web_services.first())
        .cloned();
    for name in &web_services {
        if let Some(service) = draft.services.get_mut(name) {
            service.route = Some(if Some(name) == front.as_ref() {
                DraftRoute {
                    note: Some("Every host name reaches it; list yours for automatic HTTPS: domains = [\"example.com\"]".into()),
                    ..DraftRoute::default()
                }
            } else {
                DraftRoute {
                    domains: vec![format!("{name}.localhost")],
                    tls_off: true,
                    note: Some("Replace the placeholder with this service's domain (or route a path: path = \"/api\") and remove tls = \"off\".".into()),
                    ..DraftRoute::default()
                }
            });
        }
    }
    draft.footer = hints.footer();
    let manifest = draft
        .checked("berth.toml", dir)
        .map_err(InitError::Unchecked)?;
    Ok(Init::Dockerfiles {
        manifest,
        found: found_lines,
    })
}

fn find_dockerfiles(dir: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    for name in [
        "Dockerfile",
        "Containerfile",
        "Dockerfile.prod",
        "Dockerfile.production",
    ] {
        if dir.join(name).is_file() {
            found.push(Found {
                name: "web".into(),
                context: ".".into(),
                dockerfile: (name != "Dockerfile").then(|| name.to_owned()),
                path: dir.join(name),
            });
            break;
        }
    }
    // `docker/Dockerfile` is built with the whole directory as its context.
    if found.is_empty() {
        for sub in ["docker", ".docker", "deploy"] {
            let path = dir.join(sub).join("Dockerfile");
            if path.is_file() {
                found.push(Found {
                    name: "web".into(),
                    context: ".".into(),
                    dockerfile: Some(format!("{sub}/Dockerfile")),
                    path,
                });
                break;
            }
        }
    }
    // Each directory one or two levels down with its own Dockerfile (apps/api, frontend).
    let mut subdirs: Vec<PathBuf> = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .min_depth(2)
        .max_depth(3)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !skipped_dir(e.file_name().to_string_lossy().as_ref()))
        .flatten()
    {
        if entry.file_type().is_file()
            && entry.file_name() == "Dockerfile"
            && let Some(parent) = entry.path().parent()
        {
            let relative = parent.strip_prefix(dir).unwrap_or(parent);
            let first = relative
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            if matches!(first.as_deref(), Some("docker" | ".docker" | "deploy")) {
                continue;
            }
            subdirs.push(relative.to_path_buf());
        }
    }
    for relative in subdirs {
        let base = relative
            .file_name()
            .map(|n| berth_name(&n.to_string_lossy()))
            .unwrap_or_default();
        let name = if base.is_empty() || found.iter().any(|f| f.name == base) {
            continue;
        } else {
            base
        };
        found.push(Found {
            name,
            context: format!("./{}", relative.display()),
            dockerfile: None,
            path: dir.join(&relative).join("Dockerfile"),
        });
    }
    found
}

fn skipped_dir(name: &str) -> bool {
    matches!(
        name,
        "node_modules"
            | ".git"
            | "target"
            | "vendor"
            | "dist"
            | "build"
            | ".venv"
            | "venv"
            | "__pycache__"
            | ".next"
            | "tmp"
            | "coverage"
    )
}

/// What the last stage of a Dockerfile says.
#[derive(Debug, Default, PartialEq)]
struct DockerfileFacts {
    port: Option<(u16, &'static str)>,
    healthcheck: Option<String>,
    /// The last stage's CMD and ENTRYPOINT, as written.
    command: String,
}

/// A server the command starts on loopback only, where berth's proxy cannot reach it.
fn loopback_only(command: &str) -> Option<&'static str> {
    let has = |word: &str| command.contains(word);
    if has("uvicorn") && !has("--host") {
        Some(
            "uvicorn listens on 127.0.0.1 unless told otherwise: add `--host 0.0.0.0` to its command",
        )
    } else if has("flask") && has(" run") && !has("--host") {
        Some("`flask run` listens on 127.0.0.1 unless told otherwise: add `--host 0.0.0.0`")
    } else if (has("manage.py") && has("runserver")) && !has("0.0.0.0") {
        Some(
            "`manage.py runserver` listens on 127.0.0.1 unless told otherwise: run it on 0.0.0.0:8000 (or use gunicorn)",
        )
    } else {
        None
    }
}

impl DockerfileFacts {
    fn health_path(&self, port: u16) -> Option<String> {
        let check = self.healthcheck.as_deref()?;
        crate::compose::local_http_path(check, port)
    }
}

fn dockerfile_facts(text: &str) -> DockerfileFacts {
    // Join continuation lines, keep only the last stage.
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    let mut stage: Vec<&str> = Vec::new();
    for line in joined.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if instruction(trimmed).0 == "FROM" {
            stage.clear();
        }
        stage.push(trimmed);
    }
    let mut facts = DockerfileFacts::default();
    let mut args: Vec<(String, String)> = Vec::new();
    let mut expose = None;
    let mut env_port = None;
    let mut command_port = None;
    for line in stage {
        let (word, rest) = instruction(line);
        match word.as_str() {
            "ARG" | "ENV" => {
                for assignment in rest.split_whitespace() {
                    if let Some((k, v)) = assignment.split_once('=') {
                        let v = v.trim_matches('"').to_owned();
                        if word == "ENV" && k == "PORT" {
                            env_port = v.parse().ok();
                        }
                        args.push((k.to_owned(), v));
                    }
                }
                // `ENV PORT 8000` (the old form)
                if let Some(("PORT", v)) = rest.split_once(' ').map(|(k, v)| (k, v.trim()))
                    && word == "ENV"
                {
                    env_port = v.parse().ok();
                }
            }
            "EXPOSE" if expose.is_none() => {
                let first = rest.split_whitespace().next().unwrap_or_default();
                let first = first.split('/').next().unwrap_or_default();
                let value = first
                    .strip_prefix("${")
                    .and_then(|v| v.strip_suffix('}'))
                    .or_else(|| first.strip_prefix('$'))
                    .and_then(|name| {
                        args.iter()
                            .rev()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.as_str())
                    })
                    .unwrap_or(first);
                expose = value.parse::<u16>().ok().filter(|p| *p > 0);
            }
            "CMD" | "ENTRYPOINT" => {
                facts.command.push_str(rest);
                facts.command.push(' ');
                if let Some(port) = port_in_command(rest) {
                    command_port = Some(port);
                }
            }
            "HEALTHCHECK" => facts.healthcheck = Some(rest.to_owned()),
            _ => {}
        }
    }
    facts.port = expose
        .map(|p| (p, "the Dockerfile's EXPOSE"))
        .or(env_port.map(|p| (p, "the Dockerfile's ENV PORT")))
        .or(command_port.map(|p| (p, "the Dockerfile's command")));
    facts
}

fn instruction(line: &str) -> (String, &str) {
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    (word.to_ascii_uppercase(), rest.trim())
}

/// `--port 8000`, `-p 8000`, `--bind 0.0.0.0:8000`, `-b :8000`, `0.0.0.0:8000` in a command.
fn port_in_command(command: &str) -> Option<u16> {
    let words: Vec<String> = command
        .split(|c: char| c.is_whitespace() || matches!(c, '[' | ']' | ',' | '"' | '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    for (i, word) in words.iter().enumerate() {
        if let Some(value) = word.strip_prefix("--port=") {
            return value.parse().ok();
        }
        if matches!(word.as_str(), "--port" | "-p") {
            return words.get(i + 1).and_then(|w| w.parse().ok());
        }
        if let Some((host, port)) = word.rsplit_once(':')
            && matches!(
                host,
                "0.0.0.0" | "" | "[::]" | "--bind=0.0.0.0" | "localhost"
            )
            && let Ok(port) = port.parse::<u16>()
        {
            return Some(port);
        }
    }
    None
}

/// The port a framework listens on by default, from the files of a build context.
fn framework_port(dir: &Path) -> Option<(u16, &'static str)> {
    let has = |name: &str| dir.join(name).is_file();
    let contains = |name: &str, needle: &str| {
        crate::files::read_text(&dir.join(name), crate::files::MAX_TEXT_FILE)
            .is_ok_and(|t| t.to_ascii_lowercase().contains(needle))
    };
    if has("manage.py") {
        return Some((8000, "Django's default, from manage.py"));
    }
    for file in ["requirements.txt", "pyproject.toml", "Pipfile"] {
        if contains(file, "uvicorn") || contains(file, "fastapi") || contains(file, "gunicorn") {
            return Some((
                8000,
                "the uvicorn/gunicorn default, from the Python dependencies",
            ));
        }
        if contains(file, "flask") {
            return Some((5000, "Flask's default, from the Python dependencies"));
        }
    }
    if has("Gemfile") {
        return Some((3000, "Rails' default, from the Gemfile"));
    }
    if has("package.json") {
        return Some((3000, "the Node.js convention, from package.json"));
    }
    if has("go.mod") {
        return Some((8080, "the Go convention, from go.mod"));
    }
    None
}

/// Health routes, most specific first.
const HEALTH_PATHS: &[&str] = &[
    "/healthz",
    "/health",
    "/api/health",
    "/api/healthz",
    "/_health",
    "/up",
    "/livez",
    "/readyz",
    "/ping",
];

const SOURCE_EXTENSIONS: &[&str] = &[
    "py", "js", "mjs", "cjs", "ts", "go", "rs", "rb", "java", "kt", "php", "ex", "cs", "scala",
];

/// A health route the app's source defines, found as a quoted string; the first file naming
/// one wins. Bounded: at most 5,000 files of at most 512 KiB.
fn source_health_path(dir: &Path) -> Option<(String, String)> {
    let mut best: Option<(usize, String)> = None;
    for entry in walkdir::WalkDir::new(dir)
        .max_depth(8)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !skipped_dir(e.file_name().to_string_lossy().as_ref()))
        .flatten()
        .filter(|e| e.file_type().is_file())
        .take(5_000)
    {
        let path = entry.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        if !SOURCE_EXTENSIONS.contains(&ext)
            || entry.metadata().map_or(true, |m| m.len() > 512 * 1024)
        {
            continue;
        }
        let Ok(text) = crate::files::read_text(path, 512 * 1024) else {
            continue;
        };
        for (rank, candidate) in HEALTH_PATHS.iter().enumerate() {
            if best.as_ref().is_some_and(|(r, _)| *r <= rank) {
                break;
            }
            let quoted = ['"', '\'', '`']
                .iter()
                .any(|q| text.contains(&format!("{q}{candidate}{q}")));
            if quoted {
                let shown = path.strip_prefix(dir).unwrap_or(path).display().to_string();
                best = Some((rank, format!("{candidate}\n{shown}")));
                break;
            }
        }
        if best.as_ref().is_some_and(|(r, _)| *r == 0) {
            break;
        }
    }
    best.and_then(|(_, both)| {
        let (path, file) = both.split_once('\n')?;
        Some((path.to_owned(), file.to_owned()))
    })
}

/// What the dependency files suggest the app needs beside it.
#[derive(Default)]
struct Hints {
    postgres: bool,
    mysql: bool,
    redis: bool,
    qdrant: bool,
    ollama: bool,
    sqlite: bool,
}

impl Hints {
    fn read(&mut self, dir: &Path) {
        let mut text = String::new();
        for file in [
            "package.json",
            "requirements.txt",
            "pyproject.toml",
            "Pipfile",
            "Gemfile",
            "go.mod",
            "Cargo.toml",
            "composer.json",
        ] {
            if let Ok(t) = crate::files::read_text(&dir.join(file), crate::files::MAX_TEXT_FILE) {
                text.push_str(&t.to_ascii_lowercase());
            }
        }
        let any = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
        self.postgres |= any(&[
            "psycopg",
            "\"pg\"",
            "asyncpg",
            "postgres",
            "gem \"pg\"",
            "gem 'pg'",
            "jackc/pgx",
            "lib/pq",
        ]);
        self.mysql |= any(&["mysql", "mariadb"]);
        self.redis |= any(&["redis", "bullmq", "celery", "sidekiq"]);
        self.qdrant |= any(&["qdrant"]);
        self.ollama |= any(&["ollama"]);
        self.sqlite |= any(&["sqlite", "better-sqlite3", "aiosqlite"]);
    }

    fn footer(&self) -> Vec<String> {
        let mut lines = vec![
            "More to add when you need it:".to_owned(),
            "  env = { LOG_LEVEL = \"info\" }            plain settings (in a service's table)".to_owned(),
            "  secrets = [\"SECRET_KEY\"]                 set with `berth secrets set SECRET_KEY`".to_owned(),
            "  volumes = [\"data:/app/data\"]             kept across deploys".to_owned(),
            "  release_command = [\"migrate\"]            run with each new image before traffic moves".to_owned(),
        ];
        let mut accessory = |name: &str, image: &str, extra: &str| {
            lines.push(String::new());
            lines.push(format!("Your dependencies mention {name}:"));
            lines.push(format!("[accessories.{name}]"));
            lines.push(format!("image = \"{image}\""));
            if !extra.is_empty() {
                lines.push(extra.to_owned());
            }
        };
        if self.postgres {
            accessory(
                "postgres",
                "postgres:17",
                "secrets = [\"POSTGRES_PASSWORD\"]\nvolumes = [\"pgdata:/var/lib/postgresql/data\"]",
            );
        }
        if self.mysql {
            accessory(
                "mysql",
                "mysql:8.4",
                "secrets = [\"MYSQL_ROOT_PASSWORD\"]\nvolumes = [\"mysql:/var/lib/mysql\"]",
            );
        }
        if self.redis {
            accessory("redis", "redis:7", "volumes = [\"redis:/data\"]");
        }
        if self.qdrant {
            accessory(
                "qdrant",
                "qdrant/qdrant:v1.12.4",
                "volumes = [\"qdrant:/qdrant/storage\"]",
            );
        }
        if self.ollama {
            accessory(
                "ollama",
                "ollama/ollama",
                "gpus = \"all\"\nvolumes = [\"ollama:/root/.ollama\"]",
            );
        }
        if self.sqlite {
            lines.push(String::new());
            lines.push(
                "Your dependencies mention SQLite: keep the file on a volume and back it up:"
                    .into(),
            );
            lines.push("[backups.db]".into());
            lines.push(
                "source = { sqlite = { service = \"web\", path = \"/app/data/app.db\" } }".into(),
            );
            lines.push("schedule = \"0 3 * * *\"".into());
        }
        lines
            .into_iter()
            .flat_map(|l| l.split('\n').map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_ports_and_health() {
        let facts = dockerfile_facts(
            "FROM rust AS build\nEXPOSE 9999\nFROM debian\nARG APP_PORT=8000\nEXPOSE ${APP_PORT}/tcp\nHEALTHCHECK CMD curl -f http://localhost:8000/healthz || exit 1\nCMD [\"app\"]\n",
        );
        assert_eq!(facts.port, Some((8000, "the Dockerfile's EXPOSE")));
        assert_eq!(facts.health_path(8000).as_deref(), Some("/healthz"));
        let facts = dockerfile_facts("FROM python\nENV PORT=5001\nCMD gunicorn app:app\n");
        assert_eq!(facts.port, Some((5001, "the Dockerfile's ENV PORT")));
        let facts = dockerfile_facts(
            "FROM python\nCMD [\"uvicorn\", \"main:app\", \"--host\", \"0.0.0.0\", \\\n  \"--port\", \"8080\"]\n",
        );
        assert_eq!(facts.port, Some((8080, "the Dockerfile's command")));
        let facts = dockerfile_facts("FROM python\nCMD gunicorn -b 0.0.0.0:7000 app:app\n");
        assert_eq!(facts.port.map(|p| p.0), Some(7000));
        assert_eq!(
            dockerfile_facts("FROM scratch\nCMD [\"/worker\"]\n").port,
            None
        );
    }
}
