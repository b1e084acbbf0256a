//! Raw manifest -> resolved [`Manifest`]: every check that needs more than a TOML type, with
//! all problems collected so one `berth check` shows them all.

use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::model::*;
use crate::raw::*;
use crate::shell;
use crate::units::{parse_duration, parse_size};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

mod alerts;
mod backups;

const NAME_HELP: &str = "use lower-case letters, digits and dashes, starting with a letter";
const DURATION_HELP: &str = "durations look like 500ms, 30s, 5m or 1h30m";
const SIZE_HELP: &str = "sizes look like 512m or 1g";

pub(crate) struct Checker<'a> {
    base_dir: &'a Path,
    pub diagnostics: Vec<Diagnostic>,
}

fn span<T>(value: &Spanned<T>) -> Option<Range<usize>> {
    Some(value.span())
}

impl<'a> Checker<'a> {
    pub fn new(base_dir: &'a Path) -> Self {
        Self {
            base_dir,
            diagnostics: Vec::new(),
        }
    }

    fn error(&mut self, message: impl Into<String>, at: Option<Range<usize>>) {
        self.diagnostics.push(Diagnostic::new(message, at));
    }

    fn error_help(
        &mut self,
        message: impl Into<String>,
        at: Option<Range<usize>>,
        help: impl Into<String>,
    ) {
        self.diagnostics
            .push(Diagnostic::new(message, at).with_help(help));
    }

