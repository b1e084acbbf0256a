//! The manifest as written: serde types that keep the span of every value a later check may
//! need to point at. Nothing here is validated beyond its TOML type.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

pub type SpannedString = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    /// The app's name: names its containers, network, volumes and secrets.
    pub app: Option<SpannedString>,
    /// Services replaced on every deploy (web processes and workers).
    #[serde(default)]
    pub services: BTreeMap<SpannedString, Spanned<RawService>>,
    /// Long-lived services (databases, caches, model runtimes), recreated only when their own
    /// configuration changes.
    #[serde(default)]
    pub accessories: BTreeMap<SpannedString, Spanned<RawService>>,
    /// How deploys behave.
    pub deploy: Option<RawDeploy>,
    /// Default log rotation for every container berth creates.
    pub logging: Option<RawLogging>,
    /// Who backups are encrypted to, besides the agent's own key.
    pub encryption: Option<RawEncryption>,
    /// Where backups are stored, by name (`local` is the agent's data directory unless set).
    #[serde(default)]
    pub storage: BTreeMap<SpannedString, Spanned<RawStorage>>,
    /// Backups, by name.
    #[serde(default)]
    pub backups: BTreeMap<SpannedString, Spanned<RawBackup>>,
    /// A private registry images are pulled from, with its credentials.
    pub registry: Option<Spanned<RawRegistry>>,
    /// Where alerts are sent, by channel name.
    #[serde(default)]
    pub alerts: BTreeMap<SpannedString, Spanned<RawAlertChannel>>,
    /// Checks of the app from outside its containers, by name.
    #[serde(default)]
    pub monitors: BTreeMap<SpannedString, Spanned<RawMonitor>>,
    /// Alerts on measurements past a limit, by name.
    #[serde(default)]
    pub thresholds: BTreeMap<SpannedString, Spanned<RawThreshold>>,
    /// A public, read-only page of the services' state and 90 days of uptime.
    pub status_page: Option<Spanned<RawStatusPage>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatusPage {
    /// Host names it is served on (empty: every host, at `path`).
    #[serde(default)]
    pub domains: Vec<SpannedString>,
    /// Path it is served at (default `/`).
    pub path: Option<SpannedString>,
    /// The heading (default the app's name).
    pub title: Option<SpannedString>,
    /// The services and accessories shown, in this order (default every service with a route).
    pub services: Option<Vec<SpannedString>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreshold {
    /// `METRIC > LIMIT [for DURATION]`, such as "cpu > 80% for 10m".
    pub when: SpannedString,
    /// The service or accessory it watches (cpu and memory); each when absent.
    pub service: Option<SpannedString>,
    /// `info`, `warning` (default) or `critical`.
    pub severity: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    /// An HTTP(S) URL to GET.
    pub url: Option<SpannedString>,
    /// `host:port` that must accept a TCP connection.
    pub tcp: Option<SpannedString>,
    /// A name that must resolve.
    pub dns: Option<SpannedString>,
    /// DNS: addresses the name must resolve to (one of them).
    #[serde(default)]
    pub addresses: Vec<SpannedString>,
    /// HTTP: the expected status, `200`, `"2xx"` or `"200-399"` (default `"2xx"`).
    pub status: Option<Spanned<Scalar>>,
    /// HTTP: a text the body must contain.
    pub body: Option<SpannedString>,
    /// HTTP: a dot-separated path into a JSON body (`status`, `checks.db.status`) ...
    pub json_path: Option<SpannedString>,
    /// ... and the value it must have there (compared as text).
    pub json_equals: Option<Spanned<Scalar>>,
    /// Time between checks (default 60s).
    pub interval: Option<SpannedString>,
    /// Time one check may take (default 10s).
    pub timeout: Option<SpannedString>,
    /// Failed checks in a row before the alert fires (default 3).
    pub failure_threshold: Option<Spanned<i64>>,
    /// Passed checks in a row before it resolves (default 2).
    pub success_threshold: Option<Spanned<i64>>,
    /// Tell the channels when it resolves (default true).
    pub send_on_resolved: Option<Spanned<bool>>,
    /// HTTPS: alert when the certificate expires within this (default "14d"; "0s" never).
    pub certificate_expiry: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertChannel {
    /// `webhook`, `slack`, `discord`, `telegram`, `ntfy` or `email`.
    #[serde(rename = "type")]
    pub kind: SpannedString,
    /// webhook, ntfy: where to POST.
    pub url: Option<SpannedString>,
    /// webhook: the berth secret whose value signs each body (HMAC-SHA256).
    pub signing_secret: Option<SpannedString>,
    /// slack, discord: the berth secret holding the webhook URL.
    pub url_secret: Option<SpannedString>,
    /// telegram, ntfy: the berth secret holding the bot or access token.
    pub token_secret: Option<SpannedString>,
    /// telegram: the chat to write to.
    pub chat_id: Option<Spanned<Scalar>>,
    /// email: the SMTP server as `host:port`.
    pub smtp: Option<SpannedString>,
    /// email: `starttls` (default), `implicit` or `none` (a relay on this host only).
    pub tls: Option<SpannedString>,
    pub from: Option<SpannedString>,
    #[serde(default)]
    pub to: Vec<SpannedString>,
    pub username: Option<SpannedString>,
    /// email: the berth secret holding the SMTP password.
    pub password_secret: Option<SpannedString>,
    /// `info`, `warning` (default) or `critical`: alerts below it are not sent here.
    pub min_severity: Option<SpannedString>,
    /// Send a message when an alert resolves (default true).
    pub send_resolved: Option<Spanned<bool>>,
    /// Repeat a firing alert this often (default "4h"; "0s" never).
    pub remind_every: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// `host[:port]` as image references name it, such as `ghcr.io`.
    pub server: SpannedString,
    pub username: SpannedString,
    /// The berth secret holding the password or token (default `REGISTRY_PASSWORD`).
    pub password_secret: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    /// age recipients (`age1…`) every backup is also encrypted to; keep their identities off
    /// the server.
    #[serde(default)]
    pub recipients: Vec<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// A directory on the server.
    pub path: Option<SpannedString>,
    /// An S3-compatible bucket.
    pub s3: Option<Spanned<RawS3>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    pub bucket: SpannedString,
    /// `https://…`; absent for AWS itself.
    pub endpoint: Option<SpannedString>,
    /// Default `us-east-1` (`auto` for Cloudflare R2).
    pub region: Option<SpannedString>,
    /// Address the bucket as `endpoint/bucket` (default: true with an endpoint, false for AWS).
    pub path_style: Option<bool>,
    /// Key prefix inside the bucket.
    pub prefix: Option<SpannedString>,
    /// The secret holding the access key id (default `AWS_ACCESS_KEY_ID`).
    pub access_key_id_secret: Option<SpannedString>,
    /// The secret holding the secret access key (default `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key_secret: Option<SpannedString>,
    /// Multipart part size (default `16m`, at least `5m`).
    pub part_size: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    /// What to back up: one of sqlite, postgres, mysql, volume, directory, command, or
    /// "berth" (the agent's own state).
    pub source: Spanned<RawSource>,
    /// A cron schedule in the server's time zone, such as `"0 3 * * *"`; absent: only by hand.
    pub schedule: Option<SpannedString>,
    /// GFS retention, with restic's `forget --keep-*` semantics.
    pub keep: Option<Spanned<RawKeep>>,
    /// Storage names (default `["local"]`).
    pub to: Option<Vec<SpannedString>>,
    /// A cron schedule on which every kept backup is read back and checked again.
    pub verify_schedule: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeep {
    pub last: Option<Spanned<i64>>,
    pub hourly: Option<Spanned<i64>>,
    pub daily: Option<Spanned<i64>>,
    pub weekly: Option<Spanned<i64>>,
    pub monthly: Option<Spanned<i64>>,
    pub yearly: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawSource {
    Sqlite(RawSqliteSource),
    Postgres(RawDatabaseSource),
    Mysql(RawDatabaseSource),
    Volume(RawVolumeSource),
    Directory(RawDirectorySource),
    Command(RawCommandSource),
    /// The agent's own data directory.
    Berth,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqliteSource {
    /// The service whose volume holds the database; absent: `path` is on the server.
    pub service: Option<SpannedString>,
    /// The database file (inside the service's container when `service` is given).
    pub path: SpannedString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabaseSource {
    /// The accessory or service running the database: the dump runs in its container.
    pub service: Option<SpannedString>,
    /// Or a server reachable from this one: `postgres://user@host:5432/db` (PostgreSQL).
    pub url: Option<SpannedString>,
    /// Or host and port (MySQL/MariaDB).
    pub host: Option<SpannedString>,
    pub port: Option<Spanned<i64>>,
    pub database: Option<SpannedString>,
    pub user: Option<SpannedString>,
    /// The secret holding the password, if one is needed.
    pub password_secret: Option<SpannedString>,
    /// PostgreSQL: `"restore"` (into a scratch database, the default) or `"list"`
    /// (`pg_restore --list` only).
    pub verify: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolumeSource {
    /// A named volume of this app (as in `volumes = ["NAME:/path"]`).
    pub name: SpannedString,
    /// Pause the containers using the volume while it is read (default false).
    pub pause: Option<bool>,
    /// Where `before` and `after` run.
    pub service: Option<SpannedString>,
    /// A command run in `service` before reading (such as `["redis-cli", "SAVE"]`).
    pub before: Option<Spanned<StringOrList>>,
    /// A command run in `service` after reading, even when reading failed.
    pub after: Option<Spanned<StringOrList>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectorySource {
    /// An absolute directory on the server.
    pub path: SpannedString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommandSource {
    /// The service or accessory the commands run in.
    pub service: SpannedString,
    /// Prints the backup on standard output.
    pub dump: Spanned<StringOrList>,
    /// Reads a backup on standard input to put it back.
    pub restore: Option<Spanned<StringOrList>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeploy {
    /// How many releases keep their images for rollback (default 5).
    pub keep_releases: Option<Spanned<i64>>,
    /// How long in-flight requests on the old release may take to finish (default 30s).
    pub drain_timeout: Option<SpannedString>,
    /// How long the old release's WebSockets and event streams may stay open (default 1h).
    pub websocket_drain: Option<SpannedString>,
    /// How long a release command may run (default 10m).
    pub release_timeout: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    /// Docker log driver (default `json-file`).
    pub driver: Option<SpannedString>,
    /// Rotate a container's log file at this size (default `10m`).
    pub max_size: Option<SpannedString>,
    /// Keep this many rotated files (default 3).
    pub max_files: Option<Spanned<i64>>,
    /// Top level only: also send every line to a log host, `udp://HOST:PORT` or
    /// `tcp://HOST:PORT` (RFC 5424 syslog; port 514 when left out).
    pub syslog: Option<SpannedString>,
    /// Top level only: the syslog facility, `user` (default), `daemon` or `local0`..`local7`.
    pub syslog_facility: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// An image reference such as `ghcr.io/org/app:1.2`.
    pub image: Option<SpannedString>,
    /// When to pull `image`: `always` (every deploy, the default for services) or `missing`
    /// (only when not on the server, the default for accessories).
    pub pull: Option<SpannedString>,
    /// Build the image from a context directory instead.
    pub build: Option<Spanned<RawBuild>>,
    /// The port the container listens on for HTTP (web services).
    pub port: Option<Spanned<i64>>,
    /// Overrides the image's command.
    pub command: Option<Spanned<StringOrList>>,
    /// Plain environment variables.
    #[serde(default)]
    pub env: BTreeMap<SpannedString, Spanned<Scalar>>,
    /// Secrets injected as environment variables.
    #[serde(default)]
    pub secrets: Vec<SpannedString>,
    /// Secrets mounted read-only as files under `/run/secrets/`.
    #[serde(default)]
    pub secret_files: Vec<SpannedString>,
    /// `name:/path[:ro]` for named volumes, `/host/path:/path[:ro]` or `./dir:/path` for binds.
    #[serde(default)]
    pub volumes: Vec<SpannedString>,
    /// How berth decides a container is healthy.
    pub healthcheck: Option<Spanned<RawHealthcheck>>,
    /// Run once with the new image before traffic moves (migrations).
    pub release_command: Option<Spanned<StringOrList>>,
    /// How many containers serve this service (default 1).
    pub replicas: Option<Spanned<i64>>,
    /// Memory limit such as `512m` or `1g`.
    pub memory: Option<Spanned<Scalar>>,
    /// CPU limit in cores, such as `0.5` or `2`.
    pub cpus: Option<Spanned<Scalar>>,
    /// How long a container gets between SIGTERM and SIGKILL (default 10s).
    pub stop_timeout: Option<SpannedString>,
    /// Services or accessories that must be up first.
    #[serde(default)]
    pub depends_on: Vec<SpannedString>,
    /// GPU passthrough: `"all"` or a number of GPUs.
    pub gpus: Option<Spanned<Scalar>>,
    /// Public HTTP route through berth's proxy.
    pub route: Option<Spanned<RawRoute>>,
    /// Host ports to publish (accessories only): `5432`, `5432:5432`, `127.0.0.1:5432:5432`.
    #[serde(default)]
    pub publish: Vec<SpannedString>,
    /// Docker restart policy: `unless-stopped` (default), `always`, `on-failure`, `no`.
    pub restart: Option<SpannedString>,
    /// Run a tiny init as PID 1 that forwards signals and reaps zombies (default true).
    pub init: Option<bool>,
    /// Per-service log rotation, overriding `[logging]`.
    pub logging: Option<RawLogging>,
}

#[derive(Debug)]
pub enum RawBuild {
    /// `build = "."`
    Context(String),
    /// `build = { context = ".", dockerfile = "Dockerfile", args = {..}, target = "prod" }`
    Full(RawBuildTable),
}

// Hand-written rather than `untagged`: an untagged enum buffers its input, which would lose
// the spans inside the table form.
impl<'de> Deserialize<'de> for RawBuild {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawBuild;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a context directory or a build table")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawBuild, E> {
                Ok(RawBuild::Context(value.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawBuild, A::Error> {
                RawBuildTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawBuild::Full)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuildTable {
    /// Directory sent to Docker as the build context, relative to the manifest.
    pub context: Option<SpannedString>,
    /// Dockerfile path inside the context (default `Dockerfile`).
    pub dockerfile: Option<SpannedString>,
    /// Build arguments.
    #[serde(default)]
    pub args: BTreeMap<SpannedString, Spanned<Scalar>>,
    /// Multi-stage build target.
    pub target: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthcheck {
    /// HTTP path to GET, such as `/health`.
    pub path: Option<SpannedString>,
    /// Expected HTTP status: `200`, `"2xx"` or `"200-399"` (default `"2xx"`).
    pub status: Option<Spanned<Scalar>>,
    /// Healthy when the port accepts a TCP connection.
    pub tcp: Option<Spanned<bool>>,
    /// Healthy when this command exits 0 inside the container.
    pub command: Option<Spanned<StringOrList>>,
    /// Time between checks (default 5s; the deploy gate polls faster).
    pub interval: Option<SpannedString>,
    /// Time one check may take (default 3s).
    pub timeout: Option<SpannedString>,
    /// How long a new container may take to become healthy (default 60s).
    pub start_timeout: Option<SpannedString>,
    /// Failed checks in a row that make a running replica unhealthy (default 3).
    pub failure_threshold: Option<Spanned<i64>>,
    /// How long a replica may stay unhealthy before berth replaces it (default 1m;
    /// "0s" or "never" never does).
    pub restart_after: Option<SpannedString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Host names routed to this service; empty or absent routes every host.
    #[serde(default)]
    pub domains: Vec<SpannedString>,
    /// Path prefix routed to this service (default `/`).
    pub path: Option<SpannedString>,
    /// Remove the path prefix before forwarding (default false).
    pub strip_prefix: Option<bool>,
    /// `"auto"` (ACME certificates for the domains, the default), `"off"`, or
    /// `{ cert = "/path/cert.pem", key = "/path/key.pem" }`.
    pub tls: Option<Spanned<RawTls>>,
    /// Redirect plain HTTP to HTTPS once a certificate is in place (default true).
    pub redirect_http: Option<bool>,
    /// Send Strict-Transport-Security over HTTPS (default true).
    pub hsts: Option<bool>,
    /// Largest request body accepted, such as `"10m"` (default 10m).
    pub max_body: Option<SpannedString>,
    /// How long the app may take to start answering (default 60s).
    pub response_timeout: Option<SpannedString>,
    /// Requests per client address, such as `"60/min"` or `"10/s"`.
    pub rate_limit: Option<SpannedString>,
    /// Requests served at once, WebSockets and streams included (503 beyond it; default none).
    pub max_concurrent: Option<Spanned<i64>>,
    /// `"round-robin"` (default) or `"least-connections"`.
    pub balance: Option<SpannedString>,
    /// `"berth"` (a console login), or `{ login = "berth", role = "...", two_factor = true }`.
    pub auth: Option<Spanned<RawAuth>>,
}

#[derive(Debug)]
pub enum RawAuth {
    Mode(String),
    Table(RawAuthTable),
}

// Hand-written like `RawTls`: a string or a table, with spans kept inside the table.
impl<'de> Deserialize<'de> for RawAuth {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawAuth;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"berth\" or { login = \"berth\", role = \"...\", two_factor = true }")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawAuth, E> {
                Ok(RawAuth::Mode(value.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawAuth, A::Error> {
                RawAuthTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawAuth::Table)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthTable {
    /// `"berth"`: the console's accounts; `"basic"`: HTTP basic auth against `users_secret`.
    pub login: SpannedString,
    /// With `login = "basic"`: the secret holding `name:$argon2id$...` lines.
    pub users_secret: Option<SpannedString>,
    /// The least role let in: `"viewer"` (default), `"deployer"` or `"admin"`.
    pub role: Option<SpannedString>,
    /// Only users who log in with a second factor (default false).
    pub two_factor: Option<bool>,
}

#[derive(Debug)]
pub enum RawTls {
    Mode(String),
    Files(RawTlsFiles),
}

// Hand-written for the same reason as `RawBuild`: keep spans inside the table form.
impl<'de> Deserialize<'de> for RawTls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawTls;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\", \"off\" or { cert = \"...\", key = \"...\" }")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawTls, E> {
                Ok(RawTls::Mode(value.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawTls, A::Error> {
                RawTlsFiles::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawTls::Files)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsFiles {
    /// PEM certificate chain, on the server.
    pub cert: SpannedString,
    /// PEM private key, on the server.
    pub key: SpannedString,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    String(String),
    List(Vec<String>),
}

/// A TOML scalar where users reasonably write either a string or a number.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Scalar {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub fn to_text(&self) -> String {
        match self {
            Scalar::String(s) => s.clone(),
            Scalar::Integer(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}
