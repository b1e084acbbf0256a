//! The collector: follows the output of every container this agent runs (each start from
//! Docker's event stream, and the running ones when the agent starts) and hands it to the
//! [`LogStore`] in batches, off the request path. Where it got to in each container is kept
//! (`cursors.json` per app), so an agent that restarts goes on from there.

use crate::{LogRecord, LogStore};
use berth_runtime::{ContainerAction, ContainerRuntime, LogQuery, LogStream};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const AGENT: &str = "berth.agent";
const APP: &str = "berth.app";
const SERVICE: &str = "berth.service";
const RELEASE: &str = "berth.release";

/// Who wrote a line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    app: String,
    service: String,
    release: Option<i64>,
    container: String,
}

fn source_of(labels: &berth_runtime::Labels, name: &str) -> Option<Source> {
    Some(Source {
        app: labels.get(APP)?.clone(),
        service: labels.get(SERVICE)?.clone(),
        release: labels.get(RELEASE).and_then(|r| r.parse().ok()),
        container: name.trim_start_matches('/').to_owned(),
    })
}

/// Splits Docker's `2026-12-03T12:00:00.123456789Z line` into Unix ms and the line.
pub fn split_timestamp(line: &str) -> Option<(i64, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let at = stamp.parse::<jiff::Timestamp>().ok()?;
    Some((at.as_millisecond(), rest))
}

/// Where the collector got to in each container (Unix ms of its last line), by app.
#[derive(Default)]
struct Cursors(Mutex<HashMap<String, BTreeMap<String, i64>>>);

impl Cursors {
    fn load(store: &LogStore, app: &str) -> BTreeMap<String, i64> {
        std::fs::read(store.root.join(app).join("cursors.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn get(&self, store: &LogStore, app: &str, container: &str) -> Option<i64> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(app.to_owned())
            .or_insert_with(|| Self::load(store, app))
            .get(container)
            .copied()
    }

    fn advance(&self, app: &str, container: &str, at: i64) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = all
            .entry(app.to_owned())
            .or_default()
            .entry(container.to_owned())
            .or_insert(at);
        *cursor = (*cursor).max(at);
    }

    /// Writes an app's cursors (a temporary file renamed over the old one).
    fn save(&self, store: &LogStore, app: &str) {
        let cursors = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
            .cloned()
            .unwrap_or_default();
        let dir = store.root.join(app);
        let path = dir.join("cursors.json");
        let temporary = dir.join("cursors.json.new");
        let written = serde_json::to_vec(&cursors)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&temporary, bytes))
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(error) = written {
            tracing::warn!(%error, %app, "cannot save where the log collector got to");
        }
    }
}

/// How often batches are written.
const WRITE_EVERY: Duration = Duration::from_millis(200);

