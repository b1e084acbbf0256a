//! Forwarding to a log host: each line berth keeps is also sent, as an RFC 5424 syslog
//! message, to the app's `[logging] syslog` target, over UDP (RFC 5426: one message per
//! datagram) or TCP (RFC 6587: octet counting). Sending never holds up the collector: lines
//! queue (bounded) for a task of their own, and what a full queue or an unreachable host
//! cannot take is dropped and counted, never retried into a storm.

use crate::LogRecord;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// How lines travel to the log host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where an app's lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SyslogTarget {
    pub transport: Transport,
    /// `host:port`.
    pub address: String,
    /// The syslog facility's number (`user` 1, `daemon` 3, `local0` 16 ... `local7` 23).
    pub facility: u8,
}

/// The target of an app's lines, as the release that wrote them says (the live release for a
/// line without one); `None`: not forwarded.
pub type Targets = Arc<dyn Fn(&str, Option<i64>) -> Option<SyslogTarget> + Send + Sync>;

/// A UDP message longer than this is cut (RFC 5426 asks receivers for at least 2,048 bytes;
/// common ones take 8 KiB).
const UDP_MAX: usize = 8 * 1024;
/// A release's target never changes; the live release's (for lines without a release) is
/// asked again this often.
const TARGETS_FOR: Duration = Duration::from_secs(15);
/// Lines waiting to be sent, beyond which they are dropped.
const QUEUE: usize = 20_000;

/// The syslog severity of a line: its own level when it has one, else as Docker's syslog
/// driver does it (stdout informational, stderr error).
pub fn severity(record: &LogRecord) -> u8 {
    match record.level().as_deref() {
        Some("trace" | "debug") => 7,
        Some("info") => 6,
        Some("notice") => 5,
        Some("warn" | "warning") => 4,
        Some("error" | "err") => 3,
        Some("critical" | "crit" | "fatal" | "panic") => 2,
        Some("alert") => 1,
        Some("emergency" | "emerg") => 0,
        _ if record.stream == "stderr" => 3,
        _ => 6,
    }
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` when
/// empty (RFC 5424 section 6).
fn field(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if cleaned.is_empty() {
        "-".into()
    } else {
        cleaned
    }
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOST APP SERVICE STREAM - LINE`; the
/// container and release are not in structured data (berth has no registered SD-ID), the
/// service is the PROCID and the stream the MSGID.
pub fn format(record: &LogRecord, app: &str, host: &str, facility: u8) -> String {
    let priority = u16::from(facility) * 8 + u16::from(severity(record));
    let timestamp = jiff::Timestamp::from_millisecond(record.at)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| "-".into());
    format!(
        "<{priority}>1 {timestamp} {} {} {} {} - {}",
        field(host, 255),
        field(app, 48),
        field(&record.service, 128),
        field(&record.stream, 32),
        record.line
    )
}

/// An app and the release that wrote a line (none for a container without the label).
type ReleaseOf = (String, Option<i64>);

/// The forwarder: [`Forwarder::send`] queues, a task sends.
pub struct Forwarder {
    targets: Targets,
    host: String,
    /// Each (app, release)'s target as last asked, and when.
    known: std::sync::Mutex<HashMap<ReleaseOf, (Instant, Option<SyslogTarget>)>>,
    queue: mpsc::Sender<(SyslogTarget, String)>,
    pub dropped: Arc<AtomicU64>,
    pub sent: Arc<AtomicU64>,
}

impl Forwarder {
    /// Starts the sending task (on the current tokio runtime) for these targets; it ends
    /// with the forwarder.
    pub fn start(targets: Targets, host: String) -> Self {
        let (queue, messages) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(messages, dropped.clone(), sent.clone()));
        Self {
            targets,
            host,
            known: std::sync::Mutex::new(HashMap::new()),
            queue,
            dropped,
            sent,
        }
    }

    /// The target of a release's lines: asked once per release (a release never changes),
    /// every [`TARGETS_FOR`] for lines without one.
    fn target(&self, app: &str, release: Option<i64>) -> Option<SyslogTarget> {
        let now = Instant::now();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let key = (app.to_owned(), release);
        match known.get(&key) {
            Some((at, target)) if release.is_some() || now.duration_since(*at) < TARGETS_FOR => {
                target.clone()
            }
            _ => {
                let target = (self.targets)(app, release);
                // Bounded: an agent that ran through many releases starts over.
                if known.len() >= 4096 {
                    known.clear();
                }
                known.insert(key, (now, target.clone()));
                target
            }
        }
    }

    /// Queues an app's records for the log host of the release that wrote each, if it has
    /// one; those that do not fit are dropped and counted.
    pub fn send(&self, app: &str, records: &[LogRecord]) {
        for record in records {
            let Some(target) = self.target(app, record.release) else {
                continue;
            };
            let message = format(record, app, &self.host, target.facility);
            if self.queue.try_send((target.clone(), message)).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An open way to one target.
enum Connection {
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpStream),
}

async fn connect(target: &SyslogTarget) -> std::io::Result<Connection> {
    match target.transport {
        Transport::Udp => {
            let address = tokio::net::lookup_host(&target.address)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("the name has no address"))?;
            let local = if address.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = tokio::net::UdpSocket::bind(local).await?;
            socket.connect(address).await?;
            Ok(Connection::Udp(socket))
        }
        Transport::Tcp => {
            let stream = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(&target.address),
            )
            .await
            .map_err(|_| std::io::Error::other("connecting timed out"))??;
            stream.set_nodelay(true)?;
            Ok(Connection::Tcp(stream))
        }
    }
}

