//! berth's background work, named: the backup scheduler, certificate renewal, the
//! reconciler and every later monitor run as workers of one [`Workers`] registry. Each
//! reports its state through a [`Reporter`]; `berth status --workers` lists them; at
//! shutdown all are told to stop and awaited, for a bounded time, instead of being dropped.
//!
//! Must not know what any worker does.

use berth_api::WorkerInfo;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinSet;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking worker leaves plain data behind: still fine to read.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One worker's entry, shared between the list and its [`Reporter`].
type Entry = Arc<Mutex<WorkerInfo>>;
type List = Arc<Mutex<Vec<Entry>>>;

/// The registry: spawns workers, lists them, stops them.
pub struct Workers {
    listed: List,
    tasks: Mutex<JoinSet<()>>,
    stop: watch::Sender<bool>,
}

impl Default for Workers {
    fn default() -> Self {
        Self {
            listed: Arc::default(),
            tasks: Mutex::new(JoinSet::new()),
            stop: watch::channel(false).0,
        }
    }
}

/// Resolves once the registry is told to stop.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    pub async fn stopped(mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

/// A worker's handle on its own entry in the list.
#[derive(Clone)]
pub struct Reporter {
    info: Entry,
    /// Removed from the list when done (a one-off job), instead of staying as finished.
    transient: Option<List>,
}

impl Reporter {
    fn update(&self, change: impl FnOnce(&mut WorkerInfo)) {
        change(&mut lock(&self.info));
    }

    /// At work now (`detail`: on what).
    pub fn running(&self, detail: impl Into<String>) {
        self.update(|w| {
            w.state = "running".into();
            w.detail = Some(detail.into());
            w.last_run = Some(now_ms());
        });
    }

    /// A run ended well; waiting until `next` (if known).
    pub fn idle(&self, next: Option<i64>, detail: Option<String>) {
        self.update(|w| {
            if w.state == "running" {
                w.runs += 1;
            }
            w.state = "idle".into();
            w.detail = detail;
            w.next_run = next;
        });
    }

    /// A run failed and will be tried again at `next`.
    pub fn retrying(&self, error: impl Into<String>, next: Option<i64>) {
        self.update(|w| {
            w.state = "retrying".into();
            w.last_error = Some(error.into());
            w.next_run = next;
        });
    }

    /// A run failed; the worker goes on (its next run may do better).
    pub fn failed_run(&self, error: impl Into<String>) {
        self.update(|w| {
            w.runs += 1;
            w.last_error = Some(error.into());
        });
    }
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` as a worker named `name`, listed until the agent stops.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, work: F)
    where
        F: FnOnce(Reporter, Stop) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start(name.into(), false, work);
    }

    /// Runs a one-off job (a scheduled backup): listed while it runs, awaited at shutdown.
    pub fn spawn_job<F, Fut>(&self, name: impl Into<String>, work: F)
    where
        F: FnOnce(Reporter, Stop) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start(name.into(), true, work);
    }

    fn start<F, Fut>(&self, name: String, transient: bool, work: F)
    where
        F: FnOnce(Reporter, Stop) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let info = Arc::new(Mutex::new(WorkerInfo {
            name,
            state: "running".into(),
            detail: None,
            started_at: now_ms(),
            last_run: None,
            next_run: None,
            last_error: None,
            runs: 0,
        }));
        lock(&self.listed).push(info.clone());
        let reporter = Reporter {
            info: info.clone(),
            transient: transient.then(|| self.listed.clone()),
        };
        let future = work(reporter.clone(), Stop(self.stop.subscribe()));
        lock(&self.tasks).spawn(async move {
            future.await;
            match &reporter.transient {
                Some(listed) => lock(listed).retain(|w| !Arc::ptr_eq(w, &info)),
                None => reporter.update(|w| {
                    w.state = "finished".into();
                    w.next_run = None;
                }),
            }
        });
    }

    /// Every worker, in the order they started.
    pub fn list(&self) -> Vec<WorkerInfo> {
        lock(&self.listed).iter().map(|w| lock(w).clone()).collect()
    }

    /// Tells every worker to stop and waits for them, at most `grace`; returns the names of
    /// those still at work then (they are dropped).
    pub async fn shutdown(&self, grace: Duration) -> Vec<String> {
        let _ = self.stop.send(true);
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let finished =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_ok() {
            return Vec::new();
        }
        tasks.abort_all();
        lock(&self.listed)
            .iter()
            .map(|w| lock(w).clone())
            .filter(|w| w.state != "finished")
            .map(|w| w.name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn workers_report_are_listed_and_are_awaited_at_shutdown() {
        let workers = Workers::new();
        let (ran, mut ran_rx) = tokio::sync::mpsc::channel(1);
        workers.spawn("schedule", move |report, stop| async move {
            report.running("backup shop/db");
            report.idle(Some(42), Some("next: shop/db".into()));
            let _ = ran.send(()).await;
            stop.stopped().await;
        });
        ran_rx.recv().await.unwrap();
        let listed = workers.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "schedule");
        assert_eq!(listed[0].state, "idle");
        assert_eq!(listed[0].runs, 1);
        assert_eq!(listed[0].next_run, Some(42));
        assert!(workers.shutdown(Duration::from_secs(5)).await.is_empty());
        assert_eq!(workers.list()[0].state, "finished");
    }

    #[tokio::test]
    async fn a_job_leaves_the_list_when_done_and_a_stuck_worker_is_named_at_shutdown() {
        let workers = Workers::new();
        let (done, mut done_rx) = tokio::sync::mpsc::channel(1);
        workers.spawn_job("backup shop/db", move |_, _| async move {
            let _ = done.send(()).await;
        });
        done_rx.recv().await.unwrap();
        tokio::task::yield_now().await;
        for _ in 0..100 {
            if workers.list().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(workers.list().is_empty());

        workers.spawn("stubborn", |report, _stop| async move {
            report.retrying("Docker is not reachable", None);
            std::future::pending::<()>().await;
        });
        let left = workers.shutdown(Duration::from_millis(100)).await;
        assert_eq!(left, ["stubborn"]);
    }
}
