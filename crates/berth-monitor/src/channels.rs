//! Sending one alert message to one channel: a signed JSON webhook, Slack, Discord, Telegram,
//! ntfy, or email over SMTP. Secrets (signing keys, tokens, webhook URLs, SMTP passwords) are
//! asked for by name when a message is sent, so a rotated secret takes effect at once.

use berth_manifest::{AlertChannel, ChannelKind, EmailChannel, SmtpTls};
use berth_state::AlertRecord;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::time::Duration;

/// The header carrying the webhook body's signature: `sha256=` and the hex HMAC-SHA256 of
/// `TIMESTAMP.BODY` under the signing secret, where TIMESTAMP is [`TIMESTAMP_HEADER`]'s value.
pub const SIGNATURE_HEADER: &str = "x-berth-signature";
/// Unix seconds when the message was signed; receivers refuse old ones (replays).
pub const TIMESTAMP_HEADER: &str = "x-berth-timestamp";

/// How long one attempt may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// What is sent: an alert and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `firing`, `resolved`, `reminder`, `event` or `test`.
    pub what: &'static str,
    pub alert: AlertRecord,
}

impl Message {
    pub fn for_alert(alert: &AlertRecord, what: &'static str) -> Self {
        Self {
            what,
            alert: alert.clone(),
        }
    }

    /// A test message for `berth alerts test CHANNEL`.
    pub fn test(app: &str, channel: &str, now: i64) -> Self {
        Self {
            what: "test",
            alert: AlertRecord {
                id: 0,
                key: format!("test:{app}/{channel}"),
                rule: "test".into(),
                severity: "info".into(),
                app: Some(app.to_owned()),
                subject: format!("{app} alert channel {channel}"),
                summary: format!(
                    "a test message from berth to the {channel} channel of {app}: alerts reach you here"
                ),
                event: true,
                started_at: now,
                resolved_at: Some(now),
            },
        }
    }

    /// One line for chat and subjects: `[FIRING critical] shop/web is down: ...`.
    pub fn headline(&self) -> String {
        let label = match self.what {
            "firing" => "FIRING",
            "resolved" => "RESOLVED",
            "reminder" => "STILL FIRING",
            "test" => "TEST",
            _ => "EVENT",
        };
        format!("[{label} {}] {}", self.alert.severity, self.alert.summary)
    }

    /// The plain text body of an email or chat message.
    pub fn text(&self, server: &str) -> String {
        let mut text = format!(
            "{}\n\nserver: {server}\nsubject: {}\nrule: {}\nsince: {}\n",
            self.headline(),
            self.alert.subject,
            self.alert.rule,
            berth_core::locks::format_time(self.alert.started_at)
        );
        if let Some(resolved) = self.alert.resolved_at.filter(|_| !self.alert.event) {
            text.push_str(&format!(
                "resolved: {}\n",
                berth_core::locks::format_time(resolved)
            ));
        }
        text.push_str("\n`berth alerts` lists firing and recent alerts.\n");
        text
    }
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth another try (the receiver is down, timed out, or answered 5xx or 429).
    Transient(String),
    /// Another try would fail the same way (a missing secret, a 4xx, a bad address).
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient(m) | SendError::Permanent(m) => f.write_str(m),
        }
    }
}

/// Sends messages; holds the HTTP client (its connection pool) and the server's name.
pub struct Sender {
    http: reqwest::Client,
    server: String,
}

