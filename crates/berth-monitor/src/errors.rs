//! An app's share of errors: of its answers, 5xx ones, from the proxy's own counters, and of
//! its log lines, those at error level or above (JSON or logfmt `level`), from the log store's
//! counts (no log parsing here). An alert when at least 10 % of at least 20 over the last 5
//! minutes were errors, resolved once the share is under 5 % (or it goes quiet).

use crate::alerts::{Alerts, Signal};
use berth_engine::Engine;
use berth_manifest::Severity;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

pub const WINDOW: Duration = Duration::from_secs(5 * 60);
pub const FIRE_PERCENT: f64 = 10.0;
pub const RESOLVE_PERCENT: f64 = 5.0;
pub const MIN_REQUESTS: u64 = 20;
const CHECK_EVERY: Duration = Duration::from_secs(15);

/// What an error share is counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The proxy's answers: 5xx of all.
    Responses,
    /// The app's log lines: error level or above of all.
    LogLines,
}

impl Source {
    pub fn rule(self) -> &'static str {
        match self {
            Source::Responses => "error_rate",
            Source::LogLines => "log_errors",
        }
    }

    fn subject(self, app: &str) -> String {
        match self {
            Source::Responses => format!("{app} 5xx share"),
            Source::LogLines => format!("{app} error log lines"),
        }
    }

    fn problem(self, app: &str, share: f64, count: u64) -> String {
        let window = berth_manifest::units::format_duration(WINDOW);
        match self {
            Source::Responses => format!(
                "{app} answered {share:.0}% of its last {count} requests with a server error (5xx) over {window}; `berth logs` shows why"
            ),
            Source::LogLines => format!(
                "{share:.0}% of the {count} lines {app} logged over {window} were at error level or above; `berth logs SERVICE --app {app} --level error` shows them"
            ),
        }
    }
}

/// Each app's counters over the window, and whether its alert fires.
pub struct ErrorRates {
    source: Source,
    samples: HashMap<String, VecDeque<(i64, u64, u64)>>,
    /// When each app was first observed: too little traffic resolves an alert only once a
    /// whole window was watched (after a restart, the first minutes say nothing).
    first_seen: HashMap<String, i64>,
    firing: HashMap<String, bool>,
}

impl ErrorRates {
    pub fn new(source: Source) -> Self {
        Self {
            source,
            samples: HashMap::new(),
            first_seen: HashMap::new(),
            firing: HashMap::new(),
        }
    }

    /// Takes up the apps whose alert fired before the agent restarted, so it can resolve.
    pub fn resume<'a>(&mut self, apps: impl IntoIterator<Item = &'a str>) {
        for app in apps {
            self.firing.insert(app.to_owned(), true);
        }
    }

    /// Takes an app's counters at `now` (all, errors, since the agent started); says what
    /// changes.
    pub fn observe(&mut self, app: &str, now: i64, total: u64, errors: u64) -> Option<Signal> {
        let window = i64::try_from(WINDOW.as_millis()).unwrap_or(i64::MAX);
        // The counters start at zero with the agent, or when an app is first routed or logs
        // (at most one check ago): an app seen for the first time counts from zero.
        let samples = self
            .samples
            .entry(app.to_owned())
            .or_insert_with(|| VecDeque::from([(now, 0, 0)]));
        samples.push_back((now, total, errors));
        while samples.len() > 1 && samples.front().is_some_and(|(t, _, _)| now - t > window) {
            samples.pop_front();
        }
        let (_, first_total, first_errors) = *samples.front()?;
        let requests = total.saturating_sub(first_total);
        let failed = errors.saturating_sub(first_errors);
        let share = if requests == 0 {
            0.0
        } else {
            100.0 * failed as f64 / requests as f64
        };
        let watched_a_window =
            now - *self.first_seen.entry(app.to_owned()).or_insert(now) >= window;
        let firing = self.firing.entry(app.to_owned()).or_default();
        if !*firing && requests >= MIN_REQUESTS && share >= FIRE_PERCENT {
            *firing = true;
            return Some(self.condition(app, Some(self.source.problem(app, share, requests))));
        }
        let calm = if requests < MIN_REQUESTS {
            watched_a_window
        } else {
            share < RESOLVE_PERCENT
        };
        if *firing && calm {
            *firing = false;
            return Some(self.condition(app, None));
        }
        None
    }

    fn condition(&self, app: &str, problem: Option<String>) -> Signal {
        Signal::Condition {
            rule: self.source.rule(),
            app: Some(app.to_owned()),
            subject: self.source.subject(app),
            problem: problem.map(|p| (Severity::Warning, p)),
            notify_resolved: true,
        }
    }
}

/// An app's log lines and error-level ones since the agent started (the log store counts).
pub type LogLineCounts = Arc<dyn Fn(&str) -> (u64, u64) + Send + Sync>;