/// The collector worker, until `stop`; what it keeps also goes to each app's log host, when
/// `targets` names one (`host` names this server in those messages).
pub async fn collect(
    runtime: Arc<dyn ContainerRuntime>,
    store: Arc<LogStore>,
    agent_id: String,
    targets: crate::forward::Targets,
    host: String,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let forwarder = crate::forward::Forwarder::start(targets, host);
    let cursors = Arc::new(Cursors::default());
    let (sender, mut receiver) = mpsc::channel::<(String, LogRecord)>(10_000);
    let mut following: HashSet<String> = HashSet::new();
    let mut followers = tokio::task::JoinSet::new();
    let mut events = runtime.container_events(&[(AGENT, agent_id.as_str())]);
    // The containers running now (started before the agent, or before a restart of it).
    match runtime.list_containers(&[(AGENT, agent_id.as_str())]).await {
        Ok(containers) => {
            for container in containers
                .into_iter()
                .filter(|c| c.state == berth_runtime::ContainerState::Running)
            {
                if let Some(source) = source_of(&container.labels, &container.name)
                    && following.insert(container.id.clone())
                {
                    followers.spawn(follow(
                        runtime.clone(),
                        store.clone(),
                        cursors.clone(),
                        container.id,
                        source,
                        sender.clone(),
                    ));
                }
            }
        }
        Err(error) => report.retrying(error.to_string(), None),
    }
    report.running("keeping every container's output");
    let mut batch: BTreeMap<String, Vec<LogRecord>> = BTreeMap::new();
    let mut tick = tokio::time::interval(WRITE_EVERY);
    let mut prune_at = 0i64;
    loop {
        tokio::select! {
            () = &mut stop => {
                receiver.close();
                while let Ok((app, record)) = receiver.try_recv() {
                    batch.entry(app).or_default().push(record);
                }
                write(&store, &cursors, &forwarder, &mut batch);
                return;
            }
            Some((app, record)) = receiver.recv() => {
                batch.entry(app).or_default().push(record);
            }
            event = events.next() => match event {
                Some(Ok(event)) if event.action == ContainerAction::Start => {
                    // A restarted container is followed again, from where it was.
                    if let Some(source) = source_of(&event.labels, &event.name)
                        && following.insert(event.id.clone())
                    {
                        followers.spawn(follow(
                            runtime.clone(),
                            store.clone(),
                            cursors.clone(),
                            event.id,
                            source,
                            sender.clone(),
                        ));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    report.retrying(error.to_string(), None);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    events = runtime.container_events(&[(AGENT, agent_id.as_str())]);
                }
                None => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    events = runtime.container_events(&[(AGENT, agent_id.as_str())]);
                }
            },
            Some(done) = followers.join_next(), if !followers.is_empty() => {
                if let Ok(id) = done {
                    following.remove(&id);
                }
            }
            _ = tick.tick() => {
                write(&store, &cursors, &forwarder, &mut batch);
                let now = now_ms();
                if now >= prune_at {
                    prune_at = now + 600_000;
                    for app in store.apps() {
                        store.prune(&app, now);
                    }
                }
            }
        }
    }
}

fn write(
    store: &LogStore,
    cursors: &Cursors,
    forwarder: &crate::forward::Forwarder,
    batch: &mut BTreeMap<String, Vec<LogRecord>>,
) {
    for (app, mut records) in std::mem::take(batch) {
        records.sort_by_key(|r| r.at);
        forwarder.send(&app, &records);
        match store.append(&app, &records, now_ms()) {
            Ok(()) => {
                for record in &records {
                    cursors.advance(&app, &record.container, record.at);
                }
                cursors.save(store, &app);
            }
            Err(error) => tracing::warn!(%error, "container output was not kept"),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Follows one container's output from its cursor until it stops; returns its id.
async fn follow(
    runtime: Arc<dyn ContainerRuntime>,
    store: Arc<LogStore>,
    cursors: Arc<Cursors>,
    id: String,
    source: Source,
    sender: mpsc::Sender<(String, LogRecord)>,
) -> String {
    let cursor = cursors.get(&store, &source.app, &source.container);
    let query = LogQuery {
        tail: None,
        follow: true,
        // Docker takes whole seconds; lines up to the cursor are skipped below.
        since: cursor.map(|ms| ms / 1000),
        timestamps: true,
    };
    let mut stream = runtime.logs(&id, &query);
    let mut pending: HashMap<&'static str, String> = HashMap::new();
    while let Some(Ok(chunk)) = stream.next().await {
        let name = match chunk.stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        };
        let buffer = pending.entry(name).or_default();
        buffer.push_str(&String::from_utf8_lossy(&chunk.data));
        while let Some(end) = buffer.find('\n') {
            let raw: String = buffer.drain(..=end).collect();
            let raw = raw.trim_end_matches(['\n', '\r']);
            let (at, line) = split_timestamp(raw).unwrap_or((now_ms(), raw));
            if cursor.is_some_and(|c| at <= c) {
                continue;
            }
            let record = LogRecord {
                at,
                service: source.service.clone(),
                release: source.release,
                container: source.container.clone(),
                stream: name.to_owned(),
                line: line.to_owned(),
            };
            if sender.send((source.app.clone(), record)).await.is_err() {
                return id;
            }
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_become_unix_milliseconds() {
        assert_eq!(
            split_timestamp("2026-12-03T12:00:00.123456789Z hello world"),
            Some((1_796_299_200_123, "hello world"))
        );
        assert_eq!(split_timestamp("no timestamp here"), None);
    }
}
