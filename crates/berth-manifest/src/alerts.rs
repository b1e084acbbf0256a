//! `[alerts.NAME]`: where berth sends its alerts. Tokens, passwords and webhook URLs that
//! grant access are named berth secrets, never written in the manifest.

use crate::units::duration_ms;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One alert channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertChannel {
    pub name: String,
    pub kind: ChannelKind,
    /// Alerts below this severity are not sent here.
    pub min_severity: Severity,
    /// Also send a message when an alert resolves.
    pub send_resolved: bool,
    /// While an alert keeps firing, send it again this often; zero never does.
    #[serde(with = "duration_ms")]
    pub remind_every: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    /// A JSON POST, signed with HMAC-SHA256 when `signing_secret` names a berth secret.
    Webhook {
        url: String,
        signing_secret: Option<String>,
    },
    /// A Slack incoming webhook; the URL is the berth secret `url_secret`.
    Slack { url_secret: String },
    /// A Discord webhook; the URL is the berth secret `url_secret`.
    Discord { url_secret: String },
    /// A Telegram bot message to `chat_id`; the bot token is the berth secret `token_secret`.
    Telegram {
        token_secret: String,
        chat_id: String,
    },
    /// An ntfy topic URL, with an access token from a berth secret when given.
    Ntfy {
        url: String,
        token_secret: Option<String>,
    },
    /// Email over SMTP.
    Email(EmailChannel),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailChannel {
    /// The SMTP server's host name.
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<String>,
    /// The berth secret holding the SMTP password.
    pub password_secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all: only for a relay on the same host.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl AlertChannel {
    /// The berth secrets this channel reads.
    pub fn secret_names(&self) -> Vec<&str> {
        match &self.kind {
            ChannelKind::Webhook { signing_secret, .. } => {
                signing_secret.iter().map(String::as_str).collect()
            }
            ChannelKind::Slack { url_secret } | ChannelKind::Discord { url_secret } => {
                vec![url_secret.as_str()]
            }
            ChannelKind::Telegram { token_secret, .. } => vec![token_secret.as_str()],
            ChannelKind::Ntfy { token_secret, .. } => {
                token_secret.iter().map(String::as_str).collect()
            }
            ChannelKind::Email(email) => email.password_secret.iter().map(String::as_str).collect(),
        }
    }

    /// What kind of channel it is, for messages (`webhook`, `email`).
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            ChannelKind::Webhook { .. } => "webhook",
            ChannelKind::Slack { .. } => "slack",
            ChannelKind::Discord { .. } => "discord",
            ChannelKind::Telegram { .. } => "telegram",
            ChannelKind::Ntfy { .. } => "ntfy",
            ChannelKind::Email(_) => "email",
        }
    }
}

/// `[monitors.NAME]`: a check of the app from outside its containers (usually its public
/// address, so DNS, TLS and the proxy are covered end to end), run by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitor {
    pub name: String,
    pub check: MonitorCheck,
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Failed checks in a row before the monitor's alert fires.
    pub failure_threshold: u32,
    /// Passed checks in a row before a firing alert resolves.
    pub success_threshold: u32,
    /// Tell the channels when it resolves.
    pub send_on_resolved: bool,
    /// HTTPS: alert when the certificate expires within this; zero never does.
    #[serde(with = "duration_ms")]
    pub certificate_expiry: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorCheck {
    /// GET `url`; passes when the status is in range, and the body contains `body` and
    /// `json_path` (dot-separated, such as `status` or `checks.db`) equals `json_equals`
    /// when given.
    Http {
        url: String,
        status: crate::StatusRange,
        body: Option<String>,
        json_path: Option<String>,
        json_equals: Option<String>,
    },
    /// Passes when `host:port` accepts a TCP connection.
    Tcp { host: String, port: u16 },
    /// Passes when the name resolves (to one of `addresses`, when given).
    Dns {
        name: String,
        addresses: Vec<String>,
    },
}

impl MonitorCheck {
    /// What it checks, for messages (`GET https://shop.example/health`): a URL without its
    /// query, which may hold a token.
    pub fn describe(&self) -> String {
        match self {
            MonitorCheck::Http { url, .. } => {
                let shown = url.split(['?', '#']).next().unwrap_or(url);
                format!("GET {shown}")
            }
            MonitorCheck::Tcp { host, port } => format!("TCP {host}:{port}"),
            MonitorCheck::Dns { name, .. } => format!("DNS {name}"),
        }
    }
}
