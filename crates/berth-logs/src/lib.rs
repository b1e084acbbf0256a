//! berth's own copy of every container's output, so the logs of replaced, crashed or
//! rolled-back containers stay readable after Docker removed them.
//!
//! Each app has a directory of segments (`LOGS/APP/START_MS.zst`), each a run of zstd frames,
//! one per write, holding one JSON record per line. A segment is closed at 8 MiB or after an
//! hour; the oldest go once the app's segments pass its size budget or their age limit. A
//! frame cut short by a crash is where reading a segment stops, nothing more is lost.
//!
//! Must not: follow Docker itself (the agent's collector does, and hands records in), or be
//! written by anyone but berth (the directory is in berth's own data directory, 0700).

pub mod collector;
pub mod forward;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When Docker received it, Unix milliseconds.
    #[serde(rename = "t")]
    pub at: i64,
    #[serde(rename = "s")]
    pub service: String,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub release: Option<i64>,
    #[serde(rename = "c")]
    pub container: String,
    /// `stdout` or `stderr`.
    #[serde(rename = "o")]
    pub stream: String,
    #[serde(rename = "l")]
    pub line: String,
}

impl LogRecord {
    /// The `level` (or `severity`, `lvl`) of a JSON line, or the `level=` of a logfmt one,
    /// lower-cased.
    pub fn level(&self) -> Option<String> {
        if !self.line.trim_start().starts_with('{') {
            return logfmt_level(&self.line);
        }
        let value: serde_json::Value = serde_json::from_str(&self.line).ok()?;
        ["level", "severity", "lvl", "log.level"]
            .iter()
            .find_map(|k| value.get(*k)?.as_str().map(str::to_ascii_lowercase))
    }
}

/// `level=error` (or `lvl=`, `severity=`) as a logfmt line writes it.
fn logfmt_level(line: &str) -> Option<String> {
    line.split_ascii_whitespace().find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        matches!(key, "level" | "lvl" | "severity")
            .then(|| value.trim_matches('"').to_ascii_lowercase())
    })
}

/// Whether a record is at error level or above.
fn is_error(record: &LogRecord) -> bool {
    record
        .level()
        .and_then(|l| level_rank(&l))
        .is_some_and(|rank| rank >= 4)
}

/// What to read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    pub service: Option<String>,
    pub release: Option<i64>,
    /// Unix ms, inclusive.
    pub since: Option<i64>,
    /// Unix ms, exclusive.
    pub until: Option<i64>,
    /// A text each line must contain.
    pub grep: Option<String>,
    /// The least level of JSON lines kept (`warn` keeps warn, error, fatal); lines without a
    /// level are left out when set.
    pub level: Option<String>,
    /// Only the last N matching lines.
    pub tail: Option<usize>,
}

/// Where a level ranks: trace 0 .. fatal 5.
pub fn level_rank(level: &str) -> Option<u8> {
    Some(match level {
        "trace" => 0,
        "debug" => 1,
        "info" | "notice" => 2,
        "warn" | "warning" => 3,
        "error" | "err" => 4,
        "fatal" | "critical" | "crit" | "panic" | "emergency" | "alert" => 5,
        _ => return None,
    })
}

