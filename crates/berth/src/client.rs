//! Talking to the agent: over its unix socket, over TCP with a bearer token, or through the
//! system's `ssh` to a remote server's agent (`ssh HOST berth dial-stdio`).

use berth_api::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    /// Plain HTTP (loopback).
    Tcp(String),
    /// HTTPS, the agent's certificate pinned by `BERTH_AGENT_FINGERPRINT`.
    Tls(String),
    /// `ssh://[user@]host[:port][/path/to/berth.sock]`
    Ssh {
        destination: String,
        port: Option<u16>,
        socket: Option<String>,
    },
}

impl Target {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("ssh://") {
            let (authority, socket) = match rest.split_once('/') {
                Some((a, path)) => (a, Some(format!("/{path}"))),
                None => (rest, None),
            };
            let (destination, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    Some(
                        port.parse()
                            .map_err(|_| format!("`{port}` is not a port"))?,
                    ),
                ),
                None => (authority.to_owned(), None),
            };
            if destination.is_empty() {
                return Err("ssh:// needs a host, such as ssh://deploy@example.com".into());
            }
            // ssh would read `-oProxyCommand=…` as an option and run it.
            if destination.starts_with('-') {
                return Err(format!(
                    "`{destination}` is not a host (it starts with `-`, which ssh would take for an option)"
                ));
            }
            return Ok(Target::Ssh {
                destination,
                port,
                socket,
            });
        }
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') {
            return Ok(Target::Unix(PathBuf::from(text)));
        }
        if let Some(addr) = text.strip_prefix("https://") {
            return Ok(Target::Tls(addr.trim_end_matches('/').to_owned()));
        }
        if let Some(addr) = text.strip_prefix("http://") {
            let addr = addr.trim_end_matches('/').to_owned();
            if !is_loopback(&addr) {
                return Err(format!(
                    "`{text}` would send the API token in clear over the network; use https://{addr} (the agent's certificate pinned by BERTH_AGENT_FINGERPRINT) or ssh://"
                ));
            }
            return Ok(Target::Tcp(addr));
        }
        if text.contains(':') {
            let addr = text.trim_end_matches('/').to_owned();
            // Beyond loopback the agent speaks only TLS.
            return Ok(if is_loopback(&addr) {
                Target::Tcp(addr)
            } else {
                Target::Tls(addr)
            });
        }
        Err(format!(
            "`{text}` is not an agent address: use unix:PATH, HOST:PORT or ssh://USER@HOST"
        ))
    }
}

/// Whether `host:port` names this machine by a loopback address or `localhost`.
fn is_loopback(addr: &str) -> bool {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
            Target::Tcp(addr) => write!(f, "{addr}"),
            Target::Tls(addr) => write!(f, "https://{addr}"),
            Target::Ssh {
                destination,
                port,
                socket,
            } => {
                write!(f, "ssh://{destination}")?;
                if let Some(port) = port {
                    write!(f, ":{port}")?;
                }
                if let Some(socket) = socket {
                    write!(f, "{socket}")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the berth agent at {target}: {cause}")]
    Unreachable {
        target: String,
        cause: String,
        hint: String,
    },
    #[error("{}", .error.message)]
    Api { status: u16, error: ApiError },
    #[error("unexpected answer from the agent at {target}: {message}")]
    Protocol { target: String, message: String },
}

impl ClientError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::Unreachable { hint, .. } => Some(hint.clone()),
            ClientError::Api { error, .. } => error.hint.clone(),
            ClientError::Protocol { .. } => {
                Some("the CLI and the agent may be different versions of berth".into())
            }
        }
    }
}

pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub struct Client {
    pub target: Target,
    actor: String,
    token: Option<String>,
    /// The agent's certificate fingerprint, for `Target::Tls`.
    fingerprint: Option<String>,
}

