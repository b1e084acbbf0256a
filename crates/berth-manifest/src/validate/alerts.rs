//! `[alerts.NAME]`: each channel's type and the fields that type needs, so a channel that
//! could never deliver is refused by `berth check`, not discovered during an outage.

use super::{Checker, NAME_HELP, span, valid_env_name, valid_name};
use crate::alerts::*;
use crate::raw::*;
use crate::units::parse_duration;
use std::time::Duration;
use toml::Spanned;

const SECRET_NAME_HELP: &str = "name the berth secret holding it (letters, digits and underscores, such as ALERT_WEBHOOK_KEY); the value itself never goes in berth.toml";
const DEFAULT_REMIND_EVERY: Duration = Duration::from_secs(4 * 3600);

impl Checker<'_> {
    /// A severity as written (`info`, `warning`, `critical`); `warning` when absent.
    fn severity(&mut self, field: &str, text: &Option<SpannedString>) -> Severity {
        let Some(text) = text else {
            return Severity::Warning;
        };
        Severity::parse(text.get_ref()).unwrap_or_else(|| {
            self.error_help(
                format!("{field} `{}` is not a severity", text.get_ref()),
                span(text),
                "use info, warning or critical",
            );
            Severity::Warning
        })
    }

    pub(super) fn alert_channels(&mut self, raw: &RawManifest) -> Vec<AlertChannel> {
        raw.alerts
            .iter()
            .filter_map(|(name, channel)| self.alert_channel(name, channel))
            .collect()
    }

    fn alert_channel(
        &mut self,
        name: &Spanned<String>,
        raw: &Spanned<RawAlertChannel>,
    ) -> Option<AlertChannel> {
        let channel = raw.get_ref();
        let label = format!("[alerts.{}]", name.get_ref());
        if !valid_name(name.get_ref(), 63) {
            self.error_help(
                format!("alert channel name `{}` is not valid", name.get_ref()),
                span(name),
                NAME_HELP,
            );
        }
        let kind = match channel.kind.get_ref().as_str() {
            "webhook" => ChannelKind::Webhook {
                url: self.channel_url(&label, channel.url.as_ref(), span(raw), false)?,
                signing_secret: self.secret_name(&label, channel.signing_secret.as_ref()),
            },
            "slack" => ChannelKind::Slack {
                url_secret: self.required_secret(
                    &label,
                    "url_secret",
                    channel.url_secret.as_ref(),
                    span(raw),
                )?,
            },
            "discord" => ChannelKind::Discord {
                url_secret: self.required_secret(
                    &label,
                    "url_secret",
                    channel.url_secret.as_ref(),
                    span(raw),
                )?,
            },
            "telegram" => {
                let token_secret = self.required_secret(
                    &label,
                    "token_secret",
                    channel.token_secret.as_ref(),
                    span(raw),
                );
                let Some(chat) = &channel.chat_id else {
                    self.error_help(
                        format!("{label} of type telegram needs `chat_id`"),
                        span(raw),
                        "the chat's numeric id, such as chat_id = -1001234567890",
                    );
                    return None;
                };
                ChannelKind::Telegram {
                    token_secret: token_secret?,
                    chat_id: chat.get_ref().to_text(),
                }
            }
            "ntfy" => ChannelKind::Ntfy {
                url: self.channel_url(&label, channel.url.as_ref(), span(raw), false)?,
                token_secret: self.secret_name(&label, channel.token_secret.as_ref()),
            },
            "email" => ChannelKind::Email(self.email_channel(&label, channel, raw)?),
            other => {
                self.error_help(
                    format!("{label} has an unknown type `{other}`"),
                    span(&channel.kind),
                    "use webhook, slack, discord, telegram, ntfy or email",
                );
                return None;
            }
        };
        let min_severity = self.severity(&format!("{label} min_severity"), &channel.min_severity);
        let remind_every = match &channel.remind_every {
            None => DEFAULT_REMIND_EVERY,
            Some(text) => match parse_duration(text.get_ref()) {
                Ok(d) if d.is_zero() || d >= Duration::from_secs(60) => d,
                Ok(_) => {
                    self.error_help(
                        format!("{label} remind_every = \"{}\" is too often", text.get_ref()),
                        span(text),
                        "remind at most once a minute, such as \"1h\", or \"0s\" for never",
                    );
                    DEFAULT_REMIND_EVERY
                }
                Err(reason) => {
                    self.error_help(
                        format!("{label} remind_every is not a duration: {reason}"),
                        span(text),
                        "such as \"4h\", or \"0s\" for never",
                    );
                    DEFAULT_REMIND_EVERY
                }
            },
        };
        Some(AlertChannel {
            name: name.get_ref().clone(),
            kind,
            min_severity,
            send_resolved: channel.send_resolved.as_ref().is_none_or(|s| *s.get_ref()),
            remind_every,
        })
    }

    /// An HTTP(S) URL. A channel's plain `http://` may only reach this host (a signed body
    /// or a token would cross the network in clear); a monitor may check any.
    fn channel_url(
        &mut self,
        label: &str,
        url: Option<&Spanned<String>>,
        whole: Option<std::ops::Range<usize>>,
        plain_http_anywhere: bool,
    ) -> Option<String> {
        let Some(url) = url else {
            self.error_help(
                format!("{label} needs `url`"),
                whole,
                "such as url = \"https://hooks.example.com/berth\"",
            );
            return None;
        };
        let text = url.get_ref();
        let Some((scheme, rest)) = text.split_once("://") else {
            self.error_help(
                format!("{label} url `{text}` is not a URL"),
                span(url),
                "write the whole URL, such as https://hooks.example.com/berth",
            );
            return None;
        };
        if !matches!(scheme, "https" | "http") || rest.is_empty() {
            self.error_help(
                format!("{label} url `{text}` is not an HTTP(S) URL"),
                span(url),
                "use https:// (http:// only for a receiver on this host)",
            );
            return None;
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        if authority.contains('@') {
            self.error_help(
                format!("{label} url has credentials in it"),
                span(url),
                "keep credentials in a berth secret (signing_secret or token_secret), not in berth.toml",
            );
            return None;
        }
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(authority, |(host, _)| host)
            .trim_matches(['[', ']']);
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if scheme == "http" && !plain_http_anywhere && !loopback {
            self.error_help(
                format!("{label} url `{text}` is plain HTTP to another host"),
                span(url),
                "use https:// (plain http:// only reaches a receiver on this host)",
            );
            return None;
        }
        Some(text.clone())
    }

    fn secret_name(&mut self, label: &str, name: Option<&Spanned<String>>) -> Option<String> {
        let name = name?;
        if !valid_env_name(name.get_ref()) {
            self.error_help(
                format!("{label}: `{}` is not a valid secret name", name.get_ref()),
                span(name),
                SECRET_NAME_HELP,
            );
        }
        Some(name.get_ref().clone())
    }

    fn required_secret(
        &mut self,
        label: &str,
        field: &str,
        name: Option<&Spanned<String>>,
        whole: Option<std::ops::Range<usize>>,
    ) -> Option<String> {
        if name.is_none() {
            self.error_help(format!("{label} needs `{field}`"), whole, SECRET_NAME_HELP);
        }
        self.secret_name(label, name)
    }

    fn email_channel(
        &mut self,
        label: &str,
        channel: &RawAlertChannel,
        raw: &Spanned<RawAlertChannel>,
    ) -> Option<EmailChannel> {
        let tls = match channel.tls.as_ref().map(|t| t.get_ref().as_str()) {
            None | Some("starttls") => SmtpTls::Starttls,
            Some("implicit") => SmtpTls::Implicit,
            Some("none") => SmtpTls::None,
            Some(other) => {
                self.error_help(
                    format!("{label} tls `{other}` is not a TLS mode"),
                    channel.tls.as_ref().and_then(span),
                    "use starttls (port 587), implicit (port 465) or none (a relay on this host)",
                );
                SmtpTls::Starttls
            }
        };
        let Some(smtp) = &channel.smtp else {
            self.error_help(
                format!("{label} of type email needs `smtp`"),
                span(raw),
                "the SMTP server as host:port, such as smtp = \"smtp.example.com:587\"",
            );
            return None;
        };
        let (host, port) = match smtp.get_ref().rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
                Ok(port) if port > 0 => (host.trim_matches(['[', ']']).to_owned(), port),
                _ => {
                    self.error_help(
                        format!("{label} smtp `{}` has no valid port", smtp.get_ref()),
                        span(smtp),
                        "such as smtp.example.com:587",
                    );
                    return None;
                }
            },
            _ => (
                smtp.get_ref().clone(),
                match tls {
                    SmtpTls::Implicit => 465,
                    SmtpTls::Starttls => 587,
                    SmtpTls::None => 25,
                },
            ),
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if tls == SmtpTls::None && !loopback {
            self.error_help(
                format!("{label} sends email without TLS to {host}"),
                channel.tls.as_ref().and_then(span),
                "use tls = \"starttls\" or \"implicit\"; \"none\" is only for a relay on this host (localhost)",
            );
        }
        let Some(from) = &channel.from else {
            self.error_help(
                format!("{label} of type email needs `from`"),
                span(raw),
                "the sender address, such as from = \"berth@example.com\"",
            );
            return None;
        };
        if channel.to.is_empty() {
            self.error_help(
                format!("{label} of type email needs `to`"),
                span(raw),
                "one or more addresses, such as to = [\"ops@example.com\"]",
            );
            return None;
        }
        for address in std::iter::once(from).chain(channel.to.iter()) {
            let text = address.get_ref();
            let valid = text.split_once('@').is_some_and(|(user, domain)| {
                !user.is_empty() && (domain.contains('.') || domain == "localhost")
            });
            if !valid
                || text
                    .chars()
                    .any(|c| c.is_whitespace() || c == '<' || c == '>')
            {
                self.error_help(
                    format!("{label}: `{text}` is not an email address"),
                    span(address),
                    "such as ops@example.com",
                );
            }
        }
        let password_secret = self.secret_name(label, channel.password_secret.as_ref());
        if password_secret.is_some() && channel.username.is_none() {
            self.error_help(
                format!("{label} has `password_secret` but no `username`"),
                channel.password_secret.as_ref().and_then(span),
                "add the SMTP user name",
            );
        }
        if let Some(user) = channel
            .username
            .as_ref()
            .filter(|_| password_secret.is_none())
        {
            self.error_help(
                format!("{label} has `username` but no `password_secret`"),
                span(user),
                "name the berth secret holding the SMTP password, or drop `username` for a relay that needs no login",
            );
        }
        Some(EmailChannel {
            host,
            port,
            tls,
            from: from.get_ref().clone(),
            to: channel.to.iter().map(|t| t.get_ref().clone()).collect(),
            username: channel.username.as_ref().map(|u| u.get_ref().clone()),
            password_secret,
        })
    }
}

