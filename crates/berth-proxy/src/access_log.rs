//! One JSON line per request, written off the request path and rotated by size.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What is logged about one request. Built from handles the request already holds (no
/// formatting on the request path); the writer thread turns it into a JSON line.
#[derive(Debug)]
pub struct AccessRecord {
    pub at: std::time::SystemTime,
    pub client: std::net::IpAddr,
    pub version: http::Version,
    pub host: Arc<str>,
    pub method: http::Method,
    pub uri: http::Uri,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub app: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub release: Option<i64>,
    pub upstream: Option<Arc<str>>,
    pub user_agent: Option<http::HeaderValue>,
}

impl AccessRecord {
    /// Appends the record as one line of JSON. Written by hand rather than through serde: it
    /// runs for every request, and most strings need no escaping, which a plain copy shows.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        write_time(out, self.at);
        out.extend_from_slice(b"\",\"client\":\"");
        match self.client {
            IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    write_number(out, octet);
                }
            }
            IpAddr::V6(ip) => {
                use std::io::Write as _;
                let _ = write!(out, "{ip}");
            }
        }
        out.extend_from_slice(b"\",\"proto\":");
        write_json_str(out, crate::version_name(self.version));
        out.extend_from_slice(b",\"host\":");
        write_json_str(out, &self.host);
        out.extend_from_slice(b",\"method\":");
        write_json_str(out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        write_json_str(
            out,
            self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        );
        out.extend_from_slice(b",\"status\":");
        write_number(out, self.status);
        out.extend_from_slice(b",\"bytes\":");
        write_number(out, self.bytes);
        // Milliseconds with microsecond precision, as a fixed-point number.
        let micros = self.duration.as_micros();
        out.extend_from_slice(b",\"duration_ms\":");
        write_number(out, micros / 1000);
        out.push(b'.');
        let fraction = (micros % 1000) as u16;
        out.extend_from_slice(&[
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ]);
        out.extend_from_slice(b",\"app\":");
        write_json_opt(out, self.app.as_deref());
        out.extend_from_slice(b",\"service\":");
        write_json_opt(out, self.service.as_deref());
        match self.release {
            Some(release) => {
                out.extend_from_slice(b",\"release\":");
                write_number(out, release);
            }
            None => out.extend_from_slice(b",\"release\":null"),
        }
        out.extend_from_slice(b",\"upstream\":");
        write_json_opt(out, self.upstream.as_deref());
        out.extend_from_slice(b",\"user_agent\":");
        write_json_opt(out, self.user_agent.as_ref().and_then(|v| v.to_str().ok()));
        out.extend_from_slice(b"}\n");
    }
}

fn write_number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// RFC 3339 in UTC with microseconds. The date and time of day are formatted once per second
/// (per writing thread): the calendar arithmetic is most of the cost of a timestamp.
fn write_time(out: &mut Vec<u8>, at: std::time::SystemTime) {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let Ok(since_epoch) = at.duration_since(std::time::UNIX_EPOCH) else {
        return;
    };
    let seconds = since_epoch.as_secs();
    let mut prefix = SECOND.get();
    if prefix.0 != seconds {
        let Ok(whole) = jiff::Timestamp::from_second(seconds as i64) else {
            return;
        };
        // "YYYY-MM-DDTHH:MM:SSZ" for every year berth will see.
        let text = whole.to_string();
        let Some(date_time) = text
            .as_bytes()
            .get(..19)
            .and_then(|b| <[u8; 19]>::try_from(b).ok())
        else {
            out.extend_from_slice(text.as_bytes());
            return;
        };
        prefix = (seconds, date_time);
        SECOND.set(prefix);
    }
    out.extend_from_slice(&prefix.1);
    out.push(b'.');
    let micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

fn write_json_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => write_json_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: copied as is unless it holds a quote, a backslash or a control character.
fn write_json_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let needs_escape = |b: &u8| *b < 0x20 || *b == b'"' || *b == b'\\' || *b == 0x7f;
    if !value.as_bytes().iter().any(needs_escape) {
        out.extend_from_slice(value.as_bytes());
    } else {
        for c in value.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    use std::io::Write as _;
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
    }
    out.push(b'"');
}

pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Vec<AccessRecord>>,
    wake: Condvar,
    dropped: AtomicU64,
    closed: AtomicBool,
}

/// Records waiting past this many are dropped (and counted) rather than grow memory.
const MAX_PENDING: usize = 100_000;
/// The writer is woken early when this many records wait.
const WAKE_AT: usize = 4096;
/// Otherwise it flushes this often: requests never wake a thread.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

impl AccessLog {
    /// Writes to `path`, rotating to `path.1` … `path.N` past `max_size` bytes.
    pub fn open(path: &Path, max_size: u64, keep: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let mut size = file.metadata()?.len();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let writer = Arc::clone(&shared);
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("berth-access-log".into())
            .spawn(move || {
                let mut buffer = Vec::with_capacity(256 * 1024);
                loop {
                    let records = {
                        let mut pending = writer.pending.lock().unwrap_or_else(|p| p.into_inner());
                        if pending.is_empty() && !writer.closed.load(Ordering::Acquire) {
                            pending = writer
                                .wake
                                .wait_timeout(pending, FLUSH_EVERY)
                                .map(|(g, _)| g)
                                .unwrap_or_else(|p| p.into_inner().0);
                        }
                        std::mem::take(&mut *pending)
                    };
                    if records.is_empty() {
                        if writer.closed.load(Ordering::Acquire) {
                            return;
                        }
                        continue;
                    }
                    buffer.clear();
                    for record in &records {
                        record.write_json_line(&mut buffer);
                    }
                    if size + buffer.len() as u64 > max_size
                        && let Ok(rotated) = rotate(&path, keep)
                    {
                        file = rotated;
                        size = 0;
                    }
                    if file.write_all(&buffer).is_ok() {
                        size += buffer.len() as u64;
                    }
                    // Bound the pace when idle-ish: gather a batch rather than spin.
                    if records.len() < WAKE_AT {
                        std::thread::sleep(FLUSH_EVERY.min(Duration::from_millis(20)));
                    }
                }
            })?;
        Ok(Self { shared })
    }