impl LogFilter {
    pub fn matches(&self, record: &LogRecord) -> bool {
        if self.service.as_ref().is_some_and(|s| *s != record.service)
            || self.release.is_some_and(|r| record.release != Some(r))
            || self.since.is_some_and(|s| record.at < s)
            || self.until.is_some_and(|u| record.at >= u)
            || self
                .grep
                .as_ref()
                .is_some_and(|g| !record.line.contains(g.as_str()))
        {
            return false;
        }
        match &self.level {
            None => true,
            Some(wanted) => {
                let least = level_rank(wanted).unwrap_or(0);
                record
                    .level()
                    .and_then(|l| level_rank(&l))
                    .is_some_and(|rank| rank >= least)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot write the logs of {app} in {path}: {source}")]
    Write {
        app: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the logs in {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How much each app keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_bytes: u64,
    pub max_age_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            max_age_ms: 14 * 86_400_000,
        }
    }
}

/// A segment is closed past this size (compressed) or age.
const SEGMENT_BYTES: u64 = 8 << 20;
const SEGMENT_MS: i64 = 3_600_000;

/// The store of every app's logs.
pub struct LogStore {
    root: PathBuf,
    retention: Retention,
    /// The segment being written per app: (path, start ms).
    open: Mutex<BTreeMap<String, (PathBuf, i64)>>,
    /// Lines appended per app since start, and those at error level or above.
    lines: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl LogStore {
    /// Logs live under `root` (`DATA_DIR/logs/apps`), one directory per app.
    pub fn new(root: PathBuf, retention: Retention) -> Self {
        Self {
            root,
            retention,
            open: Mutex::new(BTreeMap::new()),
            lines: Mutex::new(BTreeMap::new()),
        }
    }

    /// Lines appended for the app since this store was made, and those at error level or
    /// above, for the error-share alert.
    pub fn line_counts(&self, app: &str) -> (u64, u64) {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
            .copied()
            .unwrap_or((0, 0))
    }

    fn app_dir(&self, app: &str) -> PathBuf {
        self.root.join(app)
    }

    /// Appends records (in time order) to the app's current segment, as one zstd frame.
    pub fn append(&self, app: &str, records: &[LogRecord], now: i64) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let dir = self.app_dir(app);
        let write_error = |path: &Path, source| LogError::Write {
            app: app.to_owned(),
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| write_error(&dir, e))?;
        let mut text = Vec::new();
        for record in records {
            if serde_json::to_writer(&mut text, record).is_ok() {
                text.push(b'\n');
            }
        }
        let frame = zstd::encode_all(text.as_slice(), 3).map_err(|e| write_error(&dir, e))?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let current = open.get(app).cloned().filter(|(path, start)| {
            now - start < SEGMENT_MS
                && std::fs::metadata(path).is_ok_and(|m| m.len() < SEGMENT_BYTES)
        });
        let path = match current {
            Some((path, _)) => path,
            None => {
                let start = records.first().map_or(now, |r| r.at.min(now));
                let mut path = dir.join(format!("{start:013}.zst"));
                let mut n = 1;
                while path.exists() {
                    path = dir.join(format!("{start:013}-{n}.zst"));
                    n += 1;
                }
                open.insert(app.to_owned(), (path.clone(), start));
                path
            }
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| write_error(&path, e))?;
        file.write_all(&frame).map_err(|e| write_error(&path, e))?;
        drop(open);
        let errors = records.iter().filter(|r| is_error(r)).count() as u64;
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let counts = lines.entry(app.to_owned()).or_default();
        counts.0 += records.len() as u64;
        counts.1 += errors;
        Ok(())
    }

    /// The app's segments, oldest first, with their start times.
    fn segments(&self, app: &str) -> Vec<(i64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.app_dir(app)) else {
            return Vec::new();
        };
        let mut segments: Vec<(i64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let start = name
                    .strip_suffix(".zst")?
                    .split('-')
                    .next()?
                    .parse::<i64>()
                    .ok()?;
                Some((start, e.path()))
            })
            .collect();
        segments.sort();
        segments
    }

    /// Reads the app's records that pass `filter`, oldest first.
    pub fn read(&self, app: &str, filter: &LogFilter) -> Result<Vec<LogRecord>, LogError> {
        let segments = self.segments(app);
        let mut out = std::collections::VecDeque::new();
        for (i, (start, path)) in segments.iter().enumerate() {
            // A segment holds lines from its start to the next one's.
            let end = segments.get(i + 1).map(|(s, _)| *s);
            if filter.until.is_some_and(|u| *start >= u)
                || filter.since.zip(end).is_some_and(|(s, e)| e < s)
            {
                continue;
            }
            for record in read_segment(path)? {
                if filter.matches(&record) {
                    out.push_back(record);
                    if let Some(tail) = filter.tail
                        && out.len() > tail
                    {
                        out.pop_front();
                    }
                }
            }
        }
        Ok(out.into())
    }

    /// Drops the app's oldest segments past the age limit or the size budget (the one being
    /// written stays).
    pub fn prune(&self, app: &str, now: i64) -> u64 {
        let segments = self.segments(app);
        let open = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
            .map(|(p, _)| p.clone());
        let mut sizes: Vec<(i64, PathBuf, u64)> = segments
            .into_iter()
            .map(|(start, path)| {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                (start, path, size)
            })
            .collect();
        let mut total: u64 = sizes.iter().map(|(_, _, s)| s).sum();
        let mut freed = 0;
        let count = sizes.len();
        for (i, (start, path, size)) in sizes.drain(..).enumerate() {
            if Some(&path) == open.as_ref() || i + 1 == count {
                break;
            }
            let too_old = now - start > self.retention.max_age_ms;
            if !too_old && total <= self.retention.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= size;
                freed += size;
            }
        }
        freed
    }

    /// Every app with stored logs.
    pub fn apps(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets an app's logs (`berth destroy`).
    pub fn remove_app(&self, app: &str) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(app);
        let _ = std::fs::remove_dir_all(self.app_dir(app));
    }
}

