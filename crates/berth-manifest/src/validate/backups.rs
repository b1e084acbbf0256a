//! `[encryption]`, `[storage.NAME]` and `[backups.NAME]`: checked against the services they
//! name, so a backup that could not run is refused by `berth check`, not at 3 a.m.

use super::{Checker, NAME_HELP, SIZE_HELP, span, valid_env_name, valid_name};
use crate::backups::*;
use crate::model::{Service, VolumeSource};
use crate::raw::*;
use crate::units::parse_size;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

const DEFAULT_PART_SIZE: u64 = 16 << 20;
pub(super) const SECRET_HELP: &str =
    "use letters, digits and underscores, not starting with a digit, such as S3_SECRET_KEY";

impl Checker<'_> {
    pub(super) fn backup_settings(
        &mut self,
        raw: &RawManifest,
        services: &BTreeMap<String, Service>,
        accessories: &BTreeMap<String, Service>,
    ) -> BackupSettings {
        let recipients = self.recipients(raw.encryption.as_ref());
        let storage = self.storage(&raw.storage);
        // A storage with its own errors is still a name `to` may use: one error, not two.
        let declared: Vec<String> = raw
            .storage
            .keys()
            .map(|k| k.get_ref().clone())
            .chain(storage.keys().cloned())
            .collect();
        let mut backups = BTreeMap::new();
        for (name, backup) in &raw.backups {
            if !valid_name(name.get_ref(), 32) {
                self.error_help(
                    format!("`{}` is not a valid backup name", name.get_ref()),
                    span(name),
                    format!("{NAME_HELP}; at most 32 characters"),
                );
                continue;
            }
            if let Some(backup) =
                self.backup(name.get_ref(), backup, &declared, services, accessories)
            {
                backups.insert(name.get_ref().clone(), backup);
            }
        }
        BackupSettings {
            recipients,
            storage,
            backups,
        }
    }

    fn recipients(&mut self, raw: Option<&RawEncryption>) -> Vec<String> {
        let mut recipients: Vec<String> = Vec::new();
        for recipient in raw.map(|r| r.recipients.as_slice()).unwrap_or_default() {
            let text = recipient.get_ref().trim();
            // An age X25519 recipient is Bech32: "age1" and 58 more lower-case characters.
            let bech32 = |c: char| c.is_ascii_digit() || c.is_ascii_lowercase();
            if !(text.len() == 62 && text.starts_with("age1") && text.chars().all(bech32)) {
                let hint = if text.starts_with("AGE-SECRET-KEY-") {
                    "this is a secret key: never put it in berth.toml; give its public key \
                     (age-keygen -y KEYFILE prints it)"
                } else {
                    "give an age public key such as age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p (age-keygen -y KEYFILE prints yours)"
                };
                self.error_help(
                    format!("`{text}` is not an age recipient"),
                    span(recipient),
                    hint,
                );
                continue;
            }
            if !recipients.iter().any(|r| r == text) {
                recipients.push(text.to_owned());
            }
        }
        recipients
    }

    fn storage(
        &mut self,
        raw: &BTreeMap<Spanned<String>, Spanned<RawStorage>>,
    ) -> BTreeMap<String, Storage> {
        let mut storage = BTreeMap::from([(LOCAL_STORAGE.to_owned(), Storage::Directory(None))]);
        for (name, entry) in raw {
            if !valid_name(name.get_ref(), 32) {
                self.error_help(
                    format!("`{}` is not a valid storage name", name.get_ref()),
                    span(name),
                    format!("{NAME_HELP}; at most 32 characters"),
                );
                continue;
            }
            let resolved = match (&entry.get_ref().path, &entry.get_ref().s3) {
                (Some(path), None) => {
                    let text = path.get_ref();
                    if !text.starts_with('/') {
                        self.error_help(
                            format!("storage `{}`: `path` must be absolute", name.get_ref()),
                            span(path),
                            "give the directory on the server, such as \"/var/backups/berth\"",
                        );
                        continue;
                    }
                    Storage::Directory(Some(PathBuf::from(text)))
                }
                (None, Some(s3)) => match self.s3(name.get_ref(), s3) {
                    Some(s3) => Storage::S3(s3),
                    None => continue,
                },
                (Some(_), Some(_)) => {
                    self.error_help(
                        format!("storage `{}` has both `path` and `s3`", name.get_ref()),
                        span(entry),
                        "a storage is one directory or one bucket; define two storages",
                    );
                    continue;
                }
                (None, None) => {
                    self.error_help(
                        format!("storage `{}` says nowhere to store", name.get_ref()),
                        span(entry),
                        "add path = \"/var/backups/berth\" or s3 = { bucket = \"…\", endpoint = \"https://…\" }",
                    );
                    continue;
                }
            };
            if name.get_ref() == LOCAL_STORAGE && matches!(resolved, Storage::S3(_)) {
                self.error_help(
                    "storage `local` must be a directory on the server",
                    span(entry),
                    "give the bucket another name, such as [storage.offsite]",
                );
                continue;
            }
            storage.insert(name.get_ref().clone(), resolved);
        }
        storage
    }

    fn s3(&mut self, name: &str, raw: &Spanned<RawS3>) -> Option<S3Storage> {
        let s3 = raw.get_ref();
        let errors_before = self.diagnostics.len();
        let bucket = s3.bucket.get_ref().trim();
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            self.error_help(
                format!("storage `{name}`: `{bucket}` is not a valid bucket name"),
                span(&s3.bucket),
                "bucket names have 3 to 63 lower-case letters, digits, dots and dashes",
            );
        }
        let endpoint = s3
            .endpoint
            .as_ref()
            .map(|e| e.get_ref().trim_end_matches('/').to_owned());
        if let (Some(text), Some(raw_endpoint)) = (&endpoint, &s3.endpoint) {
            let rest = text
                .strip_prefix("https://")
                .or_else(|| text.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                self.error_help(
                    format!("storage `{name}`: `{text}` is not an endpoint URL"),
                    span(raw_endpoint),
                    "give the scheme and host only, such as \"https://s3.eu-central-003.backblazeb2.com\" or \"http://127.0.0.1:9000\"",
                );
            }
        }
        let region = s3
            .region
            .as_ref()
            .map(|r| r.get_ref().clone())
            .unwrap_or_else(|| "us-east-1".to_owned());
        let prefix = s3
            .prefix
            .as_ref()
            .map(|p| p.get_ref().trim_matches('/').to_owned())
            .unwrap_or_default();
        let mut secret = |value: Option<&Spanned<String>>, default: &str| -> String {
            match value {
                Some(v) => {
                    if !valid_env_name(v.get_ref()) {
                        self.error_help(
                            format!("`{}` is not a valid secret name", v.get_ref()),
                            span(v),
                            format!("name the berth secret holding the key ({SECRET_HELP}); the key itself never goes in berth.toml"),
                        );
                    }
                    v.get_ref().clone()
                }
                None => default.to_owned(),
            }
        };
        let access_key_id_secret = secret(s3.access_key_id_secret.as_ref(), "AWS_ACCESS_KEY_ID");
        let secret_access_key_secret = secret(
            s3.secret_access_key_secret.as_ref(),
            "AWS_SECRET_ACCESS_KEY",
        );
        let part_size = match &s3.part_size {
            None => DEFAULT_PART_SIZE,
            Some(text) => match parse_size(text.get_ref()) {
                Ok(size) if ((5 << 20)..=(5 << 30)).contains(&size) => size,
                Ok(_) => {
                    self.error_help(
                        format!("storage `{name}`: `part_size` must be between 5m and 5g"),
                        span(text),
                        "S3 parts are at least 5 MiB (except the last) and at most 5 GiB",
                    );
                    DEFAULT_PART_SIZE
                }
                Err(e) => {
                    self.error_help(
                        format!("storage `{name}`: bad `part_size`: {e}"),
                        span(text),
                        SIZE_HELP,
                    );
                    DEFAULT_PART_SIZE
                }
            },
        };
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(S3Storage {
            bucket: bucket.to_owned(),
            path_style: s3.path_style.unwrap_or(endpoint.is_some()),
            endpoint,
            region,
            prefix,
            access_key_id_secret,
            secret_access_key_secret,
            part_size,
        })
    }

    fn backup(
        &mut self,
        name: &str,
        raw: &Spanned<RawBackup>,
        storage: &[String],
        services: &BTreeMap<String, Service>,
        accessories: &BTreeMap<String, Service>,
    ) -> Option<Backup> {
        let backup = raw.get_ref();
        let errors_before = self.diagnostics.len();
        let source = self.backup_source(name, &backup.source, services, accessories);
        let schedule = backup
            .schedule
            .as_ref()
            .map(|s| self.cron(name, "schedule", s));
        let verify_schedule = backup
            .verify_schedule
            .as_ref()
            .map(|s| self.cron(name, "verify_schedule", s));
        let keep = backup
            .keep
            .as_ref()
            .map(|k| self.keep(name, k))
            .unwrap_or_default();
        let mut to = Vec::new();
        match &backup.to {
            None => to.push(LOCAL_STORAGE.to_owned()),
            Some(list) if list.is_empty() => self.error_help(
                format!("backup `{name}`: `to` is empty"),
                span(&backup.source),
                "name at least one storage, such as to = [\"local\", \"offsite\"]",
            ),
            Some(list) => {
                for target in list {
                    let known = storage.contains(target.get_ref());
                    if !known {
                        let mut names: Vec<&str> = storage.iter().map(String::as_str).collect();
                        names.sort_unstable();
                        names.dedup();
                        let help =
                            match super::did_you_mean(target.get_ref(), names.iter().copied()) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None => format!(
                                    "define it as [storage.{}], or use one of: {}",
                                    target.get_ref(),
                                    names.join(", ")
                                ),
                            };
                        self.error_help(
                            format!("backup `{name}`: unknown storage `{}`", target.get_ref()),
                            span(target),
                            help,
                        );
                    } else if to.contains(target.get_ref()) {
                        self.error(
                            format!(
                                "backup `{name}`: storage `{}` is listed twice",
                                target.get_ref()
                            ),
                            span(target),
                        );
                    } else {
                        to.push(target.get_ref().clone());
                    }
                }
            }
        }
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(Backup {
            name: name.to_owned(),
            source: source?,
            schedule,
            keep,
            to,
            verify_schedule,
        })
    }

    fn cron(&mut self, name: &str, key: &str, text: &Spanned<String>) -> String {
        if let Err(e) = <croner::Cron as std::str::FromStr>::from_str(text.get_ref()) {
            self.error_help(
                format!("backup `{name}`: `{key}` = \"{}\" is not a cron schedule: {e}", text.get_ref()),
                span(text),
                "five fields: minute hour day-of-month month day-of-week, such as \"0 3 * * *\" (03:00 every day)",
            );
        }
        text.get_ref().clone()
    }

    fn keep(&mut self, name: &str, raw: &Spanned<RawKeep>) -> Keep {
        let k = raw.get_ref();
        let mut count = |what: &str, value: Option<&Spanned<i64>>| -> u32 {
            let Some(value) = value else { return 0 };
            match u32::try_from(*value.get_ref()) {
                Ok(n) if n <= 10_000 => n,
                _ => {
                    self.error_help(
                        format!(
                            "backup `{name}`: keep.{what} = {} is out of range",
                            value.get_ref()
                        ),
                        span(value),
                        "counts go from 0 to 10000",
                    );
                    0
                }
            }
        };
        Keep {
            last: count("last", k.last.as_ref()),
            hourly: count("hourly", k.hourly.as_ref()),
            daily: count("daily", k.daily.as_ref()),
            weekly: count("weekly", k.weekly.as_ref()),
            monthly: count("monthly", k.monthly.as_ref()),
            yearly: count("yearly", k.yearly.as_ref()),
        }
    }

    fn known_service<'s>(
        &mut self,
        backup: &str,
        service: &Spanned<String>,
        services: &'s BTreeMap<String, Service>,
        accessories: &'s BTreeMap<String, Service>,
    ) -> Option<&'s Service> {
        let found = services
            .get(service.get_ref())
            .or_else(|| accessories.get(service.get_ref()));
        if found.is_none() {
            let names: Vec<&str> = services
                .keys()
                .chain(accessories.keys())
                .map(String::as_str)
                .collect();
            let help = match super::did_you_mean(service.get_ref(), names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("services and accessories here: {}", names.join(", ")),
            };
            self.error_help(
                format!(
                    "backup `{backup}`: no service or accessory `{}`",
                    service.get_ref()
                ),
                span(service),
                help,
            );
        }
        found
    }

    fn backup_source(
        &mut self,
        name: &str,
        raw: &Spanned<RawSource>,
        services: &BTreeMap<String, Service>,
        accessories: &BTreeMap<String, Service>,
    ) -> Option<BackupSource> {
        match raw.get_ref() {
            RawSource::Berth => Some(BackupSource::Berth),
            RawSource::Sqlite(sqlite) => {
                let path = sqlite.path.get_ref();
                if !path.starts_with('/') {
                    self.error_help(
                        format!("backup `{name}`: the SQLite path `{path}` must be absolute"),
                        span(&sqlite.path),
                        "give the path inside the service's container, such as \"/data/app.db\"",
                    );
                    return None;
                }
                let service = match &sqlite.service {
                    None => None,
                    Some(service) => {
                        let found = self.known_service(name, service, services, accessories)?;
                        let on_volume = found.volumes.iter().any(|v| within(path, &v.target));
                        if !on_volume {
                            self.error_help(
                                format!(
                                    "backup `{name}`: `{path}` is not on a volume of `{}`",
                                    service.get_ref()
                                ),
                                span(&sqlite.path),
                                "a database outside a volume is lost on every deploy; mount one, such as volumes = [\"data:/data\"], and keep the database in it",
                            );
                            return None;
                        }
                        Some(service.get_ref().clone())
                    }
                };
                Some(BackupSource::Sqlite {
                    service,
                    path: path.clone(),
                })
            }
            RawSource::Postgres(db) => self
                .database(name, "postgres", db, span(raw), services, accessories)
                .map(BackupSource::Postgres),
            RawSource::Mysql(db) => self
                .database(name, "mysql", db, span(raw), services, accessories)
                .map(BackupSource::Mysql),
            RawSource::Volume(volume) => {
                let wanted = volume.name.get_ref();
                let declared = services.values().chain(accessories.values()).any(|s| {
                    s.volumes
                        .iter()
                        .any(|v| matches!(&v.source, VolumeSource::Named(n) if n == wanted))
                });
                if !declared {
                    self.error_help(
                        format!("backup `{name}`: no service mounts a volume named `{wanted}`"),
                        span(&volume.name),
                        "name a volume from a service's `volumes`, such as \"uploads\" for \"uploads:/app/uploads\"; for a directory on the server use source = { directory = { path = \"…\" } }",
                    );
                    return None;
                }
                let service = match &volume.service {
                    Some(s) => {
                        self.known_service(name, s, services, accessories)?;
                        Some(s.get_ref().clone())
                    }
                    None => None,
                };
                let before = volume
                    .before
                    .as_ref()
                    .and_then(|c| self.command("before", c));
                let after = volume.after.as_ref().and_then(|c| self.command("after", c));
                if (before.is_some() || after.is_some()) && service.is_none() {
                    self.error_help(
                        format!("backup `{name}`: `before`/`after` need a `service` to run in"),
                        span(raw),
                        "add service = \"NAME\" to the volume source",
                    );
                    return None;
                }
                Some(BackupSource::Volume {
                    volume: wanted.clone(),
                    pause: volume.pause.unwrap_or(false),
                    service,
                    before,
                    after,
                })
            }
            RawSource::Directory(dir) => {
                let path = dir.path.get_ref();
                if !path.starts_with('/') {
                    self.error_help(
                        format!("backup `{name}`: the directory `{path}` must be absolute"),
                        span(&dir.path),
                        "give a directory on the server, such as \"/srv/files\"",
                    );
                    return None;
                }
                Some(BackupSource::Directory {
                    path: PathBuf::from(path),
                })
            }
            RawSource::Command(command) => {
                self.known_service(name, &command.service, services, accessories)?;
                let dump = self.command("dump", &command.dump)?;
                let restore = match &command.restore {
                    Some(c) => Some(self.command("restore", c)?),
                    None => None,
                };
                Some(BackupSource::Command {
                    service: command.service.get_ref().clone(),
                    dump,
                    restore,
                })
            }
        }
    }

    fn database(
        &mut self,
        name: &str,
        engine: &str,
        raw: &RawDatabaseSource,
        at: Option<std::ops::Range<usize>>,
        services: &BTreeMap<String, Service>,
        accessories: &BTreeMap<String, Service>,
    ) -> Option<Database> {
        let postgres = engine == "postgres";
        let default_user = if postgres { "postgres" } else { "root" };
        let default_port: u16 = if postgres { 5432 } else { 3306 };
        let mut user = raw.user.as_ref().map(|u| u.get_ref().clone());
        let mut database = raw.database.as_ref().map(|d| d.get_ref().clone());
        let mut options = BTreeMap::new();
        let location = match (&raw.service, &raw.url, &raw.host) {
            (Some(service), None, None) => {
                self.known_service(name, service, services, accessories)?;
                DatabaseLocation::Service(service.get_ref().clone())
            }
            (None, Some(url), None) if postgres => {
                let parsed = match parse_postgres_url(url.get_ref()) {
                    Ok(parsed) => parsed,
                    Err(reason) => {
                        self.error_help(
                            format!("backup `{name}`: bad PostgreSQL URL: {reason}"),
                            span(url),
                            "such as postgres://app@127.0.0.1:5432/app, with the password in a secret (password_secret = \"NAME\")",
                        );
                        return None;
                    }
                };
                user = user.or(parsed.user);
                database = database.or(parsed.database);
                options = parsed.options;
                DatabaseLocation::Host {
                    host: parsed.host,
                    port: parsed.port.unwrap_or(default_port),
                }
            }
            (None, None, Some(host)) if !postgres => {
                let port = match &raw.port {
                    None => default_port,
                    Some(p) => match u16::try_from(*p.get_ref()) {
                        Ok(port) if port > 0 => port,
                        _ => {
                            self.error(
                                format!("backup `{name}`: port {} is out of range", p.get_ref()),
                                span(p),
                            );
                            return None;
                        }
                    },
                };
                DatabaseLocation::Host {
                    host: host.get_ref().clone(),
                    port,
                }
            }
            _ => {
                let how = if postgres {
                    "give either service = \"NAME\" (the dump runs in its container) or url = \"postgres://user@host:5432/db\""
                } else {
                    "give either service = \"NAME\" (the dump runs in its container) or host = \"127.0.0.1\" (and port)"
                };
                self.error_help(
                    format!("backup `{name}`: say where the {engine} database is, once"),
                    at,
                    how,
                );
                return None;
            }
        };
        if raw.port.is_some() && raw.host.is_none() {
            self.error_help(
                format!("backup `{name}`: `port` goes with `host`"),
                raw.port.as_ref().and_then(span),
                if postgres {
                    "put the port in the URL"
                } else {
                    "add host = \"…\""
                },
            );
            return None;
        }
        let Some(database) = database.filter(|d| !d.is_empty()) else {
            self.error_help(
                format!("backup `{name}`: which database? `database` is missing"),
                at,
                "add database = \"app\"",
            );
            return None;
        };
        if let Some(secret) = &raw.password_secret
            && !valid_env_name(secret.get_ref())
        {
            self.error_help(
                format!("`{}` is not a valid secret name", secret.get_ref()),
                span(secret),
                SECRET_HELP,
            );
            return None;
        }
        let verify_by_restore = match raw.verify.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("restore") => true,
            Some("list") if postgres => false,
            Some(other) => {
                let help = if postgres {
                    "use \"restore\" (into a scratch database, the default) or \"list\" (pg_restore --list)"
                } else {
                    "remove it: a MySQL dump is checked by reading it to its `-- Dump completed` line"
                };
                self.error_help(
                    format!("backup `{name}`: unknown verify mode `{other}`"),
                    raw.verify.as_ref().and_then(span),
                    help,
                );
                return None;
            }
        };
        Some(Database {
            location,
            database,
            user: user.unwrap_or_else(|| default_user.to_owned()),
            password_secret: raw.password_secret.as_ref().map(|s| s.get_ref().clone()),
            verify_by_restore,
            options,
        })
    }
}