/// The error-rate worker (answers and log lines), until `stop`.
pub async fn watch(
    engine: Arc<Engine>,
    proxy: Arc<berth_proxy::Proxy>,
    log_lines: LogLineCounts,
    alerts: Arc<Alerts>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut answers = ErrorRates::new(Source::Responses);
    let mut lines = ErrorRates::new(Source::LogLines);
    if let Ok(firing) = engine.store().firing_alerts() {
        for rates in [&mut answers, &mut lines] {
            let rule = rates.source.rule();
            rates.resume(
                firing
                    .iter()
                    .filter(|a| a.rule == rule)
                    .filter_map(|a| a.app.as_deref()),
            );
        }
    }
    loop {
        let now = berth_state::now_ms();
        for app in engine.store().apps().unwrap_or_default() {
            let counts = proxy.metrics().requests_by_class(&app.name);
            let total: u64 = counts.iter().sum();
            let (logged, errors) = log_lines(&app.name);
            for signal in [
                answers.observe(&app.name, now, total, counts[5]),
                lines.observe(&app.name, now, logged, errors),
            ]
            .into_iter()
            .flatten()
            {
                alerts.signal(signal);
            }
        }
        report.idle(
            Some(now + i64::try_from(CHECK_EVERY.as_millis()).unwrap_or(30_000)),
            None,
        );
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fires(signal: &Option<Signal>) -> Option<bool> {
        match signal {
            Some(Signal::Condition { problem, .. }) => Some(problem.is_some()),
            _ => None,
        }
    }

    #[test]
    fn a_share_of_5xx_over_the_window_fires_once_and_resolves_with_hysteresis() {
        let mut rates = ErrorRates::new(Source::Responses);
        let minute = 60_000;
        assert_eq!(fires(&rates.observe("shop", 0, 0, 0)), None);
        assert_eq!(
            fires(&rates.observe("shop", minute, 10, 5)),
            None,
            "too few requests to judge"
        );
        assert_eq!(
            fires(&rates.observe("shop", 2 * minute, 100, 15)),
            Some(true),
            "15 %"
        );
        assert_eq!(
            fires(&rates.observe("shop", 3 * minute, 200, 25)),
            None,
            "once"
        );
        assert_eq!(
            fires(&rates.observe("shop", 5 * minute, 600, 35)),
            None,
            "5.8 % over the window: above the resolve mark, still firing"
        );
        // The window moves on: from minute 3 to 8, 900 requests of which 18 failed (2 %).
        assert_eq!(
            fires(&rates.observe("shop", 8 * minute, 1100, 43)),
            Some(false)
        );
        assert_eq!(fires(&rates.observe("other", 0, 0, 0)), None);
    }

    #[test]
    fn traffic_that_stops_resolves_and_a_quiet_app_never_fires() {
        let mut rates = ErrorRates::new(Source::Responses);
        let minute = 60_000;
        rates.observe("shop", 0, 0, 0);
        assert_eq!(fires(&rates.observe("shop", minute, 50, 50)), Some(true));
        assert_eq!(
            fires(&rates.observe("shop", 7 * minute, 50, 50)),
            Some(false),
            "no requests in the window"
        );
        let mut quiet = ErrorRates::new(Source::Responses);
        for m in 0..20 {
            assert_eq!(
                fires(&quiet.observe("shop", m * minute, m as u64, m as u64 / 2)),
                None
            );
        }
    }

    #[test]
    fn an_app_first_seen_counts_from_zero() {
        let mut rates = ErrorRates::new(Source::Responses);
        assert_eq!(fires(&rates.observe("shop", 15_000, 40, 30)), Some(true));
    }

    #[test]
    fn error_log_lines_fire_their_own_rule_and_a_resumed_alert_resolves() {
        let mut lines = ErrorRates::new(Source::LogLines);
        lines.observe("shop", 0, 0, 0);
        match lines.observe("shop", 60_000, 100, 30) {
            Some(Signal::Condition {
                rule,
                subject,
                problem: Some((_, summary)),
                ..
            }) => {
                assert_eq!(rule, "log_errors");
                assert_eq!(subject, "shop error log lines");
                assert!(summary.contains("30% of the 100 lines"), "{summary}");
            }
            other => panic!("{other:?}"),
        }
        // After a restart the counters start again; what fired before must still resolve.
        let mut restarted = ErrorRates::new(Source::Responses);
        restarted.resume(["shop"]);
        assert_eq!(
            fires(&restarted.observe("shop", 0, 0, 0)),
            None,
            "no traffic seen yet says nothing"
        );
        assert_eq!(
            fires(&restarted.observe("shop", 60_000, 100, 0)),
            Some(false)
        );
        assert_eq!(fires(&restarted.observe("other", 60_000, 100, 0)), None);
    }
}
