//! Uptime history: every probe of a service (up while any of its containers is healthy) and
//! every `[monitors]` check is a sample, buffered here and written in one transaction every
//! 15 s (`berth-state` keeps them raw for 48 hours, in minutes for 14 days, in hours for 90);
//! `berth uptime` reads availability over 24 hours, 7 and 30 days, latency percentiles, and
//! the incidents from the alert log. It is in the state file, so a restart keeps it.

use berth_api::{Incident, SubjectUptime, UptimeAnswer};
use berth_state::{Store, UptimeSample};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Samples waiting to be written.
#[derive(Default)]
pub struct Uptime {
    buffer: Mutex<Vec<UptimeSample>>,
}

/// At most this many samples wait; beyond it (the state file is stuck) the oldest go.
const BUFFER_MAX: usize = 100_000;

impl Uptime {
    pub fn record(&self, subject: String, up: bool, latency: Duration) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if buffer.len() >= BUFFER_MAX {
            buffer.remove(0);
        }
        buffer.push(UptimeSample {
            subject,
            at: berth_state::now_ms(),
            up,
            latency_ms: i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
        });
    }

    fn take(&self) -> Vec<UptimeSample> {
        std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes what waits (and prunes what is past keeping).
    pub fn flush(&self, store: &Store) -> Result<usize, berth_state::StateError> {
        let batch = self.take();
        match store.add_uptime_samples(&batch, berth_state::now_ms()) {
            Ok(()) => Ok(batch.len()),
            Err(error) => {
                // Kept for the next try, in front of what came since.
                let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
                let newer = std::mem::take(&mut *buffer);
                *buffer = batch;
                buffer.extend(newer);
                Err(error)
            }
        }
    }
}

pub const FLUSH_EVERY: Duration = Duration::from_secs(15);

/// The writer worker, until `stop` (it writes once more on the way out).
pub async fn flusher(
    store: Arc<Store>,
    uptime: Arc<Uptime>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let stopping = tokio::select! {
            () = &mut stop => true,
            () = tokio::time::sleep(FLUSH_EVERY) => false,
        };
        let (store, uptime) = (store.clone(), uptime.clone());
        match tokio::task::spawn_blocking(move || uptime.flush(&store)).await {
            Ok(Ok(written)) => report.idle(
                Some(berth_state::now_ms() + FLUSH_EVERY.as_millis() as i64),
                Some(format!("{written} samples written")),
            ),
            Ok(Err(error)) => {
                report.failed_run(format!("cannot write the uptime history: {error}"))
            }
            Err(error) => report.failed_run(format!("the uptime writer stopped: {error}")),
        }
        if stopping {
            return;
        }
    }
}

/// The rules whose alerts count as incidents of an app.
const INCIDENT_RULES: [&str; 3] = ["service_down", "monitor_failing", "crash_loop"];

/// `berth uptime`: each subject of `app` (or of every app) and the app's incidents.
pub fn report(
    store: &Store,
    app: Option<&str>,
    now: i64,
) -> Result<UptimeAnswer, berth_state::StateError> {
    let day = 86_400_000;
    let mut subjects = Vec::new();
    for subject in store.uptime_subjects(app)? {
        let share = |w: &berth_state::UptimeWindow| {
            (w.checks > 0).then(|| 100.0 * w.ups as f64 / w.checks as f64)
        };
        let last_day = store.uptime_since(&subject, now - day, now)?;
        let week = store.uptime_since(&subject, now - 7 * day, now)?;
        let month = store.uptime_since(&subject, now - 30 * day, now)?;
        subjects.push(SubjectUptime {
            subject,
            day_percent: share(&last_day),
            week_percent: share(&week),
            month_percent: share(&month),
            checks_day: last_day.checks,
            p50_ms: last_day.p50_ms,
            p95_ms: last_day.p95_ms,
        });
    }
    let incidents = store
        .recent_alerts(1000, app)?
        .into_iter()
        .filter(|a| a.app.is_some() && INCIDENT_RULES.contains(&a.rule.as_str()))
        .filter(|a| a.started_at >= now - 30 * day)
        .map(|a| Incident {
            subject: a.subject,
            rule: a.rule,
            started_at: a.started_at,
            ended_at: a.resolved_at,
            cause: a.summary,
        })
        .collect();
    Ok(UptimeAnswer {
        subjects,
        incidents,
    })
}
