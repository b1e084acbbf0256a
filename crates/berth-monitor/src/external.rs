//! `[monitors.NAME]`: checks of an app from outside its containers (its public URL, a TCP
//! port, a DNS name), run by the agent at each monitor's interval, with Gatus' semantics: the
//! alert fires after `failure_threshold` failed checks in a row and resolves after
//! `success_threshold` passed ones (told to the channels when `send_on_resolved`); an HTTPS
//! certificate expiring within `certificate_expiry` is an alert of its own.

use crate::alerts::{Alerts, Signal};
use berth_engine::Engine;
use berth_manifest::{Monitor, MonitorCheck, Severity};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Gatus' rule for one monitor: counts in a row, and whether its alert fires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatusState {
    pub failures_in_row: u32,
    pub successes_in_row: u32,
    pub triggered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Triggered,
    Resolved,
}

impl GatusState {
    /// Counts one check; says when the alert starts or stops firing.
    pub fn observe(
        &mut self,
        passed: bool,
        failure_threshold: u32,
        success_threshold: u32,
    ) -> Option<Transition> {
        if passed {
            self.failures_in_row = 0;
            self.successes_in_row = self.successes_in_row.saturating_add(1);
            if self.triggered && self.successes_in_row >= success_threshold {
                self.triggered = false;
                return Some(Transition::Resolved);
            }
        } else {
            self.successes_in_row = 0;
            self.failures_in_row = self.failures_in_row.saturating_add(1);
            if !self.triggered && self.failures_in_row >= failure_threshold {
                self.triggered = true;
                return Some(Transition::Triggered);
            }
        }
        None
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// `None` when it passed, else why not.
    pub failure: Option<String>,
    pub latency: Duration,
    /// HTTPS: when the server's certificate expires (Unix seconds).
    pub certificate_not_after: Option<i64>,
}

/// The value at a dot-separated path of a JSON document, as text (`"ok"` → `ok`).
pub fn json_at(document: &serde_json::Value, path: &str) -> Option<String> {
    let mut value = document;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        value = match value {
            serde_json::Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            other => other.get(part)?,
        };
    }
    Some(match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Runs one check.
pub async fn run_check(
    check: &MonitorCheck,
    timeout: Duration,
    http: &reqwest::Client,
) -> CheckResult {
    let started = Instant::now();
    let (failure, certificate_not_after) =
        match tokio::time::timeout(timeout, check_once(check, http)).await {
            Ok(outcome) => outcome,
            Err(_) => (
                Some(format!(
                    "no answer within {}",
                    berth_manifest::units::format_duration(timeout)
                )),
                None,
            ),
        };
    CheckResult {
        failure,
        latency: started.elapsed(),
        certificate_not_after,
    }
}

async fn check_once(check: &MonitorCheck, http: &reqwest::Client) -> (Option<String>, Option<i64>) {
    match check {
        MonitorCheck::Http {
            url,
            status,
            body,
            json_path,
            json_equals,
        } => {
            let response = match http.get(url).send().await {
                Ok(response) => response,
                Err(error) => return (Some(describe_http_error(&error)), None),
            };
            let certificate = response
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|info| info.peer_certificate())
                .and_then(berth_tls::certificate_not_after);
            let code = response.status().as_u16();
            if !status.contains(code) {
                return (
                    Some(format!("answered {code}, expected {status}")),
                    certificate,
                );
            }
            if body.is_none() && json_path.is_none() {
                return (None, certificate);
            }
            // At most 1 MiB of body is read.
            let mut text = Vec::new();
            let mut response = response;
            while let Ok(Some(chunk)) = response.chunk().await {
                text.extend_from_slice(&chunk);
                if text.len() > 1 << 20 {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&text);
            if let Some(wanted) = body
                && !text.contains(wanted.as_str())
            {
                return (
                    Some(format!("the body does not contain `{wanted}`")),
                    certificate,
                );
            }
            if let (Some(path), Some(wanted)) = (json_path, json_equals) {
                let found = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|doc| json_at(&doc, path));
                match found {
                    Some(value) if value == *wanted => {}
                    Some(value) => {
                        return (
                            Some(format!("`{path}` is `{value}`, expected `{wanted}`")),
                            certificate,
                        );
                    }
                    None => {
                        return (
                            Some(format!("the body is not JSON with `{path}`")),
                            certificate,
                        );
                    }
                }
            }
            (None, certificate)
        }
        MonitorCheck::Tcp { host, port } => {
            match tokio::net::TcpStream::connect((host.as_str(), *port)).await {
                Ok(_) => (None, None),
                Err(error) => (Some(format!("TCP connect to {host}:{port}: {error}")), None),
            }
        }
        MonitorCheck::Dns { name, addresses } => {
            match tokio::net::lookup_host((name.as_str(), 0)).await {
                Ok(found) => {
                    let found: Vec<String> = found.map(|a| a.ip().to_string()).collect();
                    if found.is_empty() {
                        (Some(format!("{name} resolves to nothing")), None)
                    } else if !addresses.is_empty() && !found.iter().any(|f| addresses.contains(f))
                    {
                        (
                            Some(format!(
                                "{name} resolves to {}, not {}",
                                found.join(", "),
                                addresses.join(" or ")
                            )),
                            None,
                        )
                    } else {
                        (None, None)
                    }
                }
                Err(error) => (Some(format!("{name} does not resolve: {error}")), None),
            }
        }
    }
}

/// reqwest's error without the URL (a query may hold a token), with its cause.
fn describe_http_error(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_redirect() {
        "too many redirects"
    } else {
        "the request failed"
    };
    let mut cause = std::error::Error::source(error);
    let mut text = what.to_owned();
    // The innermost cause names the problem (DNS, refused, certificate).
    while let Some(inner) = cause {
        if std::error::Error::source(inner).is_none() {
            text.push_str(&format!(": {inner}"));
        }
        cause = std::error::Error::source(inner);
    }
    text
}

/// The last result of each monitor, by (app, name), for `berth status`.
#[derive(Debug, Default)]
pub struct MonitorBoard(Mutex<HashMap<(String, String), MonitorView>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorView {
    pub check: String,
    pub at: i64,
    pub failure: Option<String>,
    pub latency_ms: u64,
    pub state: GatusState,
}

impl MonitorBoard {
    pub fn all(&self) -> Vec<((String, String), MonitorView)> {
        let mut all: Vec<_> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn set(&self, key: (String, String), view: MonitorView) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, view);
    }

    fn retain(&self, keep: &HashMap<(String, String), Monitor>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| keep.contains_key(k));
    }
}

