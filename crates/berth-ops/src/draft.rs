//! A manifest being written: what `berth init` and `berth import compose` decided, rendered as
//! a commented `berth.toml` and checked with `berth_manifest::load` before anyone sees it.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub app: String,
    /// Lines at the top of the file, each written as a `#` comment.
    pub header: Vec<String>,
    pub services: BTreeMap<String, DraftService>,
    pub accessories: BTreeMap<String, DraftService>,
    /// Commented-out examples written at the end (`# [backups.db]` …).
    pub footer: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DraftService {
    /// Comment lines written above the table.
    pub comment: Vec<String>,
    pub image: Option<String>,
    pub pull: Option<String>,
    pub build: Option<DraftBuild>,
    pub port: Option<u16>,
    pub command: Option<Vec<String>>,
    /// Run once with each new image before traffic moves (migrations).
    pub release_command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub secret_files: Vec<String>,
    pub volumes: Vec<String>,
    pub healthcheck: Option<DraftHealthcheck>,
    /// Written as a comment when there is no healthcheck: what to add and why.
    pub healthcheck_hint: Option<String>,
    pub replicas: Option<u32>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub stop_timeout: Option<String>,
    pub depends_on: Vec<String>,
    pub gpus: Option<Gpus>,
    pub route: Option<DraftRoute>,
    pub publish: Vec<String>,
    pub restart: Option<String>,
    pub init: Option<bool>,
    pub logging: Option<DraftLogging>,
}