impl Sender {
    /// Fails only when no TLS client can be set up on this host.
    pub fn new(server: String) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            // A webhook URL must not bounce berth somewhere else with the signed body.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot set up an HTTPS client: {e}"))?;
        Ok(Self { http, server })
    }

    pub async fn send(
        &self,
        channel: &AlertChannel,
        message: &Message,
        secret: &(dyn Fn(&str) -> Result<String, String> + Sync),
    ) -> Result<(), SendError> {
        let secret = |name: &str| {
            secret(name).map_err(|e| {
                SendError::Permanent(format!(
                    "the secret {name} of channel {} cannot be read: {e}",
                    channel.name
                ))
            })
        };
        let text = message.text(&self.server);
        match &channel.kind {
            ChannelKind::Webhook {
                url,
                signing_secret,
            } => {
                let body = webhook_body(message, &self.server);
                let mut request = self
                    .http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json");
                if let Some(name) = signing_secret {
                    let key = secret(name)?;
                    let timestamp = berth_state::now_ms() / 1000;
                    request = request
                        .header(TIMESTAMP_HEADER, timestamp.to_string())
                        .header(SIGNATURE_HEADER, sign(&key, timestamp, &body));
                }
                self.post(request.body(body)).await
            }
            ChannelKind::Slack { url_secret } => {
                let url = secret(url_secret)?;
                let body = serde_json::json!({ "text": text });
                self.post(self.json_post(&url, &body)).await
            }
            ChannelKind::Discord { url_secret } => {
                let url = secret(url_secret)?;
                // Discord refuses content over 2,000 characters.
                let content: String = text.chars().take(1900).collect();
                let body = serde_json::json!({ "content": content });
                self.post(self.json_post(&url, &body)).await
            }
            ChannelKind::Telegram {
                token_secret,
                chat_id,
            } => {
                let token = secret(token_secret)?;
                let url = format!("https://api.telegram.org/bot{token}/sendMessage");
                let body = serde_json::json!({ "chat_id": chat_id, "text": text });
                self.post(self.json_post(&url, &body)).await
            }
            ChannelKind::Ntfy { url, token_secret } => {
                let priority = match message.alert.severity.as_str() {
                    "critical" => "5",
                    "warning" => "4",
                    _ => "3",
                };
                let mut request = self
                    .http
                    .post(url)
                    .header("Title", message.headline())
                    .header("Priority", priority)
                    .header("Tags", format!("berth,{}", message.alert.rule));
                if let Some(name) = token_secret {
                    request = request.bearer_auth(secret(name)?);
                }
                self.post(request.body(text)).await
            }
            ChannelKind::Email(email) => {
                let password = match &email.password_secret {
                    Some(name) => Some(secret(name)?),
                    None => None,
                };
                send_email(email, password, &message.headline(), text).await
            }
        }
    }

    fn json_post(&self, url: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
    }

    async fn post(&self, request: reqwest::RequestBuilder) -> Result<(), SendError> {
        let response = request.send().await.map_err(|e| {
            // reqwest's error names the URL, which may hold a token: say what failed only.
            if e.is_builder() {
                return SendError::Permanent(
                    "the request cannot be made (a secret with a line break or a URL that is not one?)"
                        .into(),
                );
            }
            let what = if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "the request failed".to_owned()
            };
            SendError::Transient(format!(
                "{what}{}",
                std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let message = format!("the receiver answered {status}: {}", body.trim());
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(SendError::Transient(message))
        } else {
            Err(SendError::Permanent(message))
        }
    }
}

/// The generic webhook's JSON body.
pub fn webhook_body(message: &Message, server: &str) -> String {
    serde_json::json!({
        "version": 1,
        "status": message.what,
        "server": server,
        "text": message.headline(),
        "alert": message.alert,
    })
    .to_string()
}

/// `sha256=HEX` of HMAC-SHA256(key, "TIMESTAMP.BODY").
pub fn sign(key: &str, timestamp: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn send_email(
    email: &EmailChannel,
    password: Option<String>,
    subject: &str,
    text: String,
) -> Result<(), SendError> {
    use lettre::message::{Mailbox, header::ContentType};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    let permanent =
        |what: &str, e: &dyn std::fmt::Display| SendError::Permanent(format!("{what}: {e}"));
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|e| permanent(&format!("`{}` is not a sender address", email.from), &e))?;
    let mut builder = lettre::Message::builder()
        .from(from)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &email.to {
        let to: Mailbox = to
            .parse()
            .map_err(|e| permanent(&format!("`{to}` is not an address"), &e))?;
        builder = builder.to(to);
    }
    let mail = builder
        .body(text)
        .map_err(|e| permanent("cannot build the email", &e))?;
    let transport = match email.tls {
        SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&email.host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&email.host),
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            &email.host,
        )),
    }
    .map_err(|e| permanent("cannot set up SMTP", &e))?
    .port(email.port)
    .timeout(Some(SEND_TIMEOUT));
    let transport = match (&email.username, password) {
        (Some(user), Some(password)) => {
            transport.credentials(Credentials::new(user.clone(), password))
        }
        _ => transport,
    }
    .build();
    match transport.send(mail).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(SendError::Permanent(format!(
            "the SMTP server {}:{} refused the message: {e}",
            email.host, email.port
        ))),
        Err(e) => Err(SendError::Transient(format!(
            "sending through {}:{} failed: {e}",
            email.host, email.port
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_and_body() {
        // The value Python computes: hmac.new(b"key", b"1700000000.{}", hashlib.sha256).
        assert_eq!(
            sign("key", 1700000000, "{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(sign("key", 1700000001, "{}"), sign("key", 1700000000, "{}"));
        assert_ne!(
            sign("other", 1700000000, "{}"),
            sign("key", 1700000000, "{}")
        );
    }

    #[test]
    fn a_message_reads_as_a_headline_and_a_body() {
        let message = Message::test("shop", "ops", 0);
        assert!(message.headline().starts_with("[TEST info] a test message"));
        let text = message.text("web-1");
        assert!(text.contains("server: web-1"));
        assert!(text.contains("berth alerts"));
        let body: serde_json::Value =
            serde_json::from_str(&webhook_body(&message, "web-1")).unwrap();
        assert_eq!(body["status"], "test");
        assert_eq!(body["alert"]["app"], "shop");
        assert_eq!(body["version"], 1);
    }
}
