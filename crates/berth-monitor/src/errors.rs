//! An app's share of 5xx answers, from the proxy's own counters (no log parsing): an alert
//! when at least 10 % of at least 20 requests over the last 5 minutes failed, resolved once
//! the share is under 5 % (or the traffic stops).

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

/// Each app's request counters over the window, and whether its alert fires.
#[derive(Default)]
pub struct ErrorRates {
    samples: HashMap<String, VecDeque<(i64, u64, u64)>>,
    firing: HashMap<String, bool>,
}

impl ErrorRates {
    /// Takes an app's counters at `now` (all answers, 5xx answers, since the agent started);
    /// says what changes.
    pub fn observe(&mut self, app: &str, now: i64, total: u64, errors: u64) -> Option<Signal> {
        let window = i64::try_from(WINDOW.as_millis()).unwrap_or(i64::MAX);
        // The proxy's counters start at zero with the agent, or when an app is first routed
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
        let firing = self.firing.entry(app.to_owned()).or_default();
        if !*firing && requests >= MIN_REQUESTS && share >= FIRE_PERCENT {
            *firing = true;
            return Some(condition(
                app,
                Some(format!(
                    "{app} answered {share:.0}% of its last {requests} requests with a server error (5xx) over {}; `berth logs` shows why",
                    berth_manifest::units::format_duration(WINDOW)
                )),
            ));
        }
        if *firing && (requests < MIN_REQUESTS || share < RESOLVE_PERCENT) {
            *firing = false;
            return Some(condition(app, None));
        }
        None
    }
}

fn condition(app: &str, problem: Option<String>) -> Signal {
    Signal::Condition {
        rule: "error_rate",
        app: Some(app.to_owned()),
        subject: format!("{app} 5xx share"),
        problem: problem.map(|p| (Severity::Warning, p)),
        notify_resolved: true,
    }
}

/// The error-rate worker, until `stop`.
pub async fn watch(
    engine: Arc<Engine>,
    proxy: Arc<berth_proxy::Proxy>,
    alerts: Arc<Alerts>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut rates = ErrorRates::default();
    loop {
        let now = berth_state::now_ms();
        for app in engine.store().apps().unwrap_or_default() {
            let counts = proxy.metrics().requests_by_class(&app.name);
            let total: u64 = counts.iter().sum();
            if let Some(signal) = rates.observe(&app.name, now, total, counts[5]) {
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
        let mut rates = ErrorRates::default();
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
        let mut rates = ErrorRates::default();
        let minute = 60_000;
        rates.observe("shop", 0, 0, 0);
        assert_eq!(fires(&rates.observe("shop", minute, 50, 50)), Some(true));
        assert_eq!(
            fires(&rates.observe("shop", 7 * minute, 50, 50)),
            Some(false),
            "no requests in the window"
        );
        let mut quiet = ErrorRates::default();
        for m in 0..20 {
            assert_eq!(
                fires(&quiet.observe("shop", m * minute, m as u64, m as u64 / 2)),
                None
            );
        }
    }

    #[test]
    fn an_app_first_seen_counts_from_zero() {
        let mut rates = ErrorRates::default();
        assert_eq!(fires(&rates.observe("shop", 15_000, 40, 30)), Some(true));
    }
}