/// Either end of the connection to the agent.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// `ssh`'s stdout and stdin as one duplex stream; the child dies with it.
struct SshStream {
    stdout: tokio::process::ChildStdout,
    stdin: tokio::process::ChildStdin,
    _child: tokio::process::Child,
}

impl AsyncRead for SshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

/// A stream of newline-delimited JSON values from the agent.
pub struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
    target: String,
}

impl Lines {
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).map(Some).map_err(|e| {
                    ClientError::Protocol {
                        target: self.target.clone(),
                        message: e.to_string(),
                    }
                });
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ClientError::Unreachable {
                        target: self.target.clone(),
                        cause: format!("the connection broke: {e}"),
                        hint: "the agent may have stopped; `berth status` shows what it did".into(),
                    });
                }
                None if self.buffer.is_empty() => return Ok(None),
                None => {
                    let line = std::mem::take(&mut self.buffer);
                    return serde_json::from_slice(&line).map(Some).map_err(|e| {
                        ClientError::Protocol {
                            target: self.target.clone(),
                            message: e.to_string(),
                        }
                    });
                }
            }
        }
    }
}

impl Client {
    pub fn new(target: Target, token: Option<String>, fingerprint: Option<String>) -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(user_from_passwd);
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        Self {
            target,
            actor: format!("{user}@{host}"),
            token,
            fingerprint,
        }
    }

    fn unreachable(&self, cause: String) -> ClientError {
        let hint = match &self.target {
            Target::Unix(path) => format!(
                "start the agent with `berth agent` (or `berth up` for a local quickstart), or point to it with --agent / BERTH_AGENT (looked for {})",
                path.display()
            ),
            Target::Tcp(_) => "check that the agent listens there (`berth agent --api HOST:PORT`) and that BERTH_TOKEN holds its api-token".into(),
            Target::Tls(_) => "check that the agent listens there (`berth agent --api https://HOST:PORT`), that BERTH_AGENT_FINGERPRINT holds the fingerprint it printed (`api_fingerprint` in its agent.json) and BERTH_TOKEN its api-token".into(),
            Target::Ssh { .. } => "check that you can `ssh` to the server without a password prompt, and that berth is installed and its agent running there".into(),
        };
        ClientError::Unreachable {
            target: self.target.to_string(),
            cause,
            hint,
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        match &self.target {
            Target::Unix(path) => tokio::net::UnixStream::connect(path)
                .await
                .map(|s| Box::new(s) as Box<dyn Io>)
                .map_err(|e| self.unreachable(e.to_string())),
            Target::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map(|s| Box::new(s) as Box<dyn Io>)
                .map_err(|e| self.unreachable(e.to_string())),
            Target::Tls(addr) => {
                let Some(fingerprint) = &self.fingerprint else {
                    return Err(self.unreachable(
                        "its certificate cannot be checked: BERTH_AGENT_FINGERPRINT is not set"
                            .into(),
                    ));
                };
                let config = berth_tls::pinned_client_config(fingerprint)
                    .map_err(|e| self.unreachable(e.to_string()))?;
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| self.unreachable(e.to_string()))?;
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from("berth-agent")
                    .map_err(|e| self.unreachable(e.to_string()))?;
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Io>)
                    .map_err(|e| self.unreachable(format!("TLS: {e}")))
            }
            Target::Ssh {
                destination,
                port,
                socket,
            } => {
                let mut command = tokio::process::Command::new("ssh");
                command.arg("-T").arg("-o").arg("BatchMode=yes");
                if let Some(port) = port {
                    command.arg("-p").arg(port.to_string());
                }
                // `--` ends ssh's options: the destination is never read as one.
                command
                    .arg("--")
                    .arg(destination)
                    .arg("berth")
                    .arg("dial-stdio");
                if let Some(socket) = socket {
                    command.arg("--agent").arg(format!("unix:{socket}"));
                }
                let mut child = command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| self.unreachable(format!("cannot run ssh: {e}")))?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(self.unreachable("ssh has no pipes".into()));
                };
                Ok(Box::new(SshStream {
                    stdout,
                    stdin,
                    _child: child,
                }))
            }
        }
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Body,
        content_type: &str,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let io = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "berth-agent")
            .header(http::header::CONTENT_TYPE, content_type)
            .header(berth_api::ACTOR_HEADER, &self.actor);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(body).map_err(|e| ClientError::Protocol {
            target: self.target.to_string(),
            message: e.to_string(),
        })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(refusal(response, "", None).await)
    }

    fn json_body<B: Serialize>(&self, body: &B) -> Result<Body, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Protocol {
            target: self.target.to_string(),
            message: e.to_string(),
        })?;
        Ok(Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed_unsync())
    }

    fn empty() -> Body {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        response: http::Response<Incoming>,
    ) -> Result<T, ClientError> {
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            target: self.target.to_string(),
            message: e.to_string(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .send(http::Method::GET, path, Self::empty(), "application/json")
            .await?;
        self.read_json(response).await
    }

    pub async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let response = self
            .send(method, path, self.json_body(body)?, "application/json")
            .await?;
        self.read_json(response).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(
            http::Method::DELETE,
            path,
            Self::empty(),
            "application/json",
        )
        .await
        .map(|_| ())
    }

    /// Sends a request whose answer is newline-delimited JSON.
    pub async fn stream<B: Serialize>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Lines, ClientError> {
        let body = match body {
            Some(body) => self.json_body(body)?,
            None => Self::empty(),
        };
        let response = self.send(method, path, body, "application/json").await?;
        Ok(Lines {
            body: response.into_body(),
            buffer: Vec::new(),
            target: self.target.to_string(),
        })
    }

    /// Asks the agent to switch the connection to `protocol` (`Upgrade`), and returns the
    /// connection once it has.
    pub async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
    ) -> Result<hyper::upgrade::Upgraded, ClientError> {
        let io = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .header(http::header::HOST, "berth-agent")
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, protocol)
            .header(berth_api::ACTOR_HEADER, &self.actor);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Self::empty())
            .map_err(|e| ClientError::Protocol {
                target: self.target.to_string(),
                message: e.to_string(),
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(refusal(
                response,
                &format!(" instead of switching to {protocol}"),
                Some("the agent may be older than this CLI: `berth version` shows both"),
            )
            .await);
        }
        hyper::upgrade::on(response)
            .await
            .map_err(|e| self.unreachable(e.to_string()))
    }

    /// Streams a file to the agent.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &std::path::Path,
    ) -> Result<T, ClientError> {
        let handle = tokio::fs::File::open(file)
            .await
            .map_err(|e| ClientError::Protocol {
                target: self.target.to_string(),
                message: format!("cannot read {}: {e}", file.display()),
            })?;
        let stream =
            futures_util::StreamExt::map(tokio_util::io::ReaderStream::new(handle), |chunk| {
                chunk.map(Frame::data)
            });
        let body = StreamBody::new(stream).boxed_unsync();
        let response = match self
            .send(http::Method::POST, path, body, "application/x-tar")
            .await
        {
            Ok(response) => response,
            // An agent that refuses the request (a token without the scope) answers before it
            // reads the body, and the connection may end while the body is still being
            // written: ask again without a body to learn its reason.
            Err(error @ ClientError::Unreachable { .. }) => {
                return match self
                    .send(http::Method::POST, path, Self::empty(), "application/x-tar")
                    .await
                {
                    Err(
                        refused @ ClientError::Api {
                            status: 401 | 403, ..
                        },
                    ) => Err(refused),
                    _ => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        self.read_json(response).await
    }
}

/// The agent's answer to a request it did not carry out: its JSON error, or, from something
/// that is not berth's API, the status and body as they came.
async fn refusal(
    response: http::Response<Incoming>,
    instead: &str,
    hint: Option<&str>,
) -> ClientError {
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let error = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| ApiError {
        message: format!(
            "the agent answered {status}{instead}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ),
        hint: hint.map(str::to_owned),
        kind: berth_api::ErrorKind::Failed,
        details: Vec::new(),
        cause: None,
    });
    ClientError::Api { status, error }
}

/// The name of the current user from /etc/passwd, for when $USER is not set (cron, CI).
fn user_from_passwd() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.get(2) == Some(&uid.to_string().as_str())).then(|| fields[0].to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Connects stdin/stdout to the local agent's socket: the far end of `--agent ssh://`.
pub async fn dial_stdio(target: &Target) -> std::io::Result<()> {
    let Target::Unix(path) = target else {
        return Err(std::io::Error::other(
            "dial-stdio connects to a unix socket",
        ));
    };
    let socket = tokio::net::UnixStream::connect(path).await?;
    let (mut from_agent, mut to_agent) = socket.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let upstream = async {
        tokio::io::copy(&mut stdin, &mut to_agent).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut to_agent).await
    };
    let downstream = async {
        tokio::io::copy(&mut from_agent, &mut stdout).await?;
        tokio::io::AsyncWriteExt::flush(&mut stdout).await
    };
    tokio::try_join!(upstream, downstream).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses_parse() {
        assert_eq!(
            Target::parse("unix:/tmp/b.sock"),
            Ok(Target::Unix("/tmp/b.sock".into()))
        );
        assert_eq!(
            Target::parse("/tmp/b.sock"),
            Ok(Target::Unix("/tmp/b.sock".into()))
        );
        assert_eq!(
            Target::parse("127.0.0.1:7070"),
            Ok(Target::Tcp("127.0.0.1:7070".into()))
        );
        assert_eq!(
            Target::parse("ssh://deploy@example.com:2222/var/lib/berth/berth.sock"),
            Ok(Target::Ssh {
                destination: "deploy@example.com".into(),
                port: Some(2222),
                socket: Some("/var/lib/berth/berth.sock".into())
            })
        );
        assert_eq!(
            Target::parse("ssh://host"),
            Ok(Target::Ssh {
                destination: "host".into(),
                port: None,
                socket: None
            })
        );
        assert!(Target::parse("nonsense").is_err());
        assert_eq!(
            Target::parse("203.0.113.7:7070"),
            Ok(Target::Tls("203.0.113.7:7070".into())),
            "beyond loopback, TLS"
        );
        assert_eq!(
            Target::parse("https://127.0.0.1:7070/"),
            Ok(Target::Tls("127.0.0.1:7070".into()))
        );
        assert_eq!(
            Target::parse("localhost:7070"),
            Ok(Target::Tcp("localhost:7070".into()))
        );
        assert!(
            Target::parse("http://203.0.113.7:7070")
                .unwrap_err()
                .contains("in clear")
        );
        let error = Target::parse("ssh://-oProxyCommand=touch /tmp/pwned").unwrap_err();
        assert!(error.contains("option"), "{error}");
    }
}

#[cfg(test)]
mod upload_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An agent that refuses an upload answers before reading the body and closes: the CLI
    /// reports the refusal, not the broken connection.
    #[tokio::test]
    async fn a_refused_upload_reports_the_refusal_not_the_broken_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut head = vec![0u8; 4096];
                let _ = socket.read(&mut head).await;
                let body = r#"{"message":"the API token `dashboard` has the read scope; POST /v1/uploads needs deploy","hint":null,"kind":"forbidden","details":[]}"#;
                let answer = format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                // Closed with the body unread: the client's writes meet a reset.
                drop(socket);
            }
        });
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![7u8; 64 << 20]).unwrap();
        let client = Client::new(Target::Tcp(addr.to_string()), Some("t".into()), None);
        let error = client
            .upload::<serde_json::Value>("/v1/uploads", file.path())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ClientError::Api { status: 403, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("read scope"), "{error}");
    }
}