    fn duration(
        &mut self,
        what: &str,
        value: Option<&SpannedString>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.error_help(
                    format!("`{what}` must be longer than zero"),
                    span(value),
                    DURATION_HELP,
                );
                default
            }
            Ok(d) if d > max => {
                self.error_help(
                    format!(
                        "`{what}` = \"{}\" is longer than the maximum of {}",
                        value.get_ref(),
                        crate::units::format_duration(max)
                    ),
                    span(value),
                    DURATION_HELP,
                );
                default
            }
            Ok(d) => d,
            Err(reason) => {
                self.error_help(
                    format!("`{what}` is not a duration: {reason}"),
                    span(value),
                    DURATION_HELP,
                );
                default
            }
        }
    }

    fn integer(
        &mut self,
        what: &str,
        value: Option<&Spanned<i64>>,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> u32 {
        let Some(value) = value else { return default };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.error(
                    format!(
                        "`{what}` = {} is out of range: it must be between {} and {}",
                        value.get_ref(),
                        range.start(),
                        range.end()
                    ),
                    span(value),
                );
                default
            }
        }
    }

    pub fn manifest(
        &mut self,
        raw: RawManifest,
        environment: Option<&str>,
        overlay_sets_app: bool,
        whole: Range<usize>,
    ) -> Option<Manifest> {
        let app = match &raw.app {
            None => {
                self.error_help(
                    "the manifest has no `app` name",
                    Some(whole.start..whole.start),
                    "add a line such as: app = \"myapp\"",
                );
                String::new()
            }
            Some(name) => {
                if !valid_name(name.get_ref(), 40) {
                    self.error_help(
                        format!("`{}` is not a valid app name", name.get_ref()),
                        span(name),
                        format!("{NAME_HELP}; at most 40 characters"),
                    );
                }
                name.get_ref().clone()
            }
        };
        let app = match environment {
            Some(env) if !overlay_sets_app => format!("{app}-{env}"),
            _ => app,
        };

        let deploy = self.deploy(raw.deploy.as_ref());
        let log_forward = raw.logging.as_ref().and_then(|l| self.log_forward(l));
        let default_logging = self.logging(
            raw.logging.as_ref(),
            &Logging {
                driver: "json-file".into(),
                max_size: 10 << 20,
                max_files: 3,
            },
        );

        if raw.services.is_empty() && raw.accessories.is_empty() {
            self.error_help(
                "the manifest defines no services",
                Some(whole.start..whole.start),
                "add a service, such as:\n  [services.web]\n  image = \"nginx:1.27\"\n  port = 80",
            );
        }

        // Services and accessories share one namespace: both are host names on the app network.
        let mut all_names: HashMap<String, (bool, Range<usize>)> = HashMap::new();
        for (name, accessory) in raw
            .services
            .keys()
            .map(|k| (k, false))
            .chain(raw.accessories.keys().map(|k| (k, true)))
        {
            if !valid_name(name.get_ref(), 32) {
                self.error_help(
                    format!("`{}` is not a valid service name", name.get_ref()),
                    span(name),
                    format!("{NAME_HELP}; at most 32 characters"),
                );
            }
            if let Some((other_accessory, _)) = all_names.get(name.get_ref()) {
                let (kind, other) = if *other_accessory {
                    ("an accessory", "accessory")
                } else {
                    ("a service", "service")
                };
                self.error_help(
                    format!("`{}` is both {kind} and an {}", name.get_ref(), if accessory { "accessory" } else { other }),
                    span(name),
                    "services and accessories share one namespace (they are host names on the app network); rename one",
                );
            }
            all_names.insert(name.get_ref().clone(), (accessory, name.span()));
        }

        let mut services = BTreeMap::new();
        for (name, raw_service) in &raw.services {
            if let Some(service) =
                self.service(name, raw_service, false, &default_logging, &all_names)
            {
                services.insert(name.get_ref().clone(), service);
            }
        }
        let mut accessories = BTreeMap::new();
        for (name, raw_service) in &raw.accessories {
            if let Some(service) =
                self.service(name, raw_service, true, &default_logging, &all_names)
            {
                accessories.insert(name.get_ref().clone(), service);
            }
        }
        self.check_cycles(&raw);
        self.check_routes(&raw, &services);
        self.check_published_ports(&raw, &accessories);
        let backup = self.backup_settings(&raw, &services, &accessories);
        let registry = raw.registry.as_ref().map(|r| self.registry(r));
        let alerts = self.alert_channels(&raw);
        let monitors = self.monitors(&raw);
        let thresholds = self.thresholds(&raw, &services, &accessories);
        let status_page = raw
            .status_page
            .as_ref()
            .and_then(|page| self.status_page(page, &app, &services, &accessories));

        if !self.diagnostics.is_empty() {
            return None;
        }
        Some(Manifest {
            app,
            environment: environment.map(str::to_owned),
            services,
            accessories,
            deploy,
            backup,
            registry,
            alerts,
            monitors,
            thresholds,
            log_forward,
            status_page,
        })
    }

    fn status_page(
        &mut self,
        raw: &Spanned<RawStatusPage>,
        app: &str,
        services: &BTreeMap<String, Service>,
        accessories: &BTreeMap<String, Service>,
    ) -> Option<StatusPage> {
        let page = raw.get_ref();
        let mut domains = Vec::new();
        for domain in &page.domains {
            match check_domain(domain.get_ref()) {
                Ok(d) if d.starts_with("*.") => self.error_help(
                    format!("the status page cannot be served on a wildcard, `{d}`"),
                    span(domain),
                    "name the host, such as \"status.example.com\"",
                ),
                Ok(d) => domains.push(d),
                Err(help) => self.error_help(
                    format!("`{}` is not a valid domain", domain.get_ref()),
                    span(domain),
                    help,
                ),
            }
        }
        let path = self.path_prefix(page.path.as_ref(), "status page path", "/status");
        if domains.is_empty() && path == "/" {
            self.error_help(
                "a status page on every host at `/` would hide the app".to_owned(),
                span(raw),
                "give it domains = [\"status.example.com\"], or a path such as path = \"/status\"",
            );
        }
        let clash = services.iter().find(|(_, service)| {
            service.route.as_ref().is_some_and(|route| {
                route.path == path
                    && (route.domains.is_empty() && domains.is_empty()
                        || route.domains.iter().any(|d| domains.contains(d)))
            })
        });
        if let Some((name, _)) = clash {
            self.error_help(
                format!("the status page is at the same place as service `{name}`'s route"),
                span(raw),
                "give the status page its own domain or path",
            );
        }
        let title = match &page.title {
            Some(title)
                if title.get_ref().trim().is_empty() || title.get_ref().chars().count() > 80 =>
            {
                self.error(
                    "the status page's title must be 1 to 80 characters".to_owned(),
                    span(title),
                );
                app.to_owned()
            }
            Some(title) => title.get_ref().trim().to_owned(),
            None => app.to_owned(),
        };
        let shown = match &page.services {
            // What the public reaches already; workers' names stay private unless listed.
            None => services
                .iter()
                .filter(|(_, service)| service.route.is_some())
                .map(|(name, _)| name.clone())
                .collect(),
            Some(names) => {
                let mut shown = Vec::new();
                for name in names {
                    let known = services.contains_key(name.get_ref())
                        || accessories.contains_key(name.get_ref());
                    if known {
                        shown.push(name.get_ref().clone());
                    } else {
                        self.error_help(
                            format!(
                                "the status page lists `{}`, which is no service or accessory",
                                name.get_ref()
                            ),
                            span(name),
                            "list names from [services] or [accessories]",
                        );
                    }
                }
                shown
            }
        };
        Some(StatusPage {
            domains,
            path,
            title,
            services: shown,
        })
    }

    fn registry(&mut self, raw: &Spanned<RawRegistry>) -> Registry {
        let registry = raw.get_ref();
        let server = registry.server.get_ref();
        if let Some((scheme, _)) = server.split_once("://") {
            self.error_help(
                format!("[registry] server `{server}` has a scheme"),
                span(&registry.server),
                format!("name the host as image references do, without `{scheme}://`, such as ghcr.io or registry.example.com:5000"),
            );
        } else if server.is_empty()
            || server.contains('/')
            || server.chars().any(|c| c.is_whitespace())
        {
            self.error_help(
                format!("[registry] server `{server}` is not a registry host"),
                span(&registry.server),
                "name the host as image references do, such as ghcr.io or registry.example.com:5000",
            );
        }
        if registry.username.get_ref().trim().is_empty() {
            self.error_help(
                "[registry] username is empty",
                span(&registry.username),
                "give the registry user berth pulls as",
            );
        }
        let password_secret = match &registry.password_secret {
            Some(name) => {
                if !valid_env_name(name.get_ref()) {
                    self.error_help(
                        format!("`{}` is not a valid secret name", name.get_ref()),
                        span(name),
                        format!("name the berth secret holding the password or token ({}); the password itself never goes in berth.toml", backups::SECRET_HELP),
                    );
                }
                name.get_ref().clone()
            }
            None => "REGISTRY_PASSWORD".to_owned(),
        };
        Registry {
            server: server.clone(),
            username: registry.username.get_ref().clone(),
            password_secret,
        }
    }

    fn deploy(&mut self, raw: Option<&RawDeploy>) -> DeploySettings {
        let hour = Duration::from_secs(3600);
        DeploySettings {
            keep_releases: self.integer(
                "deploy.keep_releases",
                raw.and_then(|r| r.keep_releases.as_ref()),
                5,
                1..=100,
            ),
            drain_timeout: self.duration(
                "deploy.drain_timeout",
                raw.and_then(|r| r.drain_timeout.as_ref()),
                Duration::from_secs(30),
                hour,
            ),
            websocket_drain: self.duration(
                "deploy.websocket_drain",
                raw.and_then(|r| r.websocket_drain.as_ref()),
                crate::DEFAULT_WEBSOCKET_DRAIN,
                7 * 24 * hour,
            ),
            release_timeout: self.duration(
                "deploy.release_timeout",
                raw.and_then(|r| r.release_timeout.as_ref()),
                Duration::from_secs(600),
                24 * hour,
            ),
        }
    }

    /// `[logging] syslog` and `syslog_facility` of the top level.
    fn log_forward(&mut self, raw: &RawLogging) -> Option<crate::LogForward> {
        const HELP: &str =
            "such as syslog = \"udp://logs.example.com:514\" or \"tcp://10.0.0.5:601\"";
        let facility = match &raw.syslog_facility {
            None => 1,
            Some(name) => match name.get_ref().as_str() {
                "user" => 1,
                "daemon" => 3,
                other => match other
                    .strip_prefix("local")
                    .and_then(|n| n.parse::<u8>().ok())
                    .filter(|n| *n <= 7)
                {
                    Some(n) => 16 + n,
                    None => {
                        self.error_help(
                            format!("`logging.syslog_facility` `{other}` is not a facility berth sends as"),
                            span(name),
                            "use user (the default), daemon or local0 to local7",
                        );
                        1
                    }
                },
            },
        };
        let text = raw.syslog.as_ref()?;
        let Some((transport, rest)) = text.get_ref().split_once("://") else {
            self.error_help(
                format!("`logging.syslog` `{}` has no transport", text.get_ref()),
                span(text),
                HELP,
            );
            return None;
        };
        if transport != "udp" && transport != "tcp" {
            self.error_help(
                format!("`logging.syslog` sends over udp or tcp, not `{transport}`"),
                span(text),
                format!(
                    "{HELP}; for TLS, run a local relay (rsyslog, vector) and point berth at it"
                ),
            );
            return None;
        }
        // `host`, `host:port`, `[v6]` or `[v6]:port`.
        let (host, port) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((host, after)) => (host, after.strip_prefix(':').unwrap_or(after)),
            None if rest.matches(':').count() > 1 => (rest, "?"),
            None => rest.split_once(':').unwrap_or((rest, "")),
        };
        let port = if port.is_empty() {
            514
        } else {
            match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    self.error_help(
                        format!("`logging.syslog` `{}` has no valid port", text.get_ref()),
                        span(text),
                        format!("{HELP}; an IPv6 address goes in brackets, [2001:db8::5]:514"),
                    );
                    return None;
                }
            }
        };
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            self.error_help(
                format!("`logging.syslog`: `{host}` is not a host"),
                span(text),
                HELP,
            );
            return None;
        }
        Some(crate::LogForward {
            transport: transport.to_owned(),
            host: host.to_owned(),
            port,
            facility,
        })
    }

    fn logging(&mut self, raw: Option<&RawLogging>, defaults: &Logging) -> Logging {
        let Some(raw) = raw else {
            return defaults.clone();
        };
        let driver = match &raw.driver {
            Some(d) if d.get_ref().trim().is_empty() => {
                self.error("`logging.driver` is empty", span(d));
                defaults.driver.clone()
            }
            Some(d) => d.get_ref().clone(),
            None => defaults.driver.clone(),
        };
        let max_size = match &raw.max_size {
            None => defaults.max_size,
            Some(s) => match parse_size(s.get_ref()) {
                Ok(n) if n >= 1024 => n,
                Ok(_) => {
                    self.error_help(
                        "`logging.max_size` is too small to be useful",
                        span(s),
                        SIZE_HELP,
                    );
                    defaults.max_size
                }
                Err(reason) => {
                    self.error_help(
                        format!("`logging.max_size` is not a size: {reason}"),
                        span(s),
                        SIZE_HELP,
                    );
                    defaults.max_size
                }
            },
        };
        let max_files = self.integer(
            "logging.max_files",
            raw.max_files.as_ref(),
            defaults.max_files,
            1..=100,
        );
        Logging {
            driver,
            max_size,
            max_files,
        }
    }

    fn service(
        &mut self,
        name: &SpannedString,
        raw: &Spanned<RawService>,
        accessory: bool,
        default_logging: &Logging,
        all_names: &HashMap<String, (bool, Range<usize>)>,
    ) -> Option<Service> {
        let errors_before = self.diagnostics.len();
        let service_name = name.get_ref();
        let table = if accessory { "accessories" } else { "services" };
        let here = format!("[{table}.{service_name}]");
        let svc = raw.get_ref();

        let source = match (&svc.image, &svc.build) {
            (Some(_), Some(build)) => {
                self.error_help(format!("{here} has both `image` and `build`"), span(build), "keep one: `image` to run an existing image, `build` to build one from a context");
                None
            }
            (None, None) => {
                self.error_help(
                    format!("{here} needs `image` or `build`"),
                    span(name),
                    "add image = \"repo/name:tag\" or build = \".\"",
                );
                None
            }
            (Some(image), None) => {
                if let Err(reason) = check_image_reference(image.get_ref()) {
                    self.error_help(
                        format!(
                            "`{}` is not a valid image reference: {reason}",
                            image.get_ref()
                        ),
                        span(image),
                        "image references look like postgres:16 or ghcr.io/org/app:1.2",
                    );
                }
                let pull = svc.pull.as_ref().and_then(|p| match p.get_ref().as_str() {
                    "always" => Some(PullPolicy::Always),
                    "missing" => Some(PullPolicy::Missing),
                    other => {
                        self.error_help(
                            format!("{here}: `pull = \"{other}\"` is not a pull policy"),
                            span(p),
                            "use \"always\" (pull on every deploy) or \"missing\" (only when the image is not on the server)",
                        );
                        None
                    }
                });
                Some(ImageSource::Image {
                    reference: image.get_ref().clone(),
                    pull,
                })
            }
            (None, Some(build)) => self.build(build).map(ImageSource::Build),
        };
        if let (Some(pull), None) = (&svc.pull, &svc.image) {
            self.error_help(
                format!("{here}: `pull` applies to `image` only"),
                span(pull),
                "remove it: a built image is built on every deploy",
            );
        }

        let port = svc
            .port
            .as_ref()
            .and_then(|p| match u16::try_from(*p.get_ref()) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    self.error(
                        format!("port {} is out of range: ports are 1 to 65535", p.get_ref()),
                        span(p),
                    );
                    None
                }
            });

        let command = svc
            .command
            .as_ref()
            .and_then(|c| self.command("command", c));

        let mut env = BTreeMap::new();
        for (key, value) in &svc.env {
            if !valid_env_name(key.get_ref()) {
                self.error_help(
                    format!(
                        "`{}` is not a valid environment variable name",
                        key.get_ref()
                    ),
                    span(key),
                    "use letters, digits and underscores, not starting with a digit",
                );
            }
            env.insert(key.get_ref().clone(), value.get_ref().to_text());
        }

        let mut secrets: Vec<SecretRef> = Vec::new();
        for (list, delivery) in [
            (&svc.secrets, SecretDelivery::Env),
            (&svc.secret_files, SecretDelivery::File),
        ] {
            for secret in list {
                let secret_name = secret.get_ref();
                if !valid_env_name(secret_name) {
                    self.error_help(format!("`{secret_name}` is not a valid secret name"), span(secret), "use letters, digits and underscores, not starting with a digit, such as JWT_SECRET_KEY");
                    continue;
                }
                if secrets.iter().any(|s| &s.name == secret_name) {
                    self.error_help(format!("secret `{secret_name}` is listed twice in {here}"), span(secret), "list each secret once, in `secrets` (environment variable) or `secret_files` (file)");
                    continue;
                }
                if delivery == SecretDelivery::Env && env.contains_key(secret_name) {
                    self.error_help(
                        format!("`{secret_name}` is both a plain `env` value and a secret"),
                        span(secret),
                        "remove it from `env`; the secret sets the variable",
                    );
                }
                secrets.push(SecretRef {
                    name: secret_name.clone(),
                    delivery,
                });
            }
        }

        let mut volumes: Vec<VolumeMount> = Vec::new();
        for spec in &svc.volumes {
            match parse_volume(spec.get_ref(), self.base_dir) {
                Ok(mount) => {
                    if volumes.iter().any(|v| v.target == mount.target) {
                        self.error(format!("two volumes are mounted at `{}`", mount.target), span(spec));
                    }
                    volumes.push(mount);
                }
                Err(reason) => self.error_help(
                    format!("volume `{}` is not valid: {reason}", spec.get_ref()),
                    span(spec),
                    "volumes look like data:/app/data (named), /srv/files:/files:ro or ./config:/app/config (bind)",
                ),
            }
        }

        let healthcheck = self.healthcheck(svc.healthcheck.as_ref(), port, accessory);

        let release_command = match &svc.release_command {
            Some(c) if accessory => {
                self.error_help(
                    "accessories do not run release commands",
                    span(c),
                    "move `release_command` to the service that owns the migrations",
                );
                None
            }
            Some(c) => self.command("release_command", c),
            None => None,
        };

        let replicas = match &svc.replicas {
            Some(r) if accessory && *r.get_ref() != 1 => {
                self.error_help(
                    "accessories run exactly one container",
                    span(r),
                    "remove `replicas`, or make this a service",
                );
                1
            }
            other => self.integer("replicas", other.as_ref(), 1, 1..=64),
        };

        let memory = svc.memory.as_ref().and_then(|m| {
            let parsed = match m.get_ref() {
                Scalar::Integer(n) => u64::try_from(*n).map_err(|_| "it is negative".to_owned()),
                Scalar::String(s) => parse_size(s),
                _ => Err("expected a size string".to_owned()),
            };
            match parsed {
                Ok(bytes) if bytes >= 6 << 20 => Some(bytes),
                Ok(_) => {
                    self.error_help(
                        "`memory` is below Docker's minimum of 6m",
                        span(m),
                        SIZE_HELP,
                    );
                    None
                }
                Err(reason) => {
                    self.error_help(
                        format!("`memory` is not a size: {reason}"),
                        span(m),
                        SIZE_HELP,
                    );
                    None
                }
            }
        });

        let cpus = svc.cpus.as_ref().and_then(|c| {
            let parsed = match c.get_ref() {
                Scalar::Integer(n) => Some(*n as f64),
                Scalar::Float(f) => Some(*f),
                Scalar::String(s) => s.trim().parse::<f64>().ok(),
                Scalar::Bool(_) => None,
            };
            match parsed {
                Some(n) if n > 0.0 && n <= 1024.0 => Some(n),
                _ => {
                    self.error_help(
                        "`cpus` must be a positive number of cores",
                        span(c),
                        "such as cpus = 0.5 or cpus = 2",
                    );
                    None
                }
            }
        });

        let stop_timeout = self.duration(
            "stop_timeout",
            svc.stop_timeout.as_ref(),
            Duration::from_secs(10),
            Duration::from_secs(3600),
        );

        let mut depends_on = Vec::new();
        for dependency in &svc.depends_on {
            let dep = dependency.get_ref();
            match all_names.get(dep) {
                None => {
                    let help = match did_you_mean(dep, all_names.keys().map(String::as_str)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!(
                            "known services and accessories: {}",
                            sorted_names(all_names)
                        ),
                    };
                    self.error_help(
                        format!("{here} depends on `{dep}`, which is not defined"),
                        span(dependency),
                        help,
                    );
                }
                Some(_) if dep == service_name => {
                    self.error(format!("{here} depends on itself"), span(dependency));
                }
                Some((false, _)) if accessory => {
                    self.error_help(format!("accessory `{service_name}` depends on service `{dep}`"), span(dependency), "accessories start before services; an accessory can only depend on other accessories");
                }
                Some(_) => depends_on.push(dep.clone()),
            }
        }

        let gpus = svc.gpus.as_ref().and_then(|g| match g.get_ref() {
            Scalar::String(s) if s == "all" => Some(Gpus::All),
            Scalar::Integer(n) if *n > 0 && *n <= 64 => Some(Gpus::Count(*n as u32)),
            _ => {
                self.error_help(
                    "`gpus` must be \"all\" or a number of GPUs",
                    span(g),
                    "such as gpus = \"all\" for an LLM runtime",
                );
                None
            }
        });

        let route = match &svc.route {
            Some(r) if accessory => {
                self.error_help(
                    "accessories cannot be routed",
                    span(r),
                    "accessories are not replaced with zero downtime; route a service instead",
                );
                None
            }
            Some(r) if port.is_none() => {
                self.error_help(
                    format!("{here} has a `route` but no `port`"),
                    span(r),
                    "add the port the container listens on, such as port = 8000",
                );
                None
            }
            Some(r) => self.route(r),
            None => None,
        };

        let mut publish = Vec::new();
        for spec in &svc.publish {
            if !accessory {
                self.error_help(
                    "services cannot publish host ports",
                    span(spec),
                    "during a deploy the old and new containers run side by side and could not share a host port; use `route` for HTTP, or make this an accessory",
                );
                break;
            }
            match parse_publish(spec.get_ref()) {
                Ok(binding) => publish.push(binding),
                Err(reason) => self.error_help(
                    format!(
                        "`{}` is not a valid port to publish: {reason}",
                        spec.get_ref()
                    ),
                    span(spec),
                    "such as \"5432\", \"5432:5432\" or \"127.0.0.1:5432:5432\"",
                ),
            }
        }

        let restart = match &svc.restart {
            None => RestartPolicy::UnlessStopped,
            Some(r) => match r.get_ref().as_str() {
                "unless-stopped" => RestartPolicy::UnlessStopped,
                "always" => RestartPolicy::Always,
                "on-failure" => RestartPolicy::OnFailure,
                "no" => RestartPolicy::No,
                other => {
                    self.error_help(
                        format!("`{other}` is not a restart policy"),
                        span(r),
                        "use unless-stopped, always, on-failure or no",
                    );
                    RestartPolicy::UnlessStopped
                }
            },
        };

        if let Some(syslog) = svc
            .logging
            .as_ref()
            .and_then(|l| l.syslog.as_ref().or(l.syslog_facility.as_ref()))
        {
            self.error_help(
                format!(
                    "[{}.{}] logging: syslog is set for the whole app",
                    if accessory { "accessories" } else { "services" },
                    name.get_ref()
                ),
                span(syslog),
                "move it to the top-level [logging] table",
            );
        }
        let logging = self.logging(svc.logging.as_ref(), default_logging);

        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(Service {
            name: service_name.clone(),
            accessory,
            source: source?,
            port,
            command,
            env,
            secrets,
            volumes,
            healthcheck,
            release_command,
            replicas,
            memory,
            cpus,
            stop_timeout,
            depends_on,
            gpus,
            route,
            publish,
            restart,
            init: svc.init.unwrap_or(true),
            logging,
        })
    }

    fn build(&mut self, build: &Spanned<RawBuild>) -> Option<BuildSpec> {
        let (context, dockerfile, args, target) = match build.get_ref() {
            RawBuild::Context(context) => (
                context.clone(),
                "Dockerfile".to_owned(),
                BTreeMap::new(),
                None,
            ),
            RawBuild::Full(table) => {
                let Some(context) = &table.context else {
                    self.error_help(
                        "`build` needs a `context` directory",
                        span(build),
                        "such as build = { context = \".\", dockerfile = \"Dockerfile\" }",
                    );
                    return None;
                };
                let dockerfile = table
                    .dockerfile
                    .as_ref()
                    .map(|d| d.get_ref().clone())
                    .unwrap_or_else(|| "Dockerfile".to_owned());
                if let Some(d) = &table.dockerfile
                    && (Path::new(d.get_ref()).is_absolute()
                        || d.get_ref().split('/').any(|c| c == ".."))
                {
                    self.error_help(
                        "`dockerfile` must be a path inside the build context",
                        span(d),
                        "write it relative to the context, such as docker/Dockerfile.prod",
                    );
                }
                let args = table
                    .args
                    .iter()
                    .map(|(k, v)| (k.get_ref().clone(), v.get_ref().to_text()))
                    .collect();
                (
                    context.get_ref().clone(),
                    dockerfile,
                    args,
                    table.target.as_ref().map(|t| t.get_ref().clone()),
                )
            }
        };
        if context.trim().is_empty() {
            self.error("`build` context is empty", span(build));
            return None;
        }
        Some(BuildSpec {
            context: normalize(&self.base_dir.join(&context)),
            dockerfile,
            args,
            target,
        })
    }

    fn command(&mut self, what: &str, raw: &Spanned<StringOrList>) -> Option<Vec<String>> {
        let words = match raw.get_ref() {
            StringOrList::List(list) => list.clone(),
            StringOrList::String(text) => match shell::split(text) {
                Ok(words) => words,
                Err(reason) => {
                    self.error_help(
                        format!("`{what}` cannot be split into words: {reason}"),
                        span(raw),
                        "write it as a list, such as [\"python\", \"manage.py\", \"migrate\"]",
                    );
                    return None;
                }
            },
        };
        if words.is_empty() || words[0].is_empty() {
            self.error(format!("`{what}` is empty"), span(raw));
            return None;
        }
        Some(words)
    }

    fn healthcheck(
        &mut self,
        raw: Option<&Spanned<RawHealthcheck>>,
        port: Option<u16>,
        accessory: bool,
    ) -> Healthcheck {
        let default_probe = match port {
            Some(_) if accessory => Probe::Tcp,
            // An app answering any non-5xx status on / is serving; a `path` makes it precise.
            Some(_) => Probe::Http {
                path: "/".into(),
                status: StatusRange { min: 100, max: 499 },
            },
            None => Probe::Running,
        };
        let Some(raw) = raw else {
            return Healthcheck {
                probe: default_probe,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(3),
                start_timeout: Duration::from_secs(60),
                failure_threshold: DEFAULT_FAILURE_THRESHOLD,
                restart_after: DEFAULT_RESTART_AFTER,
            };
        };
        let check = raw.get_ref();
        let minute = Duration::from_secs(60);
        let interval = self.duration(
            "healthcheck.interval",
            check.interval.as_ref(),
            Duration::from_secs(5),
            60 * minute,
        );
        let timeout = self.duration(
            "healthcheck.timeout",
            check.timeout.as_ref(),
            Duration::from_secs(3),
            10 * minute,
        );
        let start_timeout = self.duration(
            "healthcheck.start_timeout",
            check.start_timeout.as_ref(),
            Duration::from_secs(60),
            60 * minute,
        );

        let failure_threshold = self.integer(
            "healthcheck.failure_threshold",
            check.failure_threshold.as_ref(),
            DEFAULT_FAILURE_THRESHOLD,
            1..=100,
        );
        let restart_after = match &check.restart_after {
            Some(value) if matches!(value.get_ref().as_str(), "never" | "0") => Duration::ZERO,
            Some(value) if parse_duration(value.get_ref()).is_ok_and(|d| d.is_zero()) => {
                Duration::ZERO
            }
            other => self.duration(
                "healthcheck.restart_after",
                other.as_ref(),
                DEFAULT_RESTART_AFTER,
                24 * 60 * minute,
            ),
        };

        let tcp = check.tcp.as_ref().filter(|t| *t.get_ref());
        let kinds = usize::from(check.path.is_some())
            + usize::from(tcp.is_some())
            + usize::from(check.command.is_some());
        if kinds > 1 {
            self.error_help(
                "`healthcheck` sets more than one of `path`, `tcp` and `command`",
                span(raw),
                "choose one kind of check",
            );
        }
        if let Some(status) = &check.status
            && check.path.is_none()
        {
            self.error_help(
                "`healthcheck.status` only applies to an HTTP check",
                span(status),
                "add `path`, such as path = \"/health\"",
            );
        }
        let probe = if let Some(path) = &check.path {
            if port.is_none() {
                self.error_help(
                    "an HTTP `healthcheck.path` needs the service's `port`",
                    span(path),
                    "add the port the container listens on, or use a `command` check",
                );
            }
            if !path.get_ref().starts_with('/') {
                self.error_help(
                    format!("health check path `{}` must start with `/`", path.get_ref()),
                    span(path),
                    format!("write \"/{}\"", path.get_ref()),
                );
            }
            let status = match &check.status {
                None => StatusRange { min: 200, max: 299 },
                Some(s) => match parse_status(s.get_ref()) {
                    Ok(range) => range,
                    Err(reason) => {
                        self.error_help(
                            format!("`healthcheck.status` is not valid: {reason}"),
                            span(s),
                            "such as 200, \"2xx\" or \"200-399\"",
                        );
                        StatusRange { min: 200, max: 299 }
                    }
                },
            };
            Probe::Http {
                path: path.get_ref().clone(),
                status,
            }
        } else if let Some(tcp) = tcp {
            if port.is_none() {
                self.error_help(
                    "a TCP health check needs the service's `port`",
                    span(tcp),
                    "add the port the container listens on",
                );
            }
            Probe::Tcp
        } else if let Some(command) = &check.command {
            match self.command("healthcheck.command", command) {
                Some(words) => Probe::Command(words),
                None => default_probe,
            }
        } else {
            default_probe
        };
        Healthcheck {
            probe,
            interval,
            timeout,
            start_timeout,
            failure_threshold,
            restart_after,
        }
    }

    fn route(&mut self, raw: &Spanned<RawRoute>) -> Option<Route> {
        let route = raw.get_ref();
        let mut domains = Vec::new();
        for domain in &route.domains {
            match check_domain(domain.get_ref()) {
                Ok(d) => {
                    if domains.contains(&d) {
                        self.error(format!("domain `{d}` is listed twice"), span(domain));
                    }
                    domains.push(d);
                }
                Err(help) => self.error_help(
                    format!("`{}` is not a valid domain", domain.get_ref()),
                    span(domain),
                    help,
                ),
            }
        }
        let path = self.path_prefix(route.path.as_ref(), "route path", "/api");
        let tls = match &route.tls {
            None => Tls::Auto,
            Some(raw_tls) => match raw_tls.get_ref() {
                RawTls::Mode(mode) if mode == "auto" => Tls::Auto,
                RawTls::Mode(mode) if mode == "off" => Tls::Off,
                RawTls::Mode(mode) => {
                    self.error_help(format!("`{mode}` is not a TLS mode"), span(raw_tls), "use \"auto\", \"off\" or { cert = \"/path/cert.pem\", key = \"/path/key.pem\" }");
                    Tls::Auto
                }
                RawTls::Files(files) => {
                    if domains.is_empty() {
                        self.error_help(
                            "a route with certificate files needs `domains`",
                            span(raw_tls),
                            "name the host names the certificate is for",
                        );
                    }
                    Tls::Files {
                        cert: normalize(&self.base_dir.join(files.cert.get_ref())),
                        key: normalize(&self.base_dir.join(files.key.get_ref())),
                    }
                }
            },
        };
        if tls == Tls::Auto
            && let Some(wildcard) = route.domains.iter().find(|d| d.get_ref().starts_with("*."))
        {
            self.error_help(
                    format!("`{}` needs a wildcard certificate, which berth cannot get automatically", wildcard.get_ref()),
                    span(wildcard),
                    "wildcard certificates need a DNS-01 challenge: give certificate files with tls = { cert = \"...\", key = \"...\" }, or set tls = \"off\"",
                );
        }
        let max_body = match &route.max_body {
            None => DEFAULT_MAX_BODY,
            Some(size) => match parse_size(size.get_ref()) {
                Ok(bytes) => bytes,
                Err(reason) => {
                    self.error_help(
                        format!("`route.max_body` is not a size: {reason}"),
                        span(size),
                        SIZE_HELP,
                    );
                    DEFAULT_MAX_BODY
                }
            },
        };
        let response_timeout = self.duration(
            "route.response_timeout",
            route.response_timeout.as_ref(),
            Duration::from_secs(60),
            Duration::from_secs(24 * 3600),
        );
        let rate_limit =
            route
                .rate_limit
                .as_ref()
                .and_then(|rate| match parse_rate(rate.get_ref()) {
                    Ok(limit) => Some(limit),
                    Err(reason) => {
                        self.error_help(
                            format!("`route.rate_limit` is not valid: {reason}"),
                            span(rate),
                            "such as \"60/min\", \"10/s\" or \"1000/h\"",
                        );
                        None
                    }
                });
        let max_concurrent = route
            .max_concurrent
            .as_ref()
            .map(|n| self.integer("route.max_concurrent", Some(n), 1, 1..=1_000_000));
        let balance = match route.balance.as_ref().map(|b| (b, b.get_ref().as_str())) {
            None | Some((_, "round-robin")) => Balance::RoundRobin,
            Some((_, "least-connections")) => Balance::LeastConnections,
            Some((b, other)) => {
                self.error_help(
                    format!("`{other}` is not a balancing strategy"),
                    span(b),
                    "use \"round-robin\" or \"least-connections\"",
                );
                Balance::RoundRobin
            }
        };
        let auth = route.auth.as_ref().and_then(|auth| self.route_auth(auth));
        if let Some(raw) = &route.auth
            && auth.is_some()
            && (domains.is_empty() || domains.iter().any(|d| d.starts_with("*.")))
        {
            self.error_help(
                "a route with `auth` must name its domains, without wildcards".to_owned(),
                span(raw),
                "the console sends a login only to a host a route names: add domains = [\"admin.example.com\"]",
            );
        }
        Some(Route {
            domains,
            path,
            strip_prefix: route.strip_prefix.unwrap_or(false),
            tls,
            redirect_http: route.redirect_http.unwrap_or(true),
            hsts: route.hsts.unwrap_or(true),
            max_body,
            response_timeout,
            rate_limit,
            max_concurrent,
            balance,
            auth,
        })
    }

    /// A path prefix as the proxy matches it: `/`, or without a trailing slash.
    fn path_prefix(&mut self, raw: Option<&SpannedString>, what: &str, example: &str) -> String {
        let Some(raw) = raw else {
            return "/".to_owned();
        };
        let text = raw.get_ref();
        if !text.starts_with('/') || text.contains(['?', '#', ' ']) {
            self.error_help(
                format!("{what} `{text}` must be a path starting with `/`"),
                span(raw),
                format!("such as path = \"{example}\""),
            );
        }
        match text.trim_end_matches('/') {
            "" => "/".to_owned(),
            trimmed => trimmed.to_owned(),
        }
    }

    fn route_auth(&mut self, auth: &Spanned<RawAuth>) -> Option<RouteAuth> {
        const HELP: &str = "use auth = \"berth\" (any console user), auth = { login = \"berth\", role = \"deployer\", two_factor = true }, or auth = { login = \"basic\", users_secret = \"ADMIN_USERS\" }";
        let (login, role, two_factor) = match auth.get_ref() {
            RawAuth::Mode(mode) => (mode.as_str(), None, false),
            RawAuth::Table(table) => (
                table.login.get_ref().as_str(),
                table.role.as_ref(),
                table.two_factor.unwrap_or(false),
            ),
        };
        if let RawAuth::Table(table) = auth.get_ref()
            && login == "basic"
        {
            if table.role.is_some() || table.two_factor.is_some() {
                self.error_help(
                    "`role` and `two_factor` go with login = \"berth\", not basic auth".to_owned(),
                    span(auth),
                    "basic auth lets in every user of its secret",
                );
            }
            let Some(secret) = &table.users_secret else {
                self.error_help(
                    "basic auth needs `users_secret`: the secret holding its users".to_owned(),
                    span(auth),
                    "such as users_secret = \"ADMIN_USERS\", set with `berth secrets hash-password NAME` lines",
                );
                return None;
            };
            if !valid_env_name(secret.get_ref()) {
                self.error_help(
                    format!("`{}` is not a secret name", secret.get_ref()),
                    span(secret),
                    "letters, digits and _, not starting with a digit",
                );
                return None;
            }
            return Some(RouteAuth {
                role: AuthRole::Viewer,
                two_factor: false,
                basic_users_secret: Some(secret.get_ref().clone()),
            });
        }
        if let RawAuth::Table(table) = auth.get_ref()
            && let Some(secret) = &table.users_secret
        {
            self.error_help(
                "`users_secret` goes with login = \"basic\"".to_owned(),
                span(secret),
                HELP,
            );
        }
        if login != "berth" {
            self.error_help(format!("`{login}` is not a route login"), span(auth), HELP);
            return None;
        }
        let role = match role.map(|r| (r, r.get_ref().as_str())) {
            None | Some((_, "viewer")) => AuthRole::Viewer,
            Some((_, "deployer")) => AuthRole::Deployer,
            Some((_, "admin")) => AuthRole::Admin,
            Some((r, other)) => {
                self.error_help(
                    format!("`{other}` is not a console role"),
                    span(r),
                    "use \"viewer\", \"deployer\" or \"admin\"",
                );
                return None;
            }
        };
        Some(RouteAuth {
            role,
            two_factor,
            basic_users_secret: None,
        })
    }

    fn check_cycles(&mut self, raw: &RawManifest) {
        let edges: BTreeMap<&str, Vec<&SpannedString>> = raw
            .services
            .iter()
            .chain(raw.accessories.iter())
            .map(|(name, svc)| {
                (
                    name.get_ref().as_str(),
                    svc.get_ref().depends_on.iter().collect(),
                )
            })
            .collect();
        let mut reported = false;
        for start in edges.keys() {
            if reported {
                break;
            }
            // Depth-first search for a path back to `start`.
            let mut stack: Vec<(&str, Vec<&str>)> = vec![(start, vec![start])];
            let mut seen = std::collections::HashSet::new();
            while let Some((node, path)) = stack.pop() {
                for dep in edges.get(node).into_iter().flatten() {
                    let dep_name = dep.get_ref().as_str();
                    if dep_name == *start && path.len() > 1 {
                        let cycle = path
                            .iter()
                            .chain(std::iter::once(start))
                            .copied()
                            .collect::<Vec<_>>()
                            .join(" -> ");
                        self.error_help(
                            format!("`depends_on` forms a cycle: {cycle}"),
                            span(dep),
                            "remove one of these dependencies",
                        );
                        reported = true;
                        break;
                    }
                    if dep_name != node && seen.insert(dep_name) {
                        let mut next = path.clone();
                        next.push(dep_name);
                        stack.push((dep_name, next));
                    }
                }
                if reported {
                    break;
                }
            }
        }
    }

    fn check_routes(&mut self, raw: &RawManifest, services: &BTreeMap<String, Service>) {
        let mut claimed: HashMap<(String, String), String> = HashMap::new();
        for (name, service) in services {
            let Some(route) = &service.route else {
                continue;
            };
            let hosts: Vec<String> = if route.domains.is_empty() {
                vec!["*".into()]
            } else {
                route.domains.clone()
            };
            for host in hosts {
                let key = (host.clone(), route.path.clone());
                if let Some(owner) = claimed.get(&key) {
                    let at = raw
                        .services
                        .iter()
                        .find(|(k, _)| k.get_ref() == name)
                        .and_then(|(_, v)| v.get_ref().route.as_ref())
                        .map(|r| r.span());
                    let shown = if host == "*" {
                        format!("every host, path {}", route.path)
                    } else {
                        format!("{host}{}", route.path)
                    };
                    self.error_help(
                        format!("route clash: {shown} is routed to both `{owner}` and `{name}`"),
                        at,
                        "give one of them other domains or a different path prefix",
                    );
                } else {
                    claimed.insert(key, name.clone());
                }
            }
        }
    }

    fn check_published_ports(
        &mut self,
        raw: &RawManifest,
        accessories: &BTreeMap<String, Service>,
    ) {
        let mut claimed: HashMap<u16, &str> = HashMap::new();
        for (name, accessory) in accessories {
            for binding in &accessory.publish {
                if let Some(owner) = claimed.get(&binding.host_port) {
                    let at = raw
                        .accessories
                        .iter()
                        .find(|(k, _)| k.get_ref() == name)
                        .and_then(|(_, v)| v.get_ref().publish.first())
                        .map(|p| p.span());
                    self.error_help(
                        format!(
                            "port clash: host port {} is published by both `{owner}` and `{name}`",
                            binding.host_port
                        ),
                        at,
                        "publish one of them on another host port, such as \"5433:5432\"",
                    );
                } else {
                    claimed.insert(binding.host_port, name);
                }
            }
        }
    }
}