/// How often the monitors of the live releases are read again.
const REFRESH_EVERY: Duration = Duration::from_secs(15);

/// The monitors worker, until `stop`.
pub async fn watch(
    engine: Arc<Engine>,
    alerts: Arc<Alerts>,
    board: Arc<MonitorBoard>,
    uptime: Arc<crate::uptime::Uptime>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let http = match reqwest::Client::builder()
        .user_agent(concat!("berth-monitor/", env!("CARGO_PKG_VERSION")))
        .tls_info(true)
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            report.failed_run(format!("cannot set up an HTTPS client: {error}"));
            return;
        }
    };
    let mut changes = engine.subscribe_release_changes();
    let mut monitors: HashMap<(String, String), Monitor> = HashMap::new();
    let mut states: HashMap<(String, String), GatusState> = HashMap::new();
    let mut next_run: HashMap<(String, String), Instant> = HashMap::new();
    let mut running: JoinSet<((String, String), CheckResult)> = JoinSet::new();
    let mut in_flight: std::collections::HashSet<(String, String)> = Default::default();
    // A monitor whose alert fired before the agent restarted can still resolve.
    for alert in engine.store().firing_alerts().unwrap_or_default() {
        if alert.rule == "monitor_failing"
            && let Some((app, name)) = alert.subject.split_once("/monitor ")
        {
            states.insert(
                (app.to_owned(), name.to_owned()),
                GatusState {
                    triggered: true,
                    ..GatusState::default()
                },
            );
        }
    }
    let mut refresh_at = Instant::now();
    loop {
        let now = Instant::now();
        if now >= refresh_at {
            refresh_at = now + REFRESH_EVERY;
            monitors = live_monitors(&engine);
            for ((app, name), state) in &states {
                if state.triggered && !monitors.contains_key(&(app.clone(), name.clone())) {
                    alerts.signal(Signal::Gone {
                        rule: "monitor_failing".into(),
                        app: Some(app.clone()),
                        subject: format!("{app}/monitor {name}"),
                        why: "the monitor is no longer in the live release".into(),
                    });
                }
            }
            states.retain(|k, _| monitors.contains_key(k));
            next_run.retain(|k, _| monitors.contains_key(k));
            board.retain(&monitors);
            if monitors.is_empty() {
                report.idle(None, Some("no [monitors] in any live release".into()));
            } else {
                report.running(format!(
                    "{} of the live releases",
                    berth_core::progress::counted(monitors.len(), "monitor")
                ));
            }
        }
        for (key, monitor) in &monitors {
            let due = next_run.get(key).is_none_or(|at| *at <= now);
            if due && !in_flight.contains(key) {
                next_run.insert(key.clone(), now + monitor.interval);
                in_flight.insert(key.clone());
                let (key, check, timeout, http) = (
                    key.clone(),
                    monitor.check.clone(),
                    monitor.timeout,
                    http.clone(),
                );
                running.spawn(async move { (key, run_check(&check, timeout, &http).await) });
            }
        }
        tokio::select! {
            () = &mut stop => return,
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok((key, result)) = done else { continue };
                in_flight.remove(&key);
                let Some(monitor) = monitors.get(&key) else { continue };
                uptime.record(
                    format!("{}/monitor {}", key.0, key.1),
                    result.failure.is_none(),
                    result.latency,
                );
                let state = states.entry(key.clone()).or_default();
                for signal in signals_for(&key, monitor, state, &result, berth_state::now_ms()) {
                    alerts.signal(signal);
                }
                board.set(key.clone(), MonitorView {
                    check: monitor.check.describe(),
                    at: berth_state::now_ms(),
                    failure: result.failure.clone(),
                    latency_ms: result.latency.as_millis() as u64,
                    state: state.clone(),
                });
            }
            change = changes.recv() => {
                if !matches!(change, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    refresh_at = Instant::now();
                }
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// What one check's result means for the alerts.
pub fn signals_for(
    (app, name): &(String, String),
    monitor: &Monitor,
    state: &mut GatusState,
    result: &CheckResult,
    now_ms: i64,
) -> Vec<Signal> {
    let subject = format!("{app}/monitor {name}");
    let mut signals = Vec::new();
    match state.observe(
        result.failure.is_none(),
        monitor.failure_threshold,
        monitor.success_threshold,
    ) {
        Some(Transition::Triggered) => signals.push(Signal::Condition {
            rule: "monitor_failing",
            app: Some(app.clone()),
            subject: subject.clone(),
            problem: Some((
                Severity::Critical,
                format!(
                    "monitor {name} of {app} fails ({}, {} checks in a row): {}",
                    monitor.check.describe(),
                    state.failures_in_row,
                    result.failure.as_deref().unwrap_or("no detail")
                ),
            )),
            notify_resolved: monitor.send_on_resolved,
        }),
        Some(Transition::Resolved) => signals.push(Signal::Condition {
            rule: "monitor_failing",
            app: Some(app.clone()),
            subject: subject.clone(),
            problem: None,
            notify_resolved: monitor.send_on_resolved,
        }),
        None => {}
    }
    if !monitor.certificate_expiry.is_zero()
        && let Some(not_after) = result.certificate_not_after
    {
        let left = not_after - now_ms / 1000;
        let within = i64::try_from(monitor.certificate_expiry.as_secs()).unwrap_or(i64::MAX);
        signals.push(Signal::Condition {
            rule: "monitor_certificate",
            app: Some(app.clone()),
            subject,
            problem: (left < within).then(|| {
                (
                    if left <= 0 {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    format!(
                        "the certificate {} serves expires in {} days ({})",
                        monitor.check.describe(),
                        left.div_euclid(86_400),
                        berth_core::locks::format_time(not_after * 1000)
                    ),
                )
            }),
            notify_resolved: monitor.send_on_resolved,
        });
    }
    signals
}

/// Every monitor of every live release, by (app, name).
fn live_monitors(engine: &Engine) -> HashMap<(String, String), Monitor> {
    let mut monitors = HashMap::new();
    for (app, manifest) in crate::live::manifests(engine) {
        for monitor in manifest.monitors {
            monitors.insert((app.clone(), monitor.name.clone()), monitor);
        }
    }
    monitors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gatus' semantics as a table: each row is a check result, the transition it causes,
    /// and the counts after it (failure threshold 3, success threshold 2).
    #[test]
    fn gatus_thresholds_trigger_and_resolve_once() {
        let rows: [(bool, Option<Transition>, u32, u32); 10] = [
            (false, None, 1, 0),
            (false, None, 2, 0),
            (true, None, 0, 1),
            (false, None, 1, 0),
            (false, None, 2, 0),
            (false, Some(Transition::Triggered), 3, 0),
            (false, None, 4, 0),
            (true, None, 0, 1),
            (true, Some(Transition::Resolved), 0, 2),
            (true, None, 0, 3),
        ];
        let mut state = GatusState::default();
        for (i, (passed, transition, failures, successes)) in rows.iter().enumerate() {
            assert_eq!(state.observe(*passed, 3, 2), *transition, "row {i}");
            assert_eq!(
                (state.failures_in_row, state.successes_in_row),
                (*failures, *successes),
                "row {i}"
            );
        }
    }

    fn monitor(send_on_resolved: bool) -> Monitor {
        Monitor {
            name: "site".into(),
            check: MonitorCheck::Tcp {
                host: "shop.example".into(),
                port: 443,
            },
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            failure_threshold: 2,
            success_threshold: 1,
            send_on_resolved,
            certificate_expiry: Duration::from_secs(14 * 86_400),
        }
    }

    fn result(failure: Option<&str>, not_after: Option<i64>) -> CheckResult {
        CheckResult {
            failure: failure.map(str::to_owned),
            latency: Duration::from_millis(20),
            certificate_not_after: not_after,
        }
    }

    #[test]
    fn a_monitor_fires_through_the_alert_rules_once_and_resolves_quietly_when_asked() {
        let key = ("shop".to_owned(), "site".to_owned());
        let mut rules = crate::alerts::Rules::default();
        let mut state = GatusState::default();
        let quiet = monitor(false);
        let mut changes = Vec::new();
        // Check results come from an injected clock: one a minute.
        for (minute, failure) in [Some("refused"), Some("refused"), Some("refused"), None]
            .into_iter()
            .enumerate()
        {
            let now = minute as i64 * 60_000;
            for signal in signals_for(&key, &quiet, &mut state, &result(failure, None), now) {
                changes.extend(rules.on_signal(&signal, now));
            }
        }
        let seen: Vec<(crate::alerts::Action, bool)> =
            changes.iter().map(|c| (c.action, c.notify)).collect();
        assert_eq!(
            seen,
            [
                (crate::alerts::Action::Fire, true),
                (crate::alerts::Action::Resolve, false)
            ],
            "fires once after 2 failures, resolves after 1 pass without telling"
        );
        assert!(
            changes[0].summary.contains("TCP shop.example:443"),
            "{}",
            changes[0].summary
        );
        assert!(changes[0].summary.contains("2 checks in a row): refused"));
    }

    #[test]
    fn a_certificate_near_expiry_is_its_own_alert() {
        let key = ("shop".to_owned(), "site".to_owned());
        let mut state = GatusState::default();
        let now_s = 1_000 * 86_400;
        let soon = signals_for(
            &key,
            &monitor(true),
            &mut state,
            &result(None, Some(now_s + 3 * 86_400)),
            now_s * 1000,
        );
        assert!(
            matches!(
                &soon[..],
                [Signal::Condition { rule: "monitor_certificate", problem: Some((Severity::Warning, text)), .. }]
                    if text.contains("expires in 3 days")
            ),
            "{soon:?}"
        );
        let later = signals_for(
            &key,
            &monitor(true),
            &mut state,
            &result(None, Some(now_s + 60 * 86_400)),
            now_s * 1000,
        );
        assert!(
            matches!(&later[..], [Signal::Condition { problem: None, .. }]),
            "{later:?}"
        );
    }

    #[test]
    fn json_paths_reach_into_objects_and_arrays() {
        let doc: serde_json::Value = serde_json::from_str(
            r#"{"status":"ok","checks":{"db":{"up":true}},"nodes":[{"name":"a"}]}"#,
        )
        .unwrap();
        assert_eq!(json_at(&doc, "status").as_deref(), Some("ok"));
        assert_eq!(json_at(&doc, "checks.db.up").as_deref(), Some("true"));
        assert_eq!(json_at(&doc, "nodes.0.name").as_deref(), Some("a"));
        assert_eq!(json_at(&doc, "checks.cache"), None);
    }
}