/// True when `path` is `dir` or inside it.
fn within(path: &str, dir: &str) -> bool {
    let path = Path::new(path);
    path.starts_with(dir) && path != Path::new(dir)
}

#[derive(Debug)]
struct PostgresUrl {
    host: String,
    port: Option<u16>,
    user: Option<String>,
    database: Option<String>,
    options: BTreeMap<String, String>,
}

/// `postgres://[user@]host[:port][/database][?key=value&…]`. A password in the URL is
/// refused: it belongs in a secret, not in berth.toml.
fn parse_postgres_url(url: &str) -> Result<PostgresUrl, String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or("it must start with postgres://")?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((user, hostport)) => {
            if user.contains(':') {
                return Err(
                    "it holds a password; move it into a secret and name it with password_secret"
                        .into(),
                );
            }
            (Some(percent_decode(user)?), hostport)
        }
        None => (None, authority),
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("unclosed [ in the host")?;
        (host.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (hostport.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("it names no host".into());
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port"))?,
        ),
        None => None,
    };
    let mut options = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value"))?;
        if key == "password" {
            return Err(
                "it holds a password; move it into a secret and name it with password_secret"
                    .into(),
            );
        }
        options.insert(percent_decode(key)?, percent_decode(value)?);
    }
    Ok(PostgresUrl {
        host,
        port,
        user,
        database: (!database.is_empty())
            .then(|| percent_decode(database))
            .transpose()?,
        options,
    })
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("a % escape is cut short")?;
            out.push(
                u8::from_str_radix(hex, 16).map_err(|_| format!("`%{hex}` is not an escape"))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "an escape is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls() {
        let url =
            parse_postgres_url("postgres://app%40x@db.internal:6543/shop?sslmode=require").unwrap();
        assert_eq!(url.host, "db.internal");
        assert_eq!(url.port, Some(6543));
        assert_eq!(url.user.as_deref(), Some("app@x"));
        assert_eq!(url.database.as_deref(), Some("shop"));
        assert_eq!(
            url.options.get("sslmode").map(String::as_str),
            Some("require")
        );
        let url = parse_postgres_url("postgresql://[::1]/app").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, None);
        assert!(
            parse_postgres_url("postgres://u:secret@h/db")
                .unwrap_err()
                .contains("password")
        );
        assert!(parse_postgres_url("mysql://h/db").is_err());
        assert!(parse_postgres_url("postgres://h:99999/db").is_err());
    }

    #[test]
    fn paths_within_volumes() {
        assert!(within("/data/app.db", "/data"));
        assert!(within("/data/sub/app.db", "/data"));
        assert!(!within("/database.db", "/data"));
        assert!(!within("/data", "/data"));
    }
}