fn sorted_names(all: &HashMap<String, (bool, Range<usize>)>) -> String {
    let mut names: Vec<&str> = all.keys().map(String::as_str).collect();
    names.sort_unstable();
    names.join(", ")
}

/// A name berth gives apps, services and environments: lower-case letters, digits and dashes,
/// starting with a letter, not ending with a dash, at most `max` characters.
pub fn valid_name(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= max
        && !name.ends_with('-')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An environment variable's (and a secret's) name: letters, digits and underscores, not
/// starting with a digit.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_image_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("it is empty".into());
    }
    if reference.chars().any(char::is_whitespace) {
        return Err("it contains whitespace".into());
    }
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = without_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let repository_end = without_digest[last_slash..]
        .find(':')
        .map(|i| i + last_slash)
        .unwrap_or(without_digest.len());
    let repository = &without_digest[..repository_end];
    // The registry host may contain upper case; the path after it may not.
    let path = match repository.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => repository,
    };
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("repository names must be lower case".into());
    }
    if path.is_empty() || path.starts_with(['/', '-', '.']) || path.ends_with('/') {
        return Err("the repository name is malformed".into());
    }
    Ok(())
}

pub(crate) fn parse_status(value: &Scalar) -> Result<StatusRange, String> {
    let valid = |n: u16| (100..=599).contains(&n);
    match value {
        Scalar::Integer(n) => match u16::try_from(*n) {
            Ok(n) if valid(n) => Ok(StatusRange { min: n, max: n }),
            _ => Err(format!("{n} is not an HTTP status")),
        },
        Scalar::String(text) => {
            let text = text.trim().to_ascii_lowercase();
            if let Some(class) = text.strip_suffix("xx") {
                match class.parse::<u16>() {
                    Ok(c) if (1..=5).contains(&c) => {
                        return Ok(StatusRange {
                            min: c * 100,
                            max: c * 100 + 99,
                        });
                    }
                    _ => return Err(format!("`{text}` is not a status class")),
                }
            }
            if let Some((low, high)) = text.split_once('-') {
                let low: u16 = low
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{text}` is not a range"))?;
                let high: u16 = high
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{text}` is not a range"))?;
                if valid(low) && valid(high) && low <= high {
                    return Ok(StatusRange {
                        min: low,
                        max: high,
                    });
                }
                return Err(format!("`{text}` is not a range of HTTP statuses"));
            }
            match text.parse::<u16>() {
                Ok(n) if valid(n) => Ok(StatusRange { min: n, max: n }),
                _ => Err(format!("`{text}` is not an HTTP status")),
            }
        }
        _ => Err("expected a number or a string".into()),
    }
}