/// Every record of a segment, up to a frame a crash cut short.
fn read_segment(path: &Path) -> Result<Vec<LogRecord>, LogError> {
    let file = std::fs::File::open(path).map_err(|source| LogError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut decoder = match zstd::stream::read::Decoder::new(file) {
        Ok(decoder) => decoder,
        Err(source) => {
            return Err(LogError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut text = Vec::new();
    // An error here is a torn last frame: what came before it is kept.
    let _ = decoder.read_to_end(&mut text);
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: i64, release: i64, line: &str) -> LogRecord {
        LogRecord {
            at,
            service: "web".into(),
            release: Some(release),
            container: format!("shop-web-r{release}"),
            stream: "stdout".into(),
            line: line.into(),
        }
    }

    #[test]
    fn records_are_read_back_by_release_time_text_and_level() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().to_owned(), Retention::default());
        store
            .append(
                "shop",
                &[
                    record(1_000, 1, "hello 1"),
                    record(2_000, 1, r#"{"level":"ERROR","msg":"boom"}"#),
                ],
                2_000,
            )
            .unwrap();
        store
            .append(
                "shop",
                &[
                    record(3_000, 2, "hello 2"),
                    record(4_000, 2, r#"{"level":"info","msg":"ok"}"#),
                ],
                4_000,
            )
            .unwrap();
        let lines = |filter: LogFilter| -> Vec<String> {
            store
                .read("shop", &filter)
                .unwrap()
                .into_iter()
                .map(|r| r.line)
                .collect()
        };
        assert_eq!(lines(LogFilter::default()).len(), 4);
        assert_eq!(
            lines(LogFilter {
                release: Some(1),
                ..LogFilter::default()
            }),
            ["hello 1", r#"{"level":"ERROR","msg":"boom"}"#]
        );
        assert_eq!(
            lines(LogFilter {
                since: Some(2_000),
                until: Some(4_000),
                ..LogFilter::default()
            }),
            [r#"{"level":"ERROR","msg":"boom"}"#, "hello 2"]
        );
        assert_eq!(
            lines(LogFilter {
                grep: Some("hello".into()),
                tail: Some(1),
                ..LogFilter::default()
            }),
            ["hello 2"]
        );
        assert_eq!(
            lines(LogFilter {
                level: Some("warn".into()),
                ..LogFilter::default()
            }),
            [r#"{"level":"ERROR","msg":"boom"}"#]
        );
        assert!(
            store
                .read("other", &LogFilter::default())
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.line_counts("shop"), (4, 1), "four lines, one error");
        assert_eq!(store.line_counts("other"), (0, 0));
    }

    #[test]
    fn levels_come_from_json_and_logfmt_lines() {
        let level = |line: &str| record(0, 1, line).level();
        assert_eq!(
            level(r#"{"severity":"Warning"}"#).as_deref(),
            Some("warning")
        );
        assert_eq!(
            level(r#"time=1 level=error msg="db down""#).as_deref(),
            Some("error")
        );
        assert_eq!(level(r#"lvl="FATAL" x=1"#).as_deref(), Some("fatal"));
        assert_eq!(level("ERROR: plain text has no field"), None);
        assert!(is_error(&record(0, 1, "level=crit")));
        assert!(!is_error(&record(0, 1, "level=info")));
    }

    #[test]
    fn a_torn_last_frame_loses_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().to_owned(), Retention::default());
        store
            .append("shop", &[record(1_000, 1, "kept")], 1_000)
            .unwrap();
        store
            .append("shop", &[record(2_000, 1, "torn")], 2_000)
            .unwrap();
        let segment = std::fs::read_dir(dir.path().join("shop"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(&segment).unwrap();
        std::fs::write(&segment, &bytes[..bytes.len() - 5]).unwrap();
        let lines: Vec<String> = store
            .read("shop", &LogFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(lines, ["kept"]);
    }

    #[test]
    fn segments_rotate_by_age_and_the_oldest_go_past_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let hour = 3_600_000;
        let store = LogStore::new(
            dir.path().to_owned(),
            Retention {
                max_bytes: u64::MAX,
                max_age_ms: 2 * hour,
            },
        );
        for h in 0..4 {
            store
                .append(
                    "shop",
                    &[record(h * hour, 1, &format!("hour {h}"))],
                    h * hour,
                )
                .unwrap();
        }
        assert_eq!(store.segments("shop").len(), 4, "a segment per hour");
        store.prune("shop", 4 * hour);
        let left: Vec<String> = store
            .read("shop", &LogFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(left, ["hour 2", "hour 3"], "older than two hours: gone");
        let tiny = LogStore::new(
            dir.path().to_owned(),
            Retention {
                max_bytes: 1,
                max_age_ms: i64::MAX,
            },
        );
        tiny.prune("shop", 4 * hour);
        assert_eq!(
            tiny.segments("shop").len(),
            1,
            "the newest stays, whatever its size"
        );
    }
}