#[derive(Debug, Clone, Default)]
pub struct DraftBuild {
    pub context: String,
    pub dockerfile: Option<String>,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DraftHealthcheck {
    pub path: Option<String>,
    pub command: Option<Vec<String>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_timeout: Option<String>,
    pub failure_threshold: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Gpus {
    All,
    Count(u32),
}

#[derive(Debug, Clone, Default)]
pub struct DraftRoute {
    pub domains: Vec<String>,
    pub path: Option<String>,
    /// `tls = "off"`: for placeholder `*.localhost` domains no CA would sign.
    pub tls_off: bool,
    /// A comment written above the table about the route.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DraftLogging {
    pub max_size: Option<String>,
    pub max_files: Option<u32>,
}

/// A TOML basic string on one line, escaped.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_owned()
    } else {
        quote(name)
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn inline(pairs: &[(String, String)]) -> String {
    let parts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{ {} }}", parts.join(", "))
}

fn comment(out: &mut String, lines: &[String]) {
    for line in lines {
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

impl Draft {
    pub fn render(&self) -> String {
        let mut out = String::new();
        comment(&mut out, &self.header);
        if !self.header.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("app = {}\n", quote(&self.app)));
        for (table, services) in [
            ("services", &self.services),
            ("accessories", &self.accessories),
        ] {
            for (name, service) in services {
                out.push('\n');
                service.render(&mut out, table, name);
            }
        }
        if !self.footer.is_empty() {
            out.push('\n');
            comment(&mut out, &self.footer);
        }
        out
    }

    /// The rendered text, checked as `berth check` would. An error here is a bug in the writer,
    /// reported with the text so it can be fixed.
    pub fn checked(&self, file: &str, base_dir: &Path) -> Result<String, String> {
        let text = self.render();
        let source = berth_manifest::ManifestSource {
            file,
            text: &text,
            base_dir,
        };
        match berth_manifest::load(source, None) {
            Ok(_) => Ok(text),
            Err(error) => Err(format!("{error}\n--- the manifest written ---\n{text}")),
        }
    }
}

impl DraftService {
    fn render(&self, out: &mut String, table: &str, name: &str) {
        comment(out, &self.comment);
        out.push_str(&format!("[{table}.{}]\n", key(name)));
        let mut line = |k: &str, v: String| out.push_str(&format!("{k} = {v}\n"));
        if let Some(image) = &self.image {
            line("image", quote(image));
        }
        if let Some(pull) = &self.pull {
            line("pull", quote(pull));
        }
        if let Some(build) = &self.build {
            let simple =
                build.dockerfile.is_none() && build.args.is_empty() && build.target.is_none();
            if simple {
                line("build", quote(&build.context));
            } else {
                let mut pairs = vec![("context".to_owned(), quote(&build.context))];
                if let Some(dockerfile) = &build.dockerfile {
                    pairs.push(("dockerfile".into(), quote(dockerfile)));
                }
                if !build.args.is_empty() {
                    let args: Vec<(String, String)> =
                        build.args.iter().map(|(k, v)| (key(k), quote(v))).collect();
                    pairs.push(("args".into(), inline(&args)));
                }
                if let Some(target) = &build.target {
                    pairs.push(("target".into(), quote(target)));
                }
                line("build", inline(&pairs));
            }
        }
        if let Some(command) = &self.command {
            line("command", list(command));
        }
        if let Some(release_command) = &self.release_command {
            line("release_command", list(release_command));
        }
        if let Some(port) = self.port {
            line("port", port.to_string());
        }
        if let Some(replicas) = self.replicas {
            line("replicas", replicas.to_string());
        }
        if let Some(memory) = &self.memory {
            line("memory", quote(memory));
        }
        if let Some(cpus) = self.cpus {
            line("cpus", format!("{cpus}"));
        }
        if let Some(gpus) = &self.gpus {
            line(
                "gpus",
                match gpus {
                    Gpus::All => quote("all"),
                    Gpus::Count(n) => n.to_string(),
                },
            );
        }
        if !self.secrets.is_empty() {
            line("secrets", list(&self.secrets));
        }
        if !self.secret_files.is_empty() {
            line("secret_files", list(&self.secret_files));
        }
        if !self.volumes.is_empty() {
            line("volumes", list(&self.volumes));
        }
        if !self.depends_on.is_empty() {
            line("depends_on", list(&self.depends_on));
        }
        if !self.publish.is_empty() {
            line("publish", list(&self.publish));
        }
        if let Some(restart) = &self.restart {
            line("restart", quote(restart));
        }
        if let Some(init) = self.init {
            line("init", init.to_string());
        }
        if let Some(stop) = &self.stop_timeout {
            line("stop_timeout", quote(stop));
        }
        if let Some(logging) = &self.logging {
            let mut pairs = Vec::new();
            if let Some(size) = &logging.max_size {
                pairs.push(("max_size".to_owned(), quote(size)));
            }
            if let Some(files) = logging.max_files {
                pairs.push(("max_files".to_owned(), files.to_string()));
            }
            if !pairs.is_empty() {
                line("logging", inline(&pairs));
            }
        }
        if let Some(check) = &self.healthcheck {
            let mut pairs = Vec::new();
            if let Some(path) = &check.path {
                pairs.push(("path".to_owned(), quote(path)));
            }
            if let Some(command) = &check.command {
                pairs.push(("command".to_owned(), list(command)));
            }
            for (k, v) in [
                ("interval", &check.interval),
                ("timeout", &check.timeout),
                ("start_timeout", &check.start_timeout),
            ] {
                if let Some(v) = v {
                    pairs.push((k.to_owned(), quote(v)));
                }
            }
            if let Some(n) = check.failure_threshold {
                pairs.push(("failure_threshold".to_owned(), n.to_string()));
            }
            line("healthcheck", inline(&pairs));
        } else if let Some(hint) = &self.healthcheck_hint {
            out.push_str(&format!("# {hint}\n"));
        }
        if let Some(route) = &self.route {
            if let Some(note) = &route.note {
                out.push_str(&format!("# {note}\n"));
            }
            let mut pairs = vec![("domains".to_owned(), list(&route.domains))];
            if let Some(path) = &route.path {
                pairs.push(("path".to_owned(), quote(path)));
            }
            if route.tls_off {
                pairs.push(("tls".to_owned(), quote("off")));
            }
            out.push_str(&format!("route = {}\n", inline(&pairs)));
        }
        if !self.env.is_empty() {
            out.push_str(&format!("\n[{table}.{}.env]\n", key(name)));
            for (k, v) in &self.env {
                out.push_str(&format!("{} = {}\n", key(k), quote(v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_manifest_that_checks() {
        let mut draft = Draft {
            app: "shop".into(),
            header: vec!["written by a test".into()],
            ..Draft::default()
        };
        let mut env = BTreeMap::new();
        env.insert("QUOTE".to_owned(), "say \"hi\"\n".to_owned());
        draft.services.insert(
            "web".into(),
            DraftService {
                comment: vec!["the front".into()],
                build: Some(DraftBuild {
                    context: ".".into(),
                    dockerfile: Some("Dockerfile.prod".into()),
                    args: [("V".to_owned(), "1".to_owned())].into(),
                    target: Some("runtime".into()),
                }),
                port: Some(8000),
                env,
                secrets: vec!["SECRET_KEY".into()],
                healthcheck: Some(DraftHealthcheck {
                    path: Some("/health".into()),
                    ..DraftHealthcheck::default()
                }),
                route: Some(DraftRoute::default()),
                ..DraftService::default()
            },
        );
        draft.accessories.insert(
            "db".into(),
            DraftService {
                image: Some("postgres:16".into()),
                volumes: vec!["pgdata:/var/lib/postgresql/data".into()],
                secrets: vec!["POSTGRES_PASSWORD".into()],
                ..DraftService::default()
            },
        );
        let text = draft.checked("berth.toml", Path::new("/tmp")).unwrap();
        assert!(text.starts_with("# written by a test\n"), "{text}");
        assert!(text.contains("QUOTE = \"say \\\"hi\\\"\\n\""), "{text}");
    }
}