    /// Queues a record; never blocks a request and never wakes a thread for it (records are
    /// dropped, and counted, when the writer cannot keep up).
    pub fn record(&self, record: AccessRecord) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push(record);
        if pending.len() == WAKE_AT {
            self.shared.wake.notify_one();
        }
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn rotate(path: &Path, keep: u32) -> std::io::Result<std::fs::File> {
    let _ = std::fs::remove_file(numbered(path, keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(path, n), numbered(path, n + 1));
    }
    if keep > 0 {
        std::fs::rename(path, numbered(path, 1))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u16) -> AccessRecord {
        AccessRecord {
            at: std::time::SystemTime::now(),
            client: "127.0.0.1".parse().unwrap(),
            version: http::Version::HTTP_11,
            host: "example.com".into(),
            method: http::Method::GET,
            uri: format!("/{n}").parse().unwrap(),
            status: 200,
            bytes: 10,
            duration: Duration::from_micros(1500),
            app: Some("app".into()),
            service: Some("web".into()),
            release: Some(1),
            upstream: Some("app-web-r1".into()),
            user_agent: None,
        }
    }

    #[test]
    fn every_field_survives_a_json_parser_whatever_the_client_sent() {
        let mut odd = record(1);
        odd.host = "h\"o\\st\u{1}\u{7f}é".into();
        // A URI cannot hold a raw quote or backslash (the parser refuses them), only their
        // percent-encodings; the host and user agent carry the raw ones.
        odd.uri = "/p%22?q=%5C".parse().unwrap();
        odd.user_agent = Some(http::HeaderValue::from_bytes(b"a\tb \"c\" \\").unwrap());
        odd.service = None;
        odd.release = None;
        odd.client = "::1".parse().unwrap();
        odd.version = http::Version::HTTP_2;
        let mut line = Vec::new();
        odd.write_json_line(&mut line);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["host"], "h\"o\\st\u{1}\u{7f}é");
        assert_eq!(value["path"], odd.uri.path_and_query().unwrap().as_str());
        assert_eq!(value["user_agent"], "a\tb \"c\" \\");
        assert_eq!(value["client"], "::1");
        assert_eq!(value["proto"], "HTTP/2");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes"], 10);
        assert_eq!(value["duration_ms"], 1.5);
        assert_eq!(value["app"], "app");
        assert!(value["service"].is_null() && value["release"].is_null());
        assert_eq!(value["upstream"], "app-web-r1");
        let time = value["time"].as_str().unwrap();
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{time}");
    }

    #[test]
    fn times_addresses_and_durations_are_written_exactly() {
        let line_of = |seconds: u64, micros: u32, client: &str, duration: Duration| {
            let mut record = record(1);
            record.at = std::time::UNIX_EPOCH + Duration::new(seconds, micros * 1000);
            record.client = client.parse().unwrap();
            record.duration = duration;
            let mut line = Vec::new();
            record.write_json_line(&mut line);
            serde_json::from_slice::<serde_json::Value>(&line).unwrap()
        };
        // The same second twice (the cached date), then the next one, then an earlier one.
        let cases = [
            (1_795_000_000, 7, "2026-11-18T11:06:40.000007Z"),
            (1_795_000_000, 999_999, "2026-11-18T11:06:40.999999Z"),
            (1_795_000_001, 0, "2026-11-18T11:06:41.000000Z"),
            (0, 120_000, "1970-01-01T00:00:00.120000Z"),
        ];
        for (seconds, micros, expected) in cases {
            let value = line_of(
                seconds,
                micros,
                "10.0.255.7",
                Duration::from_micros(2_000_123),
            );
            assert_eq!(value["time"], expected);
            assert_eq!(value["client"], "10.0.255.7");
            assert_eq!(value["duration_ms"], 2000.123);
        }
        let value = line_of(1, 0, "2001:db8::1", Duration::from_micros(7));
        assert_eq!(value["client"], "2001:db8::1");
        assert_eq!(value["duration_ms"], 0.007);
    }

    #[test]
    fn lines_are_json_and_files_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, 600, 2).unwrap();
        // Four batches of three lines (each batch larger than the limit), each waited for
        // before the next, so the writer sees four separate writes however busy the machine.
        for batch in 0..4u16 {
            for n in batch * 3..batch * 3 + 3 {
                log.record(record(n));
            }
            let last = format!("\"/{}\"", batch * 3 + 2);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !std::fs::read_to_string(&path).is_ok_and(|text| text.contains(&last)) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "batch {batch} never written"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(log);
        let current = std::fs::read_to_string(&path).unwrap();
        let first = current.lines().next().unwrap();
        let value: serde_json::Value = serde_json::from_str(first).unwrap();
        assert_eq!(value["status"], 200);
        assert!(
            numbered(&path, 1).exists() && numbered(&path, 2).exists(),
            "rotated files are kept"
        );
        assert!(!numbered(&path, 3).exists(), "only `keep` rotated files");
    }
}