const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_MONITOR_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CERTIFICATE_EXPIRY: Duration = Duration::from_secs(14 * 86_400);

impl Checker<'_> {
    pub(super) fn monitors(&mut self, raw: &RawManifest) -> Vec<Monitor> {
        raw.monitors
            .iter()
            .filter_map(|(name, monitor)| self.monitor(name, monitor))
            .collect()
    }

    fn monitor(&mut self, name: &Spanned<String>, raw: &Spanned<RawMonitor>) -> Option<Monitor> {
        let monitor = raw.get_ref();
        let label = format!("[monitors.{}]", name.get_ref());
        if !valid_name(name.get_ref(), 63) {
            self.error_help(
                format!("monitor name `{}` is not valid", name.get_ref()),
                span(name),
                NAME_HELP,
            );
        }
        let kinds = usize::from(monitor.url.is_some())
            + usize::from(monitor.tcp.is_some())
            + usize::from(monitor.dns.is_some());
        if kinds != 1 {
            self.error_help(
                format!("{label} needs exactly one of `url`, `tcp` and `dns`"),
                span(raw),
                "such as url = \"https://shop.example.com/health\", tcp = \"db.example.com:5432\" or dns = \"shop.example.com\"",
            );
            return None;
        }
        let http_only = [
            ("status", monitor.status.as_ref().and_then(span)),
            ("body", monitor.body.as_ref().and_then(span)),
            ("json_path", monitor.json_path.as_ref().and_then(span)),
        ];
        if monitor.url.is_none() {
            for (field, at) in http_only {
                if at.is_some() {
                    self.error_help(
                        format!("{label}: `{field}` only applies to a `url` check"),
                        at,
                        "remove it, or check a URL",
                    );
                }
            }
        }
        let check = if let Some(url) = &monitor.url {
            let url = self.channel_url(&label, Some(url), span(raw), true)?;
            let status = match &monitor.status {
                None => crate::StatusRange { min: 200, max: 299 },
                Some(s) => match super::parse_status(s.get_ref()) {
                    Ok(range) => range,
                    Err(reason) => {
                        self.error_help(
                            format!("{label}: `status` is not valid: {reason}"),
                            span(s),
                            "such as 200, \"2xx\" or \"200-399\"",
                        );
                        crate::StatusRange { min: 200, max: 299 }
                    }
                },
            };
            if monitor.json_path.is_some() != monitor.json_equals.is_some() {
                self.error_help(
                    format!("{label}: `json_path` and `json_equals` go together"),
                    span(raw),
                    "such as json_path = \"status\" and json_equals = \"ok\"",
                );
            }
            MonitorCheck::Http {
                url,
                status,
                body: monitor.body.as_ref().map(|b| b.get_ref().clone()),
                json_path: monitor.json_path.as_ref().map(|p| p.get_ref().clone()),
                json_equals: monitor.json_equals.as_ref().map(|v| v.get_ref().to_text()),
            }
        } else if let Some(tcp) = &monitor.tcp {
            match tcp
                .get_ref()
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                .filter(|(host, port)| !host.is_empty() && *port > 0)
            {
                Some((host, port)) => MonitorCheck::Tcp {
                    host: host.trim_matches(['[', ']']).to_owned(),
                    port,
                },
                None => {
                    self.error_help(
                        format!("{label}: tcp `{}` is not host:port", tcp.get_ref()),
                        span(tcp),
                        "such as db.example.com:5432",
                    );
                    return None;
                }
            }
        } else {
            let dns = monitor.dns.as_ref()?;
            let name_text = dns.get_ref();
            if name_text.is_empty() || name_text.contains(['/', ':', ' ']) {
                self.error_help(
                    format!("{label}: dns `{name_text}` is not a host name"),
                    span(dns),
                    "such as shop.example.com",
                );
            }
            for address in &monitor.addresses {
                if address.get_ref().parse::<std::net::IpAddr>().is_err() {
                    self.error_help(
                        format!("{label}: `{}` is not an IP address", address.get_ref()),
                        span(address),
                        "such as 203.0.113.7 or 2001:db8::7",
                    );
                }
            }
            MonitorCheck::Dns {
                name: name_text.clone(),
                addresses: monitor
                    .addresses
                    .iter()
                    .map(|a| a.get_ref().clone())
                    .collect(),
            }
        };
        let hour = Duration::from_secs(3600);
        let interval = self.duration(
            &format!("monitors.{}.interval", name.get_ref()),
            monitor.interval.as_ref(),
            DEFAULT_MONITOR_INTERVAL,
            24 * hour,
        );
        if interval < Duration::from_secs(1) {
            self.error_help(
                format!("{label}: an interval under a second would hammer what it checks"),
                monitor.interval.as_ref().and_then(span),
                "such as interval = \"30s\" (the default is 60s)",
            );
        }
        let timeout = self.duration(
            &format!("monitors.{}.timeout", name.get_ref()),
            monitor.timeout.as_ref(),
            DEFAULT_MONITOR_TIMEOUT,
            hour,
        );
        let failure_threshold = self.integer(
            "failure_threshold",
            monitor.failure_threshold.as_ref(),
            3,
            1..=100,
        );
        let success_threshold = self.integer(
            "success_threshold",
            monitor.success_threshold.as_ref(),
            2,
            1..=100,
        );
        let certificate_expiry = match &monitor.certificate_expiry {
            None => DEFAULT_CERTIFICATE_EXPIRY,
            Some(text) => match parse_duration(text.get_ref()) {
                Ok(d) => d,
                Err(reason) => {
                    self.error_help(
                        format!("{label}: certificate_expiry is not a duration: {reason}"),
                        span(text),
                        "such as \"14d\", or \"0s\" for no certificate alert",
                    );
                    DEFAULT_CERTIFICATE_EXPIRY
                }
            },
        };
        Some(Monitor {
            name: name.get_ref().clone(),
            check,
            interval,
            timeout,
            failure_threshold,
            success_threshold,
            send_on_resolved: monitor
                .send_on_resolved
                .as_ref()
                .is_none_or(|s| *s.get_ref()),
            certificate_expiry,
        })
    }
}