/// A host name as a route or the console may name it, lower-cased; the fix when it is not.
pub fn check_domain(domain: &str) -> Result<String, String> {
    if domain.contains("://") {
        return Err(
            "write just the host name, without a scheme, such as \"app.example.com\"".into(),
        );
    }
    if domain.contains('/') {
        return Err("write just the host name; put a path prefix in `route.path`".into());
    }
    if domain.contains(':') {
        return Err("write just the host name, without a port".into());
    }
    let lower = domain.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if valid {
        Ok(lower)
    } else {
        Err("host names are letters, digits, dashes and dots, optionally starting with `*.` for a wildcard".into())
    }
}

fn parse_volume(spec: &str, base_dir: &Path) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        [_, _, mode] => return Err(format!("unknown mode `{mode}` (use ro or rw)")),
        _ => return Err("expected SOURCE:TARGET or SOURCE:TARGET:ro".into()),
    };
    if !target.starts_with('/') {
        return Err(format!("the container path `{target}` must be absolute"));
    }
    if source.is_empty() {
        return Err("the source is empty".into());
    }
    let source = if source.starts_with('/') {
        VolumeSource::Bind(normalize(Path::new(source)))
    } else if source.starts_with("./") || source.starts_with("../") || source == "." {
        VolumeSource::Bind(normalize(&base_dir.join(source)))
    } else if source.starts_with('~') {
        return Err("`~` is not expanded; write an absolute path on the server".into());
    } else {
        let valid = source
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && source
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(format!(
                "`{source}` is not a valid volume name (letters, digits, `_`, `.`, `-`); start bind mounts with / or ./"
            ));
        }
        VolumeSource::Named(source.to_owned())
    };
    let target = match target.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    Ok(VolumeMount {
        source,
        target: target.to_owned(),
        read_only,
    })
}

