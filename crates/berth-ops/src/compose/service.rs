//! One Compose service → one berth service or accessory.

use super::ports::{self, PortMapping};
use super::{
    ACCESSORY_IMAGES, Context, ImportError, PROXY_IMAGES, command_reveals_secret, image_name,
    is_flag, local_http_path, looks_secret, secret_name, value_looks_secret,
};
use crate::draft::{DraftBuild, DraftHealthcheck, DraftLogging, DraftService, Gpus};
use crate::interpolate;
use crate::yaml::{Node, Value};
use berth_manifest::units;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// A converted service and what the whole-file passes still need to know about it.
pub struct Converted {
    pub compose_name: String,
    pub name: String,
    pub accessory: bool,
    pub draft: DraftService,
    /// `depends_on` entries by Compose name, with their lines.
    pub depends_on: Vec<(String, u64)>,
    /// Entries with `condition: service_completed_successfully`.
    pub completed_first: Vec<(String, u64)>,
    /// The published HTTP port that may become a route.
    pub published_http: Option<Published>,
}

#[derive(Debug, Clone)]
pub struct Published {
    pub host_port: Option<u16>,
    pub line: u64,
}

impl Context<'_> {
    pub(super) fn service(
        &mut self,
        compose_name: &str,
        name: &str,
        key_line: u64,
        node: &Node,
    ) -> Result<Option<Converted>, ImportError> {
        let svc = Some(compose_name);
        if !node.is_map() {
            self.warn(
                node.line,
                svc,
                "left out: a service must be a mapping of keys".into(),
            );
            return Ok(None);
        }
        let image = match node.get("image") {
            Some(i) => Some(self.text(i, svc)?),
            None => None,
        };
        let build = match node.get("build") {
            Some(b) => self.build(compose_name, b)?,
            None => None,
        };
        if node.get("build").is_some() && build.is_none() && image.is_none() {
            self.warn(
                node.line,
                svc,
                "left out: its build cannot be carried over and it names no image".into(),
            );
            return Ok(None);
        }
        if image.is_none() && build.is_none() {
            let why = if node.get("extends").is_some() {
                "left out: it `extends` another service, which berth does not follow; copy the keys it takes from there (image or build first) into this service"
            } else {
                "left out: it has neither `image` nor `build`"
            };
            self.warn(key_line, svc, why.into());
            return Ok(None);
        }
        let accessory = build.is_none()
            && image
                .as_deref()
                .is_some_and(|i| ACCESSORY_IMAGES.contains(&image_name(i).as_str()));
        let mut draft = DraftService {
            comment: vec![format!(
                "Compose service `{compose_name}` ({}:{}){}",
                self.options.file_name,
                key_line,
                if accessory {
                    ": long-lived state, so an accessory (started once, kept across deploys)"
                } else {
                    ""
                }
            )],
            ..DraftService::default()
        };
        if let Some(b) = build {
            if let (Some(i), Some(line)) = (&image, node.get("image").map(|n| n.line)) {
                self.note(
                    line,
                    svc,
                    format!("`image: {i}` names the built image: berth tags what it builds itself, so only `build` is kept"),
                );
            }
            draft.build = Some(b);
        } else {
            draft.image = image.clone();
        }
        if image
            .as_deref()
            .is_some_and(|i| PROXY_IMAGES.contains(&image_name(i).as_str()))
        {
            self.warn(
                node.get("image").map_or(node.line, |i| i.line),
                svc,
                "is a reverse proxy: berth's own proxy routes requests and obtains certificates, so route the app's services directly and drop this one unless it serves files itself".into(),
            );
        }

        let mut out = Converted {
            compose_name: compose_name.to_owned(),
            name: name.to_owned(),
            accessory,
            draft,
            depends_on: Vec::new(),
            completed_first: Vec::new(),
            published_http: None,
        };
        let mut healthcheck_node = None;
        let mut entrypoint = None;
        for (key, value) in node.entries() {
            let line = key.line;
            match key.name.as_str() {
                "image" | "build" | "profiles" => {}
                "extends" => self.warn(
                    line,
                    svc,
                    "`extends` is not followed: copy the keys of the extended service into this one".into(),
                ),
                "volumes_from" => self.warn(
                    line,
                    svc,
                    "`volumes_from` is not carried over: name the volumes it shares in this service's `volumes`".into(),
                ),
                "command" => out.draft.command = self.words(value, svc)?,
                "entrypoint" => entrypoint = Some((line, self.words(value, svc)?)),
                "environment" => self.environment(&mut out, value)?,
                "env_file" => self.env_files(&mut out, value)?,
                "ports" => self.ports(&mut out, value)?,
                "expose" => self.note(
                    line,
                    svc,
                    "`expose` is not needed: an app's containers reach each other on every port"
                        .into(),
                ),
                "volumes" => self.volumes(&mut out, value)?,
                "depends_on" => self.depends_on(&mut out, value),
                "healthcheck" => healthcheck_node = Some(value),
                "deploy" => self.deploy(&mut out, value)?,
                "restart" => self.restart(&mut out, value),
                "secrets" => self.service_secrets(&mut out, value),
                "mem_limit" => out.draft.memory = self.size(value, svc, "mem_limit"),
                "cpus" => out.draft.cpus = self.cpus(value, svc),
                "gpus" => {
                    out.draft.gpus = match value.scalar().as_deref() {
                        Some("all") => Some(Gpus::All),
                        Some(n) => n.parse().ok().map(Gpus::Count),
                        None => Some(Gpus::Count(value.items().len().max(1) as u32)),
                    }
                }
                "runtime" if value.as_str() == Some("nvidia") => {
                    if out.draft.gpus.is_none() {
                        out.draft.gpus = Some(Gpus::All);
                    }
                    self.note(line, svc, "`runtime: nvidia` became gpus = \"all\"".into());
                }
                "init" => out.draft.init = value.as_bool(),
                "stop_grace_period" => {
                    out.draft.stop_timeout = self.duration(value, svc, "stop_grace_period")
                }
                "logging" => self.logging(&mut out, value),
                "pull_policy" => match value.scalar().as_deref() {
                    Some("always") if out.draft.image.is_some() => {
                        out.draft.pull = Some("always".into())
                    }
                    Some("missing" | "if_not_present") if out.draft.image.is_some() => {
                        out.draft.pull = Some("missing".into())
                    }
                    Some("build") => {}
                    other => self.warn(
                        line,
                        svc,
                        format!(
                            "`pull_policy: {}` is not carried over: berth pulls images always (services) or when missing (accessories)",
                            other.unwrap_or_default()
                        ),
                    ),
                },
                "networks" => self.note(
                    line,
                    svc,
                    "its networks are not carried over: it joins the app's one network, where every service is reached by its name (aliases are not carried over)".into(),
                ),
                "links" => self.note(
                    line,
                    svc,
                    "`links` are not needed: services reach each other by name".into(),
                ),
                "container_name" | "hostname" => self.note(
                    line,
                    svc,
                    format!(
                        "`{}` is not carried over: berth names containers per release; reach the service by its name `{}`",
                        key.name, out.name
                    ),
                ),
                "labels" => self.note(
                    line,
                    svc,
                    "`labels` are not carried over: berth labels its containers itself".into(),
                ),
                "stop_signal" | "user" | "working_dir" | "cap_add" | "cap_drop" | "privileged"
                | "devices" | "extra_hosts" | "dns" | "dns_search" | "tty" | "stdin_open"
                | "ulimits" | "sysctls" | "security_opt" | "platform" | "read_only"
                | "shm_size" | "tmpfs" | "network_mode" | "ipc" | "pid" | "userns_mode"
                | "cgroup_parent" | "memswap_limit" | "mem_reservation" | "cpu_shares"
                | "cpuset" | "oom_score_adj" | "group_add" | "configs" | "domainname"
                | "mac_address" | "storage_opt" | "runtime" | "cpu_quota" | "cpu_period"
                | "blkio_config" | "pids_limit" | "annotations" | "attach" | "develop"
                | "post_start" | "pre_stop" | "scale" => {
                    if key.name == "scale"
                        && let Some(n) = value.as_int().and_then(|n| u32::try_from(n).ok()) {
                            out.draft.replicas = Some(n);
                            continue;
                        }
                    self.warn(line, svc, unsupported(&key.name));
                }
                other if other.starts_with("x-") => {}
                other => self.warn(
                    line,
                    svc,
                    format!("`{other}` is not a Compose service key berth knows; not carried over"),
                ),
            }
        }
        if let Some((line, words)) = entrypoint {
            match (words, &out.draft.command) {
                (Some(entry), None) => {
                    self.note(
                        line,
                        svc,
                        "`entrypoint` became `command`: berth sets the command, so the image's ENTRYPOINT must be empty or a wrapper that runs its arguments (check the Dockerfile)".into(),
                    );
                    out.draft.command = Some(entry);
                }
                (Some(_), Some(_)) => self.warn(
                    line,
                    svc,
                    "`entrypoint` is not carried over (berth sets only the command): set ENTRYPOINT in the Dockerfile".into(),
                ),
                (None, _) => {}
            }
        }
        if let Some(check) = healthcheck_node {
            self.healthcheck(&mut out, check)?;
        }
        for (what, words) in [
            ("command", out.draft.command.clone()),
            (
                "healthcheck",
                out.draft
                    .healthcheck
                    .as_ref()
                    .and_then(|h| h.command.clone()),
            ),
        ] {
            if words.as_deref().is_some_and(command_reveals_secret) {
                let line = node.get(what).map_or(key_line, |n| n.line);
                self.warn(line, svc, format!("its {what} holds what looks like a password, and berth.toml will hold it too: have the program read it from a secret's variable or file instead"));
            }
        }
        if out.accessory {
            if out.draft.replicas.is_some_and(|r| r != 1) {
                self.warn(
                    node.line,
                    svc,
                    "asks for several replicas: an accessory runs exactly one container".into(),
                );
            }
            out.draft.replicas = None;
        } else if out.draft.replicas == Some(1) {
            out.draft.replicas = None;
        }
        if out.draft.healthcheck.is_none() && !out.accessory {
            out.draft.healthcheck_hint = Some(match out.draft.port {
                Some(_) => "healthcheck = { path = \"/health\" }   # berth waits for this before moving traffic; without it, for the port to answer".into(),
                None => "healthcheck = { command = [\"...\"] }   # without one, berth waits for the container to keep running".into(),
            });
        }
        Ok(Some(out))
    }

    fn build(
        &mut self,
        compose_name: &str,
        node: &Node,
    ) -> Result<Option<DraftBuild>, ImportError> {
        let svc = Some(compose_name);
        if node.scalar().is_some() {
            let context = self.text(node, svc)?;
            return Ok(self
                .context_path(&context, node.line, svc)
                .map(|context| DraftBuild {
                    context,
                    ..DraftBuild::default()
                }));
        }
        let mut build = DraftBuild {
            context: ".".into(),
            ..DraftBuild::default()
        };
        for (key, value) in node.entries() {
            match key.name.as_str() {
                "context" => {
                    let text = self.text(value, svc)?;
                    match self.context_path(&text, value.line, svc) {
                        Some(path) => build.context = path,
                        None => return Ok(None),
                    }
                }
                "dockerfile" => build.dockerfile = Some(self.text(value, svc)?),
                "target" => build.target = Some(self.text(value, svc)?),
                "args" => {
                    for (k, v, line) in self.key_values(value, svc)? {
                        match v {
                            Some(v) => {
                                build.args.insert(k, v);
                            }
                            None => self.warn(
                                line,
                                svc,
                                format!("build arg `{k}` takes its value from the shell running Compose: not carried over; give it a value"),
                            ),
                        }
                    }
                }
                "dockerfile_inline" => {
                    self.warn(
                        key.line,
                        svc,
                        "`dockerfile_inline` is not carried over: write the Dockerfile to a file and name it in `build.dockerfile`".into(),
                    );
                    return Ok(None);
                }
                other if other.starts_with("x-") => {}
                other => self.warn(key.line, svc, format!("`build.{other}` is not carried over: berth builds with the context, Dockerfile, args and target")),
            }
        }
        if build.dockerfile.as_deref() == Some("Dockerfile") {
            build.dockerfile = None;
        }
        Ok(Some(build))
    }

    /// A build context or bind source, rewritten relative to the manifest's directory.
    fn context_path(&mut self, path: &str, line: u64, svc: Option<&str>) -> Option<String> {
        if path.contains("://") || path.starts_with("git@") {
            self.warn(
                line,
                svc,
                format!("build context `{path}` is a remote repository: berth builds from a directory; clone it and point `build` at the clone"),
            );
            return None;
        }
        Some(self.rebase(path))
    }

    fn rebase(&self, path: &str) -> String {
        if Path::new(path).is_absolute() {
            return path.to_owned();
        }
        let absolute =
            berth_manifest::normalize_path(&absolute_dir(&self.options.compose_dir).join(path));
        let base = berth_manifest::normalize_path(&absolute_dir(&self.options.output_dir));
        match relative_to(&absolute, &base) {
            Some(relative) if relative.as_os_str().is_empty() => ".".into(),
            Some(relative) => {
                let text = relative.to_string_lossy().into_owned();
                if text.starts_with("..") {
                    text
                } else {
                    format!("./{text}")
                }
            }
            None => absolute.to_string_lossy().into_owned(),
        }
    }

    /// `command` / `entrypoint`: a list stays a list; a string is split as a shell would,
    /// without running one (what Compose does).
    fn words(
        &mut self,
        node: &Node,
        svc: Option<&str>,
    ) -> Result<Option<Vec<String>>, ImportError> {
        match &node.value {
            Value::Seq(items) => {
                let mut words = Vec::new();
                for item in items {
                    words.push(self.text(item, svc)?);
                }
                Ok(Some(words))
            }
            Value::Null => Ok(None),
            _ => {
                let text = self.text(node, svc)?;
                match berth_manifest::split_command_line(&text) {
                    Ok(words) if !words.is_empty() => Ok(Some(words)),
                    Ok(_) => Ok(None),
                    Err(reason) => {
                        self.warn(
                            node.line,
                            svc,
                            format!(
                                "`{text}` cannot be split into words ({reason}): not carried over"
                            ),
                        );
                        Ok(None)
                    }
                }
            }
        }
    }

    /// A mapping or a list of `KEY=VALUE` (a bare `KEY` has no value here), with lines.
    fn key_values(
        &mut self,
        node: &Node,
        svc: Option<&str>,
    ) -> Result<Vec<(String, Option<String>, u64)>, ImportError> {
        let mut pairs = Vec::new();
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let value = match v.value {
                        Value::Null => None,
                        _ => Some(self.text(v, svc)?),
                    };
                    pairs.push((k.name.clone(), value, k.line));
                }
            }
            Value::Seq(items) => {
                for item in items {
                    let text = self.text(item, svc)?;
                    match text.split_once('=') {
                        Some((k, v)) => pairs.push((k.to_owned(), Some(v.to_owned()), item.line)),
                        None => pairs.push((text, None, item.line)),
                    }
                }
            }
            _ => {}
        }
        Ok(pairs)
    }

    fn environment(&mut self, out: &mut Converted, node: &Node) -> Result<(), ImportError> {
        let svc = Some(out.compose_name.clone());
        let svc = svc.as_deref();
        let entries: Vec<(String, Option<(String, u64)>)> = match &node.value {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| {
                    let raw = match v.value {
                        Value::Null => None,
                        _ => Some((v.scalar().unwrap_or_default(), v.line)),
                    };
                    (k.name.clone(), raw)
                })
                .collect(),
            Value::Seq(items) => items
                .iter()
                .map(|item| {
                    let text = item.scalar().unwrap_or_default();
                    match text.split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some((v.to_owned(), item.line))),
                        None => (text, None),
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        for (key, raw) in entries {
            if !berth_manifest::valid_env_name(&key) {
                self.warn(node.line, svc, format!("environment variable `{key}` is not a name berth accepts (letters, digits, underscores): not carried over"));
                continue;
            }
            let Some((raw, line)) = raw else {
                self.add_secret(out, &key);
                let how = if self.in_dotenv.contains(&key) {
                    "from .env: berth secrets import .env".to_owned()
                } else {
                    format!("from the shell that ran Compose: berth secrets set {key}")
                };
                self.secret(&key, how);
                self.note(node.line, svc, format!("{key} takes its value from the environment Compose ran in: it became the secret {key}"));
                continue;
            };
            let interpolated = interpolate::interpolate(&raw, &self.vars).map_err(|reason| {
                ImportError::Interpolation {
                    file: self.options.file_name.clone(),
                    line,
                    reason,
                }
            })?;
            let references_secret = interpolated
                .references
                .iter()
                .any(|r| looks_secret(&r.name));
            let unresolved = !interpolated.missing.is_empty();
            // `DB_PASSWORD_FILE=/run/secrets/db_password` names where a secret is, not the secret.
            let names_a_file = key.ends_with("_FILE") && interpolated.text.starts_with('/');
            let sensitive = (looks_secret(&key) && !names_a_file && !is_flag(&interpolated.text))
                || value_looks_secret(&interpolated.text);
            if !sensitive && !references_secret && !unresolved {
                out.draft.env.insert(key, interpolated.text);
                continue;
            }
            self.add_secret(out, &key);
            let how = match interpolate::sole_reference(&raw) {
                Some(var) if var == key && self.in_dotenv.contains(var) => {
                    "from .env: berth secrets import .env".to_owned()
                }
                Some(var) if var == key => format!("berth secrets set {key}"),
                Some(var) if self.in_dotenv.contains(var) => {
                    format!("the value of {var} in .env: berth secrets set {key}")
                }
                _ if raw.contains('$') => {
                    format!("`{raw}` with the variables filled in: berth secrets set {key}")
                }
                _ => {
                    // One value per secret name in an app: two services that wrote two values
                    // under one name cannot both have theirs.
                    match self.literal_secrets.get(&key) {
                        Some((value, other, other_line))
                            if value != &raw && other != &out.compose_name =>
                        {
                            let other = other.clone();
                            let other_line = *other_line;
                            self.warn(line, svc, format!("{key} has another value here than in `{other}` (line {other_line}): berth keeps one value per secret name in an app, so rename one of them (and the variable the service reads)"));
                        }
                        Some(_) => {}
                        None => {
                            self.literal_secrets
                                .insert(key.clone(), (raw.clone(), out.compose_name.clone(), line));
                        }
                    }
                    self.warn(line, svc, format!("{key} is written in the Compose file: it became the secret {key}, and its value is not copied into berth.toml; set it (and remove it from the Compose file)"));
                    format!(
                        "the value written in {} line {line}: berth secrets set {key}",
                        self.options.file_name
                    )
                }
            };
            self.secret(&key, how);
        }
        Ok(())
    }

    fn add_secret(&mut self, out: &mut Converted, name: &str) {
        out.draft.env.remove(name);
        if !out.draft.secrets.iter().any(|s| s == name) {
            out.draft.secrets.push(name.to_owned());
        }
    }

    fn env_files(&mut self, out: &mut Converted, node: &Node) -> Result<(), ImportError> {
        let svc_owned = out.compose_name.clone();
        let svc = Some(svc_owned.as_str());
        let mut files: Vec<(String, bool, u64)> = Vec::new();
        match &node.value {
            Value::Seq(items) => {
                for item in items {
                    if item.is_map() {
                        let path = item.get("path").map(|p| self.text(p, svc)).transpose()?;
                        let required = item.get("required").and_then(Node::as_bool).unwrap_or(true);
                        if let Some(path) = path {
                            files.push((path, required, item.line));
                        }
                    } else {
                        files.push((self.text(item, svc)?, true, item.line));
                    }
                }
            }
            _ => files.push((self.text(node, svc)?, true, node.line)),
        }
        for (path, required, line) in files {
            let full = self.options.compose_dir.join(&path);
            // A repository is anyone's: an env file that leads out of it (`../`, a link to
            // /etc/shadow) is not read, so nothing of it can reach a message or a log.
            if full.exists() && !crate::files::inside(&self.options.compose_dir, &full) {
                self.warn(line, svc, format!("env_file `{path}` leads outside the project: not read; list its variables in `secrets` by hand"));
                continue;
            }
            let text = match crate::files::read_text(&full, crate::files::MAX_TEXT_FILE) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if required {
                        self.warn(line, svc, format!("env_file `{path}` does not exist here: its variables could not be listed; add them to `secrets` by hand"));
                    }
                    continue;
                }
                Err(e) => {
                    self.warn(line, svc, format!("env_file `{path}` cannot be read ({e}): its variables could not be listed"));
                    continue;
                }
            };
            let entries = crate::dotenv::parse(&text).map_err(|e| ImportError::Dotenv {
                file: path.clone(),
                reason: e.to_string(),
            })?;
            let mut names = Vec::new();
            for entry in entries {
                if out.draft.env.contains_key(&entry.key) {
                    continue; // `environment` wins over `env_file`, as in Compose.
                }
                if !berth_manifest::valid_env_name(&entry.key) {
                    self.warn(line, svc, format!("`{}` in env_file `{path}` is not a name berth accepts: not carried over", entry.key));
                    continue;
                }
                self.add_secret(out, &entry.key);
                self.secret(
                    &entry.key,
                    format!("from {path}: berth secrets import {path}"),
                );
                names.push(entry.key);
            }
            if !names.is_empty() {
                self.note(line, svc, format!("the {} of env_file `{path}` became secrets (names only in berth.toml): load them with `berth secrets import {path}`", if names.len() == 1 { "variable".to_owned() } else { format!("{} variables", names.len()) }));
            }
        }
        Ok(())
    }

    fn ports(&mut self, out: &mut Converted, node: &Node) -> Result<(), ImportError> {
        let svc_owned = out.compose_name.clone();
        let svc = Some(svc_owned.as_str());
        for item in node.items() {
            let parsed: Result<PortMapping, String> = if item.is_map() {
                ports::parse_long(item)
            } else {
                let text = self.text(item, svc)?;
                ports::parse_short(&text)
            };
            let mapping = match parsed {
                Ok(m) => m,
                Err(reason) => {
                    self.warn(item.line, svc, format!("port not carried over: {reason}"));
                    continue;
                }
            };
            if mapping.range {
                self.warn(
                    item.line,
                    svc,
                    "a port range is not carried over: only its first port is".into(),
                );
            }
            if mapping.udp {
                self.warn(item.line, svc, format!("UDP port {} is not carried over: berth routes HTTP, and publishes TCP ports of accessories only", mapping.container_port));
                continue;
            }
            if out.accessory {
                let Some(host_port) = mapping.host_port else {
                    self.note(item.line, svc, format!("port {} is published on a random host port in Compose; not published: the app reaches it by name", mapping.container_port));
                    continue;
                };
                let ip = match mapping.host_ip.as_deref() {
                    None | Some("0.0.0.0") | Some("::") => {
                        self.warn(item.line, svc, format!("port {host_port} was published on every address; berth publishes it on 127.0.0.1 only (Docker's published ports bypass the host firewall). Write 0.0.0.0:{host_port}:{} if it must be reachable from other machines", mapping.container_port));
                        "127.0.0.1".to_owned()
                    }
                    Some(ip) if ip.contains(':') => format!("[{ip}]"),
                    Some(ip) => ip.to_owned(),
                };
                out.draft
                    .publish
                    .push(format!("{ip}:{host_port}:{}", mapping.container_port));
                continue;
            }
            // Published on loopback only: meant for the server's own user (an admin tool, a
            // database console), not for the world. A route would make it public.
            let loopback = mapping.host_ip.as_deref().is_some_and(|ip| {
                ip.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            });
            if loopback && out.draft.port.is_none() {
                out.draft.port = Some(mapping.container_port);
                self.warn(item.line, svc, format!("port {} was published on loopback only: it is not routed, since a route would make it public; give it a route with a domain once it is protected, or reach it with `berth exec`", mapping.container_port));
                continue;
            }
            if out.draft.port.is_none() {
                out.draft.port = Some(mapping.container_port);
                out.published_http = Some(Published {
                    host_port: mapping.host_port,
                    line: item.line,
                });
                if mapping.container_port == 443 {
                    self.warn(item.line, svc, "the container serves port 443, likely HTTPS: berth's proxy speaks plain HTTP to containers and does TLS itself; serve plain HTTP in the container".into());
                }
            } else {
                self.warn(item.line, svc, format!("port {} is not carried over: a service has one HTTP port in berth ({} here); its other ports are reached by name inside the app", mapping.container_port, out.draft.port.unwrap_or_default()));
            }
        }
        Ok(())
    }

    fn volumes(&mut self, out: &mut Converted, node: &Node) -> Result<(), ImportError> {
        let svc_owned = out.compose_name.clone();
        let svc = Some(svc_owned.as_str());
        for item in node.items() {
            let (kind, source, target, read_only) = if item.is_map() {
                let kind = item
                    .get("type")
                    .and_then(Node::scalar)
                    .unwrap_or_else(|| "volume".into());
                let source = item.get("source").map(|s| self.text(s, svc)).transpose()?;
                let target = item
                    .get("target")
                    .map(|t| self.text(t, svc))
                    .transpose()?
                    .unwrap_or_default();
                let read_only = item
                    .get("read_only")
                    .and_then(Node::as_bool)
                    .unwrap_or(false);
                for (k, _) in item.entries() {
                    if matches!(k.name.as_str(), "bind" | "volume" | "consistency") {
                        self.note(
                            k.line,
                            svc,
                            format!("volume option `{}` is not carried over", k.name),
                        );
                    }
                }
                (kind, source, target, read_only)
            } else {
                let text = self.text(item, svc)?;
                let parts: Vec<&str> = text.split(':').collect();
                match parts.as_slice() {
                    [target] => ("volume".to_owned(), None, (*target).to_owned(), false),
                    [source, target] => (
                        kind_of(source),
                        Some((*source).to_owned()),
                        (*target).to_owned(),
                        false,
                    ),
                    [source, target, mode] => {
                        let modes: Vec<&str> = mode.split(',').collect();
                        let others: Vec<&&str> = modes
                            .iter()
                            .filter(|m| !matches!(**m, "ro" | "rw"))
                            .collect();
                        if !others.is_empty() {
                            self.note(
                                item.line,
                                svc,
                                format!("volume mode `{mode}`: only ro/rw is carried over"),
                            );
                        }
                        (
                            kind_of(source),
                            Some((*source).to_owned()),
                            (*target).to_owned(),
                            modes.contains(&"ro"),
                        )
                    }
                    _ => {
                        self.warn(
                            item.line,
                            svc,
                            format!(
                                "volume `{text}` is not carried over: not SOURCE:TARGET[:MODE]"
                            ),
                        );
                        continue;
                    }
                }
            };
            let suffix = if read_only { ":ro" } else { "" };
            match (kind.as_str(), source) {
                ("volume", Some(source)) if !source.is_empty() => {
                    let name = super::berth_name(&source).replace('-', "_");
                    let name = if name.is_empty() { "data".to_owned() } else { name };
                    if name != source {
                        self.note(item.line, svc, format!("volume `{source}` is named `{name}` in berth.toml (letters, digits and underscores)"));
                    }
                    if !self.volumes.contains_key(&source) {
                        self.note(item.line, svc, format!("volume `{source}` is not declared under the top-level `volumes:`; berth makes it anyway"));
                    }
                    out.draft.volumes.push(format!("{name}:{target}{suffix}"));
                }
                ("volume", _) => {
                    let name = format!("{}_{}", out.name.replace('-', "_"), super::berth_name(&target).replace('-', "_"));
                    self.warn(item.line, svc, format!("anonymous volume at `{target}` became the named volume `{name}`: berth keeps it across deploys, where Compose would make a new one"));
                    out.draft.volumes.push(format!("{name}:{target}{suffix}"));
                }
                ("bind", Some(source)) => {
                    if source.starts_with('~') {
                        self.warn(item.line, svc, format!("bind mount `{source}` starts with `~`: not carried over; write the absolute path"));
                        continue;
                    }
                    let path = self.rebase(&source);
                    let path = if path.starts_with('/') || path.starts_with("./") || path.starts_with("../") {
                        path
                    } else {
                        format!("./{path}")
                    };
                    if path == "/var/run/docker.sock" || path == "/run/docker.sock" {
                        self.warn(item.line, svc, "mounts the Docker socket: this hands the container the whole server; `berth check` will say so too".into());
                    }
                    out.draft.volumes.push(format!("{path}:{target}{suffix}"));
                }
                (other, _) => self.warn(item.line, svc, format!("a `{other}` mount at `{target}` is not carried over: berth mounts named volumes and bind mounts")),
            }
        }
        Ok(())
    }

    fn depends_on(&mut self, out: &mut Converted, node: &Node) {
        match &node.value {
            Value::Seq(items) => {
                for item in items {
                    if let Some(name) = item.scalar() {
                        out.depends_on.push((name, item.line));
                    }
                }
            }
            Value::Map(entries) => {
                for (key, options) in entries {
                    match options.get("condition").and_then(Node::scalar).as_deref() {
                        Some("service_completed_successfully") => {
                            out.completed_first.push((key.name.clone(), key.line));
                            out.depends_on.push((key.name.clone(), key.line));
                        }
                        Some("service_healthy") | Some("service_started") | None => {
                            out.depends_on.push((key.name.clone(), key.line));
                        }
                        Some(other) => {
                            self.warn(key.line, Some(&out.compose_name), format!("condition `{other}` is not a Compose condition; kept as a plain dependency"));
                            out.depends_on.push((key.name.clone(), key.line));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn healthcheck(&mut self, out: &mut Converted, node: &Node) -> Result<(), ImportError> {
        let svc_owned = out.compose_name.clone();
        let svc = Some(svc_owned.as_str());
        if node.get("disable").and_then(Node::as_bool) == Some(true) {
            self.note(
                node.line,
                svc,
                "its healthcheck is disabled: berth waits for the container to keep running".into(),
            );
            return Ok(());
        }
        let mut check = DraftHealthcheck::default();
        let (command, shell_text) = match node.get("test") {
            Some(test) => match &test.value {
                Value::Seq(items) => {
                    let mut words = Vec::new();
                    for item in items {
                        words.push(self.text(item, svc)?);
                    }
                    match words.first().map(String::as_str) {
                        Some("NONE") => {
                            self.note(test.line, svc, "its healthcheck is NONE: berth waits for the container to keep running".into());
                            return Ok(());
                        }
                        Some("CMD") => {
                            let rest = words[1..].to_vec();
                            let text = rest.join(" ");
                            (Some(rest), text)
                        }
                        Some("CMD-SHELL") => {
                            let text = words[1..].join(" ");
                            (Some(vec!["sh".into(), "-c".into(), text.clone()]), text)
                        }
                        _ => {
                            self.warn(test.line, svc, "healthcheck `test` must start with CMD, CMD-SHELL or NONE: not carried over".into());
                            return Ok(());
                        }
                    }
                }
                _ => {
                    let text = self.text(test, svc)?;
                    (Some(vec!["sh".into(), "-c".into(), text.clone()]), text)
                }
            },
            None => (None, String::new()),
        };
        let http_path = out
            .draft
            .port
            .and_then(|port| local_http_path(&shell_text, port));
        match (http_path, command) {
            (Some(path), _) => {
                self.note(node.line, svc, format!("its healthcheck fetches http://localhost:{}{path}: berth probes that path itself, from outside the container (no curl needed in the image)", out.draft.port.unwrap_or_default()));
                check.path = Some(path);
            }
            (None, Some(command)) => check.command = Some(command),
            (None, None) => {
                self.warn(
                    node.line,
                    svc,
                    "its healthcheck has no `test`: not carried over".into(),
                );
                return Ok(());
            }
        }
        let interval = node
            .get("interval")
            .and_then(|n| self.duration(n, svc, "healthcheck.interval"));
        check.timeout = node
            .get("timeout")
            .and_then(|n| self.duration(n, svc, "healthcheck.timeout"));
        let retries = node
            .get("retries")
            .and_then(Node::as_int)
            .and_then(|n| u32::try_from(n).ok());
        if let Some(start) = node
            .get("start_period")
            .and_then(|n| self.duration(n, svc, "healthcheck.start_period"))
        {
            // Compose gives a starting container its start period plus `retries` failed checks.
            let every = interval
                .as_deref()
                .and_then(|i| units::parse_duration(i).ok())
                .unwrap_or(Duration::from_secs(30));
            let start = units::parse_duration(&start).unwrap_or_default();
            let total = start + every * retries.unwrap_or(3);
            check.start_timeout = Some(units::format_duration(total.max(Duration::from_secs(60))));
        }
        if let Some(n) = node.get("start_interval") {
            self.note(n.line, svc, "`start_interval` is not needed: berth's deploy gate polls a new container quickly (50 ms, doubling)".into());
        }
        check.interval = interval;
        check.failure_threshold = retries.filter(|r| *r > 0);
        out.draft.healthcheck = Some(check);
        Ok(())
    }

    fn deploy(&mut self, out: &mut Converted, node: &Node) -> Result<(), ImportError> {
        let svc_owned = out.compose_name.clone();
        let svc = Some(svc_owned.as_str());
        for (key, value) in node.entries() {
            match key.name.as_str() {
                "replicas" => match value.as_int().and_then(|n| u32::try_from(n).ok()) {
                    Some(0) => self.warn(key.line, svc, "`replicas: 0` is not carried over: berth runs at least one".into()),
                    Some(n) => out.draft.replicas = Some(n),
                    None => self.warn(key.line, svc, "`replicas` is not a number".into()),
                },
                "resources" => {
                    for (kind, resources) in value.entries() {
                        match kind.name.as_str() {
                            "limits" => {
                                for (k, v) in resources.entries() {
                                    match k.name.as_str() {
                                        "memory" => out.draft.memory = self.size(v, svc, "deploy.resources.limits.memory"),
                                        "cpus" => out.draft.cpus = self.cpus(v, svc),
                                        other => self.warn(k.line, svc, format!("limit `{other}` is not carried over: berth limits memory and CPUs")),
                                    }
                                }
                            }
                            "reservations" => {
                                for (k, v) in resources.entries() {
                                    match k.name.as_str() {
                                        "devices" => self.gpu_devices(out, v),
                                        "memory" | "cpus" => self.note(k.line, svc, format!("reservation `{}` is not carried over: berth sets limits; `berth plan` counts them", k.name)),
                                        other => self.warn(k.line, svc, format!("reservation `{other}` is not carried over")),
                                    }
                                }
                            }
                            other => self.warn(kind.line, svc, format!("`deploy.resources.{other}` is not carried over")),
                        }
                    }
                }
                "restart_policy" => {
                    let condition = value.get("condition").and_then(Node::scalar);
                    out.draft.restart = match condition.as_deref() {
                        Some("none") => Some("no".into()),
                        Some("on-failure") => Some("on-failure".into()),
                        Some("any") | None => Some("always".into()),
                        Some(other) => {
                            self.warn(key.line, svc, format!("restart condition `{other}` is not known; not carried over"));
                            None
                        }
                    };
                    if value.get("max_attempts").is_some() || value.get("delay").is_some() || value.get("window").is_some() {
                        self.note(key.line, svc, "restart_policy's delay, max_attempts and window are not carried over: Docker restarts with its own back-off".into());
                    }
                }
                "update_config" | "rollback_config" => self.note(key.line, svc, format!("`deploy.{}` is not needed: berth's deploys start the new replicas, wait for health, move traffic, then drain the old ones, and roll back on failure", key.name)),
                "mode" if value.as_str() == Some("replicated") => {}
                other => self.warn(key.line, svc, format!("`deploy.{other}` is not carried over (it is for Swarm)")),
            }
        }
        Ok(())
    }

    fn gpu_devices(&mut self, out: &mut Converted, node: &Node) {
        let svc_owned = out.compose_name.clone();
        let svc = Some(svc_owned.as_str());
        for device in node.items() {
            let capabilities: Vec<String> = device
                .get("capabilities")
                .map(|c| {
                    c.items()
                        .iter()
                        .flat_map(|i| {
                            if i.items().is_empty() {
                                i.scalar().into_iter().collect::<Vec<_>>()
                            } else {
                                i.items().iter().filter_map(Node::scalar).collect()
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !capabilities.iter().any(|c| c == "gpu") {
                self.warn(
                    device.line,
                    svc,
                    "a device reservation without the `gpu` capability is not carried over".into(),
                );
                continue;
            }
            if let Some(driver) = device
                .get("driver")
                .and_then(Node::scalar)
                .filter(|d| d != "nvidia")
            {
                self.warn(
                    device.line,
                    svc,
                    format!("GPU driver `{driver}`: berth asks Docker for NVIDIA GPUs"),
                );
            }
            out.draft.gpus = Some(if let Some(ids) = device.get("device_ids") {
                self.warn(
                    ids.line,
                    svc,
                    "`device_ids` are not carried over: berth asks for a number of GPUs".into(),
                );
                Gpus::Count(ids.items().len().max(1) as u32)
            } else {
                match device.get("count").and_then(Node::scalar).as_deref() {
                    Some("all") | None => Gpus::All,
                    Some(n) => n.parse().map(Gpus::Count).unwrap_or(Gpus::All),
                }
            });
        }
    }

    fn restart(&mut self, out: &mut Converted, node: &Node) {
        let svc = Some(out.compose_name.clone());
        let text = node.scalar().unwrap_or_default();
        out.draft.restart = match text.as_str() {
            "no" | "false" => Some("no".into()),
            "always" | "unless-stopped" | "on-failure" => Some(text.clone()),
            other if other.starts_with("on-failure:") => {
                self.note(
                    node.line,
                    svc.as_deref(),
                    "the retry count of `on-failure:N` is not carried over".into(),
                );
                Some("on-failure".into())
            }
            other => {
                self.warn(
                    node.line,
                    svc.as_deref(),
                    format!("restart `{other}` is not a restart policy; not carried over"),
                );
                None
            }
        };
        if out.draft.restart.as_deref() == Some("unless-stopped") {
            out.draft.restart = None; // berth's default
        }
    }

    fn service_secrets(&mut self, out: &mut Converted, node: &Node) {
        let svc_owned = out.compose_name.clone();
        let svc = Some(svc_owned.as_str());
        for item in node.items() {
            let (source, target) = if item.is_map() {
                for (k, _) in item.entries() {
                    if matches!(k.name.as_str(), "uid" | "gid" | "mode") {
                        self.note(k.line, svc, format!("secret `{}` is not carried over: berth makes secret files readable by the image's user", k.name));
                    }
                }
                (
                    item.get("source")
                        .and_then(Node::scalar)
                        .unwrap_or_default(),
                    item.get("target").and_then(Node::scalar),
                )
            } else {
                (item.scalar().unwrap_or_default(), None)
            };
            if source.is_empty() {
                continue;
            }
            let name = secret_name(&source);
            let default_path = format!("/run/secrets/{source}");
            if name != source {
                self.warn(item.line, svc, format!("secret `{source}` is named `{name}` in berth, so its file is /run/secrets/{name}, not {default_path}; update the app or its *_FILE variable"));
            }
            if let Some(target) = target.filter(|t| t != &source && t != &default_path) {
                self.warn(item.line, svc, format!("secret `{source}` is mounted at /run/secrets/{name}, not `{target}`: berth mounts each secret file under its name"));
            }
            if !out.draft.secret_files.contains(&name) {
                out.draft.secret_files.push(name.clone());
            }
            let how = self
                .secret_defs
                .get(&source)
                .cloned()
                .unwrap_or_else(|| format!("berth secrets set {name}"));
            self.secret(&name, how);
        }
    }

    fn logging(&mut self, out: &mut Converted, node: &Node) {
        let svc = Some(out.compose_name.clone());
        let driver = node.get("driver").and_then(Node::scalar);
        if let Some(driver) = driver
            .as_deref()
            .filter(|d| !matches!(*d, "json-file" | "local"))
        {
            self.warn(node.line, svc.as_deref(), format!("log driver `{driver}` is not carried over: berth keeps every container's output itself (`berth logs`) and can forward it to syslog ([logging] syslog)"));
        }
        let options = node.get("options");
        let max_size = options
            .and_then(|o| o.get("max-size"))
            .and_then(Node::scalar);
        let max_files = options
            .and_then(|o| o.get("max-file"))
            .and_then(Node::as_int)
            .and_then(|n| u32::try_from(n).ok());
        if max_size.is_some() || max_files.is_some() {
            out.draft.logging = Some(DraftLogging {
                max_size: max_size.map(|s| s.to_ascii_lowercase()),
                max_files,
            });
        }
    }

    fn size(&mut self, node: &Node, svc: Option<&str>, what: &str) -> Option<String> {
        let text = node.scalar()?;
        match units::parse_size(&text) {
            Ok(bytes) if bytes > 0 => Some(units::format_size(bytes)),
            _ => {
                self.warn(
                    node.line,
                    svc,
                    format!("`{what}: {text}` is not a size berth reads; not carried over"),
                );
                None
            }
        }
    }

    fn cpus(&mut self, node: &Node, svc: Option<&str>) -> Option<f64> {
        let text = node.scalar()?;
        match text.parse::<f64>() {
            Ok(n) if n > 0.0 => Some(n),
            _ => {
                self.warn(
                    node.line,
                    svc,
                    format!("cpus `{text}` is not a number of cores; not carried over"),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, svc: Option<&str>, what: &str) -> Option<String> {
        let text = node.scalar()?;
        match units::parse_duration(&text) {
            Ok(d) => Some(units::format_duration(d)),
            Err(_) => {
                self.warn(
                    node.line,
                    svc,
                    format!("`{what}: {text}` is not a duration berth reads; not carried over"),
                );
                None
            }
        }
    }
}

fn unsupported(key: &str) -> String {
    format!("`{key}` is not carried over: berth's manifest has no such setting")
}

fn kind_of(source: &str) -> String {
    if source.starts_with('.') || source.starts_with('/') || source.starts_with('~') {
        "bind".into()
    } else {
        "volume".into()
    }
}

fn absolute_dir(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| {
        if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(dir))
                .unwrap_or_else(|_| dir.to_path_buf())
        }
    })
}

/// `path` relative to `base`, with `..` where it leaves `base`.
fn relative_to(path: &Path, base: &Path) -> Option<PathBuf> {
    let path: Vec<Component> = path.components().collect();
    let base: Vec<Component> = base.components().collect();
    if path.first() != base.first() {
        return None;
    }
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..base.len() {
        out.push("..");
    }
    for component in &path[common..] {
        out.push(component);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthcheck_urls_become_paths() {
        assert_eq!(
            local_http_path("curl -fsS http://localhost:8000/health || exit 1", 8000).as_deref(),
            Some("/health")
        );
        assert_eq!(
            local_http_path("wget -qO- http://127.0.0.1:3000/api/health", 3000).as_deref(),
            Some("/api/health")
        );
        assert_eq!(
            local_http_path("curl -f http://localhost/", 80).as_deref(),
            Some("/")
        );
        assert_eq!(
            local_http_path("curl -f http://localhost:9999/health", 8000),
            None
        );
        assert_eq!(local_http_path("pg_isready -U app", 5432), None);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/b/c"), Path::new("/a")).unwrap(),
            PathBuf::from("b/c")
        );
        assert_eq!(
            relative_to(Path::new("/a/x"), Path::new("/a/b")).unwrap(),
            PathBuf::from("../x")
        );
        assert_eq!(
            berth_manifest::normalize_path(Path::new("/a/./b/../c")),
            PathBuf::from("/a/c")
        );
    }
}