impl Checker<'_> {
    /// `[thresholds.NAME]`: each condition parsed, its service named and, for a percentage of
    /// a service's limit, that limit set.
    pub(super) fn thresholds(
        &mut self,
        raw: &RawManifest,
        services: &std::collections::BTreeMap<String, crate::Service>,
        accessories: &std::collections::BTreeMap<String, crate::Service>,
    ) -> Vec<crate::Threshold> {
        let mut thresholds = Vec::new();
        for (name, raw_threshold) in &raw.thresholds {
            let threshold = raw_threshold.get_ref();
            let label = format!("[thresholds.{}]", name.get_ref());
            if !valid_name(name.get_ref(), 63) {
                self.error_help(
                    format!("threshold name `{}` is not valid", name.get_ref()),
                    span(name),
                    NAME_HELP,
                );
            }
            let condition = match crate::parse_condition(threshold.when.get_ref()) {
                Ok(condition) => condition,
                Err(reason) => {
                    self.error_help(
                        format!("{label}: when = \"{}\": {reason}", threshold.when.get_ref()),
                        span(&threshold.when),
                        "such as \"cpu > 80% for 10m\", \"memory > 90%\", \"host.memory > 90% for 5m\" or \"disk > 85%\"",
                    );
                    continue;
                }
            };
            let severity = self.severity(&format!("{label} severity"), &threshold.severity);
            let service = threshold.service.as_ref().map(|s| s.get_ref().clone());
            if let Some(service_name) = &threshold.service {
                if !condition.metric.per_service() {
                    self.error_help(
                        format!(
                            "{label}: {} is the host's, not a service's",
                            condition.metric.name()
                        ),
                        span(service_name),
                        "remove `service`, or watch cpu or memory",
                    );
                } else if !services.contains_key(service_name.get_ref())
                    && !accessories.contains_key(service_name.get_ref())
                {
                    self.error_help(
                        format!(
                            "{label}: there is no service or accessory `{}`",
                            service_name.get_ref()
                        ),
                        span(service_name),
                        "name one of [services] or [accessories]",
                    );
                }
            }
            // A percentage of a limit needs the limit, on every service it watches.
            let watched: Vec<(&String, &crate::Service)> = services
                .iter()
                .chain(accessories)
                .filter(|(n, _)| service.as_ref().is_none_or(|s| s == *n))
                .collect();
            if let crate::Limit::Percent(_) = condition.limit
                && condition.metric == crate::Metric::Memory
            {
                for (service_name, _) in watched.iter().filter(|(_, s)| s.memory.is_none()) {
                    self.error_help(
                        format!(
                            "{label}: `{service_name}` has no memory limit to take a percentage of"
                        ),
                        span(&threshold.when),
                        format!(
                            "set memory = \"512m\" on {service_name}, name another service, or compare with a size (memory > 400MB)"
                        ),
                    );
                }
            }
            thresholds.push(crate::Threshold {
                name: name.get_ref().clone(),
                condition,
                service,
                severity,
            });
        }
        thresholds
    }
}