/// `N/unit`: requests per second, minute or hour.
fn parse_rate(text: &str) -> Result<RateLimit, String> {
    let (count, unit) = text.split_once('/').ok_or("expected REQUESTS/UNIT")?;
    let requests: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("`{}` is not a number of requests", count.trim()))?;
    if requests == 0 {
        return Err("the number of requests must be at least 1".into());
    }
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => return Err(format!("unknown unit `{other}` (use s, min or h)")),
    };
    Ok(RateLimit { requests, per })
}

fn parse_publish(spec: &str) -> Result<PortBinding, String> {
    let port = |text: &str| -> Result<u16, String> {
        match text.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{text}` is not a port")),
        }
    };
    // An IPv6 host is written in brackets: [::1]:5432:5432
    if let Some(rest) = spec.strip_prefix('[') {
        let (ip, ports) = rest
            .split_once("]:")
            .ok_or("an IPv6 address must be followed by `]:`")?;
        let (host, container) = ports
            .split_once(':')
            .ok_or("expected [IP]:HOST_PORT:CONTAINER_PORT")?;
        return Ok(PortBinding {
            host_ip: Some(ip.to_owned()),
            host_port: port(host)?,
            container_port: port(container)?,
        });
    }
    match spec.split(':').collect::<Vec<_>>().as_slice() {
        [p] => Ok(PortBinding {
            host_ip: None,
            host_port: port(p)?,
            container_port: port(p)?,
        }),
        [h, c] => Ok(PortBinding {
            host_ip: None,
            host_port: port(h)?,
            container_port: port(c)?,
        }),
        [ip, h, c] => {
            ip.parse::<std::net::Ipv4Addr>()
                .map_err(|_| format!("`{ip}` is not an IP address"))?;
            Ok(PortBinding {
                host_ip: Some((*ip).to_owned()),
                host_port: port(h)?,
                container_port: port(c)?,
            })
        }
        _ => Err("expected PORT, HOST_PORT:CONTAINER_PORT or IP:HOST_PORT:CONTAINER_PORT".into()),
    }
}

/// Lexical normalization (no file system access): removes `.` and resolves `..`.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_specs_resolve_named_and_bind() {
        let base = Path::new("/srv/app");
        let v = parse_volume("data:/app/data", base).unwrap();
        assert_eq!(v.source, VolumeSource::Named("data".into()));
        assert_eq!(v.target, "/app/data");
        let v = parse_volume("./config:/etc/app:ro", base).unwrap();
        assert_eq!(v.source, VolumeSource::Bind("/srv/app/config".into()));
        assert!(v.read_only);
        assert!(parse_volume("data:relative", base).is_err());
        assert!(parse_volume("data:/x:rx", base).is_err());
        assert!(parse_volume("~/x:/x", base).is_err());
    }

    #[test]
    fn publish_specs() {
        assert_eq!(parse_publish("5432").unwrap().host_port, 5432);
        let b = parse_publish("127.0.0.1:5433:5432").unwrap();
        assert_eq!(
            (b.host_ip.as_deref(), b.host_port, b.container_port),
            (Some("127.0.0.1"), 5433, 5432)
        );
        let b = parse_publish("[::1]:6379:6379").unwrap();
        assert_eq!(b.host_ip.as_deref(), Some("::1"));
        assert!(parse_publish("0").is_err());
        assert!(parse_publish("a:b:c:d").is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(
            parse_status(&Scalar::Integer(204)),
            Ok(StatusRange { min: 204, max: 204 })
        );
        assert_eq!(
            parse_status(&Scalar::String("2xx".into())),
            Ok(StatusRange { min: 200, max: 299 })
        );
        assert_eq!(
            parse_status(&Scalar::String("200-399".into())),
            Ok(StatusRange { min: 200, max: 399 })
        );
        assert!(parse_status(&Scalar::Integer(99)).is_err());
        assert!(parse_status(&Scalar::String("9xx".into())).is_err());
    }

    #[test]
    fn image_references() {
        assert!(check_image_reference("postgres:16").is_ok());
        assert!(check_image_reference("ghcr.io/org/app:1.2").is_ok());
        assert!(check_image_reference("localhost:5000/app").is_ok());
        assert!(check_image_reference("app@sha256:abc").is_ok());
        assert!(check_image_reference("Org/App").is_err());
        assert!(check_image_reference("a b").is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(
            check_domain("App.Example.com"),
            Ok("app.example.com".into())
        );
        assert!(check_domain("*.example.com").is_ok());
        assert!(
            check_domain("https://x.com")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(
            check_domain("x.com/api")
                .unwrap_err()
                .contains("route.path")
        );
        assert!(check_domain("x.com:443").is_err());
    }
}
