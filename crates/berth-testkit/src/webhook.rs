//! A webhook receiver for alert tests: an HTTP/1.1 server on loopback that checks each POST's
//! `X-Berth-Signature` (HMAC-SHA256 of `TIMESTAMP.BODY` under the key it was given), answers
//! 200 to a valid one at `/hook` and 401 otherwise, and keeps every request for the test to
//! read. Other paths stand in for chat services (Slack, Discord, ntfy), which sign nothing:
//! they get 200 whatever comes.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when it is not JSON) and as text.
    pub body: serde_json::Value,
    pub text: String,
    /// Whether its signature was present and valid.
    pub signed: bool,
}

pub struct WebhookReceiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl WebhookReceiver {
    /// Listens on 127.0.0.1 (a free port); signatures are checked against `key`.
    pub fn start(key: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (store, key) = (received.clone(), key.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (store, key) = (store.clone(), key.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &key, &store);
                });
            }
        });
        Ok(Self { url, received })
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits up to `within` for a request whose body satisfies `wanted`.
    pub fn wait_for(
        &self,
        within: Duration,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.received().into_iter().find(|r| wanted(&r.body)) {
                return Some(found);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(
    stream: std::net::TcpStream,
    key: &str,
    store: &Mutex<Vec<Received>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let (mut length, mut signature, mut timestamp) = (0usize, None, None);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim().to_owned();
            headers.push((name.trim().to_ascii_lowercase(), value.clone()));
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "x-berth-signature" => signature = Some(value),
                "x-berth-timestamp" => timestamp = Some(value),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let signed = match (signature, timestamp) {
        (Some(signature), Some(timestamp)) => {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(std::io::Error::other)?;
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(&body);
            let expected = hex_encode(&mac.finalize().into_bytes());
            signature.strip_prefix("sha256=") == Some(expected.as_str())
        }
        _ => false,
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let status = if signed || path != "/hook" {
        "200 OK"
    } else {
        "401 Unauthorized"
    };
    if let Ok(mut store) = store.lock() {
        store.push(Received {
            at: Instant::now(),
            path,
            headers,
            body,
            text,
            signed,
        });
    }
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )?;
    stream.flush()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
