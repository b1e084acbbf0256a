//! Helpers shared by berth's integration tests: the example app's static binary and build
//! context, unique names for Docker objects, a tar of a directory, and a webhook receiver that
//! checks berth's alert signatures.
//!
//! Tests use the real Docker Engine; these helpers only prepare inputs for it.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failure here is a test failure

pub mod webhook;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Builds the example app as a static binary (once per process, serialized across
/// processes with a file lock) and returns its path next to its Dockerfile.
pub fn hello_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            std::fs::create_dir_all(root.join("target")).unwrap();
            let lock = File::create(root.join("target/.hello-build.lock")).unwrap();
            lock.lock().expect("lock the hello build");
            let status = Command::new("bash")
                .arg(root.join("examples/hello/build.sh"))
                .status()
                .expect("run examples/hello/build.sh");
            assert!(status.success(), "examples/hello/build.sh failed");
            drop(lock);
            root.join("examples/hello/hello")
        })
        .clone()
}

/// A fresh build context holding the example app's Dockerfile and static binary.
pub fn hello_context() -> tempfile::TempDir {
    let binary = hello_binary();
    let dir = tempfile::tempdir().unwrap();
    let root = workspace_root();
    std::fs::copy(
        root.join("examples/hello/Dockerfile"),
        dir.path().join("Dockerfile"),
    )
    .unwrap();
    std::fs::copy(
        root.join("examples/hello/.dockerignore"),
        dir.path().join(".dockerignore"),
    )
    .unwrap();
    std::fs::copy(binary, dir.path().join("hello")).unwrap();
    dir
}

/// A tar archive of a directory's contents, for the runtime's build API.
pub fn tar_directory(dir: &Path) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut builder = tar::Builder::new(File::create(file.path()).unwrap());
    builder.append_dir_all(".", dir).unwrap();
    builder.finish().unwrap();
    file
}

/// A name no other test (or earlier run) uses: `prefix-xxxxxx`.
pub fn unique_name(prefix: &str) -> String {
    let suffix: u32 = rand::random::<u32>() & 0xff_ffff;
    format!("{prefix}-{suffix:06x}")
}

/// A minimal HTTP/1.1 GET over a fresh connection: `(status, body)`. Enough to probe the
/// example app without pulling an HTTP client into every test.
pub fn http_get(addr: &str, path: &str, host: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A keep-alive HTTP/1.1 client over one connection (reopened only after a failure or a
/// `connection: close`). It never retries: every failure is reported to the caller.
pub struct KeepAliveClient {
    addr: String,
    host: String,
    connection: Option<(std::io::BufReader<std::net::TcpStream>, std::net::TcpStream)>,
}

impl KeepAliveClient {
    pub fn new(addr: &str, host: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            host: host.to_owned(),
            connection: None,
        }
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        let result = self.try_get(path);
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    fn try_get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        use std::io::{BufRead, Read, Write};
        if self.connection.is_none() {
            let stream = std::net::TcpStream::connect(&self.addr)?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
            stream.set_nodelay(true)?;
            self.connection = Some((std::io::BufReader::new(stream.try_clone()?), stream));
        }
        let Some((reader, writer)) = self.connection.as_mut() else {
            unreachable!()
        };
        write!(writer, "GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", self.host)?;
        writer.flush()?;
        let mut status_line = String::new();
        if reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before a response",
            ));
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                match name.as_str() {
                    "content-length" => length = value.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size_line = String::new();
                reader.read_line(&mut size_line)?;
                let size =
                    usize::from_str_radix(size_line.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = length {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        } else {
            reader.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.connection = None;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A test certificate authority and leaf certificates signed by it.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_pem: String,
}

impl TestCa {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth test CA");
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            cert_pem,
        }
    }

    /// `(certificate PEM, private key PEM)` for these names (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// An HTTPS client that trusts only the roots it is given.
#[derive(Clone)]
pub struct TlsClient {
    config: std::sync::Arc<rustls::ClientConfig>,
}

pub enum TlsSender {
    Http1(hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>),
}

/// One TLS connection, speaking HTTP/2 when the server chose it by ALPN.
pub struct TlsConnection {
    pub alpn: Option<Vec<u8>>,
    /// The server's leaf certificate (DER).
    pub peer_certificate: Vec<u8>,
    sender: TlsSender,
}

/// A response: status, headers, body.
pub type TlsResponse = (u16, http::HeaderMap, String);

impl TlsClient {
    /// Trusts the PEM roots given; offers `alpn` (such as `[b"h2", b"http/1.1"]`).
    pub fn new(roots_pem: &str, alpn: &[&[u8]]) -> Self {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection does a full handshake, so the certificate it reports is the one the
        // server presents now (a resumed session reports the one from its first handshake).
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            config: std::sync::Arc::new(config),
        }
    }

    /// Connects to `addr`, verifying the certificate for `server_name`.
    pub async fn connect(&self, addr: &str, server_name: &str) -> std::io::Result<TlsConnection> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        self.handshake(tcp, server_name).await
    }

    /// TLS and HTTP over a TCP connection opened earlier.
    pub async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        server_name: &str,
    ) -> std::io::Result<TlsConnection> {
        let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let peer_certificate = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let io = hyper_util::rt::TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            TlsSender::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            TlsSender::Http1(sender)
        };
        Ok(TlsConnection {
            alpn,
            peer_certificate,
            sender,
        })
    }
}

