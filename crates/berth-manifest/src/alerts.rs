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
