//! One JSON line per request, written off the request path and rotated by size.

use serde::Serialize;
use std::io::Write;
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

impl Serialize for AccessRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut line = serializer.serialize_struct("AccessRecord", 14)?;
        let time = jiff::Timestamp::try_from(self.at)
            .map(|t| t.to_string())
            .unwrap_or_default();
        line.serialize_field("time", &time)?;
        line.serialize_field("client", &self.client.to_string())?;
        line.serialize_field("proto", crate::version_name(self.version))?;
        line.serialize_field("host", &*self.host)?;
        line.serialize_field("method", self.method.as_str())?;
        line.serialize_field(
            "path",
            self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        )?;
        line.serialize_field("status", &self.status)?;
        line.serialize_field("bytes", &self.bytes)?;
        line.serialize_field("duration_ms", &(self.duration.as_secs_f64() * 1000.0))?;
        line.serialize_field("app", &self.app.as_deref())?;
        line.serialize_field("service", &self.service.as_deref())?;
        line.serialize_field("release", &self.release)?;
        line.serialize_field("upstream", &self.upstream.as_deref())?;
        line.serialize_field(
            "user_agent",
            &self.user_agent.as_ref().and_then(|v| v.to_str().ok()),
        )?;
        line.end()
    }
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
                        if serde_json::to_writer(&mut buffer, record).is_ok() {
                            buffer.push(b'\n');
                        }
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