async fn deliver(connection: &mut Connection, message: &str) -> std::io::Result<()> {
    match connection {
        Connection::Udp(socket) => {
            let bytes = message.as_bytes();
            socket
                .send(&bytes[..bytes.len().min(UDP_MAX)])
                .await
                .map(|_| ())
        }
        Connection::Tcp(stream) => {
            let framed = format!("{} {message}", message.len());
            tokio::time::timeout(Duration::from_secs(5), stream.write_all(framed.as_bytes()))
                .await
                .map_err(|_| std::io::Error::other("the log host stopped reading"))?
        }
    }
}

async fn run(
    mut messages: mpsc::Receiver<(SyslogTarget, String)>,
    dropped: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
) {
    // Open connections by target, and targets that failed, until when they are left alone.
    let mut open: HashMap<SyslogTarget, Connection> = HashMap::new();
    let mut resting: HashMap<SyslogTarget, Instant> = HashMap::new();
    while let Some((target, message)) = messages.recv().await {
        let now = Instant::now();
        if resting.get(&target).is_some_and(|until| now < *until) {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !open.contains_key(&target) {
            match connect(&target).await {
                Ok(connection) => {
                    open.insert(target.clone(), connection);
                }
                Err(error) => {
                    tracing::warn!(target = %target.address, %error, "cannot reach the log host; lines are dropped for 10 s");
                    resting.insert(target, now + Duration::from_secs(10));
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(connection) = open.get_mut(&target) else {
            continue;
        };
        match deliver(connection, &message).await {
            Ok(()) => {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(target = %target.address, %error, "sending to the log host failed; lines are dropped for 10 s");
                open.remove(&target);
                resting.insert(target, now + Duration::from_secs(10));
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stream: &str, line: &str) -> LogRecord {
        LogRecord {
            at: 1_764_763_200_123,
            service: "web".into(),
            release: Some(3),
            container: "shop-web-3-1".into(),
            stream: stream.into(),
            line: line.into(),
        }
    }

    #[test]
    fn a_line_becomes_an_rfc_5424_message_with_its_severity() {
        assert_eq!(
            format(&record("stdout", "hello"), "shop", "box 1", 1),
            "<14>1 2025-12-03T12:00:00.123Z box1 shop web stdout - hello"
        );
        assert_eq!(
            format(
                &record("stdout", r#"{"level":"error","msg":"x"}"#),
                "shop",
                "h",
                16
            )
            .split(' ')
            .next(),
            Some("<131>1"),
            "local0 (16) * 8 + error (3)"
        );
        assert_eq!(severity(&record("stderr", "plain")), 3);
        assert_eq!(severity(&record("stderr", "level=warn x")), 4);
        assert_eq!(severity(&record("stdout", "level=debug")), 7);
        assert_eq!(field("", 5), "-");
        assert_eq!(field("a b\tcdefgh", 5), "abcde");
    }

    #[tokio::test]
    async fn lines_reach_a_udp_and_a_tcp_log_host_and_an_unreachable_one_drops_them() {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_address = closed.local_addr().unwrap().to_string();
        drop(closed);
        let targets: HashMap<&str, SyslogTarget> = HashMap::from([
            (
                "udp-app",
                SyslogTarget {
                    transport: Transport::Udp,
                    address: udp.local_addr().unwrap().to_string(),
                    facility: 1,
                },
            ),
            (
                "tcp-app",
                SyslogTarget {
                    transport: Transport::Tcp,
                    address: tcp.local_addr().unwrap().to_string(),
                    facility: 1,
                },
            ),
            (
                "gone-app",
                SyslogTarget {
                    transport: Transport::Tcp,
                    address: closed_address,
                    facility: 1,
                },
            ),
        ]);
        let lookup: Targets = Arc::new(move |app: &str, _| targets.get(app).cloned());
        let forwarder = Forwarder::start(lookup, "testhost".into());
        forwarder.send("udp-app", &[record("stdout", "over udp")]);
        forwarder.send(
            "tcp-app",
            &[record("stdout", "first"), record("stderr", "second line")],
        );
        forwarder.send("gone-app", &[record("stdout", "nowhere")]);
        forwarder.send("quiet-app", &[record("stdout", "not forwarded")]);

        let mut datagram = vec![0u8; 9000];
        let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut datagram))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&datagram[..n]).into_owned();
        assert!(
            text.starts_with("<14>1 ") && text.ends_with(" testhost udp-app web stdout - over udp"),
            "{text}"
        );

        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), tcp.accept())
            .await
            .unwrap()
            .unwrap();
        let mut received = Vec::new();
        let expected_messages = 2;
        let mut messages = Vec::new();
        while messages.len() < expected_messages {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::io::AsyncReadExt::read(&mut stream, &mut chunk),
            )
            .await
            .unwrap()
            .unwrap();
            assert!(n > 0, "the stream ended");
            received.extend_from_slice(&chunk[..n]);
            // Octet counting: "LEN SP MESSAGE", repeated.
            messages.clear();
            let mut rest = received.as_slice();
            while let Some(space) = rest.iter().position(|b| *b == b' ') {
                let Ok(length) = std::str::from_utf8(&rest[..space])
                    .unwrap()
                    .parse::<usize>()
                else {
                    break;
                };
                if rest.len() < space + 1 + length {
                    break;
                }
                messages.push(
                    String::from_utf8_lossy(&rest[space + 1..space + 1 + length]).into_owned(),
                );
                rest = &rest[space + 1 + length..];
            }
        }
        assert!(messages[0].ends_with("web stdout - first"), "{messages:?}");
        assert!(
            messages[1].starts_with("<11>1 ") && messages[1].ends_with("web stderr - second line"),
            "{messages:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while forwarder.dropped.load(Ordering::Relaxed) < 1 {
            assert!(
                Instant::now() < deadline,
                "the unreachable host's line was not counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(forwarder.sent.load(Ordering::Relaxed), 3);
    }
}