/// A request that was never sent (the connection was closed, or the server said with GOAWAY
/// that it will not process it): a client may send it again on a new connection.
fn not_sent(error: hyper::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, error)
}

fn sent(error: hyper::Error) -> std::io::Error {
    if error.is_canceled() {
        return not_sent(error);
    }
    // The whole chain (hyper's own text is only its kind, such as "connection error"), so a
    // rare failure in a long run can be told apart from another.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    std::io::Error::other(text)
}

impl TlsConnection {
    /// Whether the server closed the connection (or sent GOAWAY): requests need a new one.
    pub fn is_closed(&self) -> bool {
        match &self.sender {
            TlsSender::Http1(sender) => sender.is_closed(),
            TlsSender::Http2(sender) => sender.is_closed(),
        }
    }

    /// A GET. Fails with `NotConnected` when the request was not sent (see [`not_sent`]).
    pub async fn get(&mut self, authority: &str, path: &str) -> std::io::Result<TlsResponse> {
        use http_body_util::BodyExt;
        let response = match &mut self.sender {
            TlsSender::Http1(sender) => {
                sender.ready().await.map_err(not_sent)?;
                let request = http::Request::get(path)
                    .header("host", authority)
                    .body(http_body_util::Empty::new())
                    .map_err(std::io::Error::other)?;
                sender.send_request(request).await.map_err(sent)?
            }
            TlsSender::Http2(sender) => {
                sender.ready().await.map_err(not_sent)?;
                let request = http::Request::get(format!("https://{authority}{path}"))
                    .body(http_body_util::Empty::new())
                    .map_err(std::io::Error::other)?;
                sender.send_request(request).await.map_err(sent)?
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// An HTTP/1.1 answer read whole: status, headers (names in lower case) and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every header of that name (`set-cookie`).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value a `set-cookie` header gives the cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers_named("set-cookie")
            .into_iter()
            .filter_map(|c| c.split(';').next())
            .filter_map(|pair| pair.split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_owned())
    }
}

/// One request over a fresh connection (`connection: close`), any method, with extra
/// headers and a body (a form's, say); bodies of chunked answers are joined.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpAnswer> {
    http_request_to(addr, addr, method, path, headers, body)
}

/// [`http_request`] to `addr`, naming `host` in the Host header (a routed domain).
pub fn http_request_to(
    addr: &str,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpAnswer> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut body = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            body.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        body
    } else {
        rest.to_owned()
    };
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// `application/x-www-form-urlencoded` of the pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let escape = |text: &str| {
        let mut out = String::new();
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}
