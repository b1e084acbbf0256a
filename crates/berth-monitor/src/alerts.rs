//! Alerts: what the monitors notice ([`Signal`]s) becomes alerts by built-in rules ([`Rules`]),
//! one per change of state: a state alert fires once and resolves once (never a message per
//! failed probe), and a one-off event (a replica replaced, an OOM kill) is sent once. Alerts
//! are recorded in the state file, so `berth alerts` lists them and a restarted agent does not
//! fire again what already fires. The [`deliver`] worker sends each to the app's
//! `[alerts.NAME]` channels (host alerts to every app's), with retries, reminders while an
//! alert keeps firing, and silence while the app is in maintenance.

use crate::channels::{self, Message, Sender};
use berth_engine::Engine;
use berth_manifest::{AlertChannel, Severity};
use berth_state::{AlertDelivery, AlertRecord, NewAlert};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Something a monitor noticed.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// No container of the service passes its health check.
    ServiceDown { app: String, service: String },
    /// At least one does (again).
    ServiceUp { app: String, service: String },
    ReplicaUnhealthy {
        app: String,
        service: String,
        container: String,
        reason: String,
    },
    ReplicaRecovered {
        app: String,
        service: String,
        container: String,
    },
    /// berth replaced a replica that stayed unhealthy (or tried to: `Err` says why not).
    ReplicaReplaced {
        app: String,
        service: String,
        container: String,
        reason: String,
        result: Result<String, String>,
    },
    /// A current container stopped without berth stopping it.
    ContainerDied {
        app: String,
        service: String,
        container: String,
        exit_code: Option<i64>,
    },
    /// The kernel killed a process of a current container for exceeding its memory limit.
    OomKilled {
        app: String,
        service: String,
        container: String,
    },
    /// A filesystem berth watches (`berth` data, `docker` data) is this full.
    DiskUsage { purpose: String, used_percent: f64 },
    /// The host's memory in use (not available), in percent.
    MemoryUsage { used_percent: f64 },
    /// A condition read from berth's records (a backup, a certificate): an alert fires
    /// while `problem` is given and resolves once it is not.
    Condition {
        rule: &'static str,
        app: Option<String>,
        subject: String,
        problem: Option<(Severity, String)>,
        /// Tell the channels when it resolves (a monitor's `send_on_resolved`).
        notify_resolved: bool,
    },
    /// What an alert was about is gone (an app destroyed or stopped, a service or monitor
    /// removed): the alert resolves, saying why.
    Gone {
        rule: String,
        app: Option<String>,
        subject: String,
        why: String,
    },
    /// The newest release of an app failed (the previous one keeps serving).
    DeployFailed {
        app: String,
        release: i64,
        error: String,
    },
}

/// What a rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertChange {
    pub action: Action,
    /// What the alert is about, unique among firing alerts.
    pub key: String,
    pub rule: &'static str,
    pub severity: Severity,
    pub app: Option<String>,
    pub subject: String,
    pub summary: String,
    /// Whether the channels hear of it (a quiet resolve is only recorded).
    pub notify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Fire,
    Resolve,
    Event,
}

/// Deaths of a service's containers within this window count toward a crash loop.
pub const CRASH_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Deaths within [`CRASH_WINDOW`] that make a crash loop.
pub const CRASH_DEATHS: usize = 3;
/// Disk use (percent) that fires, and that resolves.
pub const DISK_FIRE: f64 = 90.0;
pub const DISK_RESOLVE: f64 = 85.0;
/// Memory use (percent) that fires when it lasts [`MEMORY_FOR`], and that resolves.
pub const MEMORY_FIRE: f64 = 90.0;
pub const MEMORY_RESOLVE: f64 = 85.0;
pub const MEMORY_FOR: Duration = Duration::from_secs(5 * 60);

/// The built-in rules. Plain data driven by the caller's clock (Unix milliseconds).
#[derive(Default)]
pub struct Rules {
    deaths: HashMap<(String, String), VecDeque<i64>>,
    looping: HashSet<(String, String)>,
    /// Services that went down while crash-looping: the loop's alert says it already; their
    /// own alert fires if they are still down when the loop is over.
    down_while_looping: HashSet<(String, String)>,
    /// Containers just OOM-killed: their next death is that kill, not another alert.
    oom_killed: HashMap<String, i64>,
    disk_full: HashSet<String>,
    memory_high_since: Option<i64>,
    memory_firing: bool,
    /// Conditions firing (by key) and how severe, so each fires once, not once per
    /// reading, and again only when it gets worse.
    conditions: HashMap<String, Severity>,
}

fn service_down(app: &String, service: &str) -> AlertChange {
    change(
        Action::Fire,
        "service_down",
        Severity::Critical,
        Some(app),
        format!("{app}/{service}"),
        format!(
            "{app}/{service} is down: none of its containers passes its health check (`berth status {app}` shows why)"
        ),
    )
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Rules {
    pub fn on_signal(&mut self, signal: &Signal, now: i64) -> Vec<AlertChange> {
        match signal {
            Signal::ServiceDown { app, service } => {
                let key = (app.clone(), service.clone());
                if self.looping.contains(&key) {
                    self.down_while_looping.insert(key);
                    return Vec::new();
                }
                vec![service_down(app, service)]
            }
            Signal::ServiceUp { app, service } => {
                self.down_while_looping
                    .remove(&(app.clone(), service.clone()));
                vec![change(
                    Action::Resolve,
                    "service_down",
                    Severity::Critical,
                    Some(app),
                    format!("{app}/{service}"),
                    format!("{app}/{service} is up again"),
                )]
            }
            Signal::ReplicaUnhealthy { .. } | Signal::ReplicaRecovered { .. } => Vec::new(),
            Signal::ReplicaReplaced {
                app,
                service,
                container,
                reason,
                result,
            } => {
                let summary = match result {
                    Ok(fresh) => {
                        format!("{app}/{service}: {container} was replaced by {fresh} ({reason})")
                    }
                    Err(error) => format!(
                        "{app}/{service}: {container} could not be replaced ({reason}): {error}"
                    ),
                };
                vec![change(
                    Action::Event,
                    "replica_replaced",
                    Severity::Warning,
                    Some(app),
                    format!("{app}/{service}"),
                    summary,
                )]
            }
            Signal::OomKilled {
                app,
                service,
                container,
            } => {
                self.oom_killed.insert(container.clone(), now);
                let key = (app.clone(), service.clone());
                if self.looping.contains(&key) {
                    return Vec::new();
                }
                vec![change(
                    Action::Event,
                    "oom_killed",
                    Severity::Critical,
                    Some(app),
                    format!("{app}/{service}"),
                    format!(
                        "{app}/{service}: {container} was killed for using more memory than its limit (raise `memory` in berth.toml, or find the leak)"
                    ),
                )]
            }
            Signal::ContainerDied {
                app,
                service,
                container,
                exit_code,
            } => {
                let key = (app.clone(), service.clone());
                let deaths = self.deaths.entry(key.clone()).or_default();
                deaths.push_back(now);
                while deaths
                    .front()
                    .is_some_and(|t| now - *t > millis(CRASH_WINDOW))
                {
                    deaths.pop_front();
                }
                let count = deaths.len();
                let oom = self
                    .oom_killed
                    .remove(container)
                    .is_some_and(|at| now - at < 10_000);
                let status = match exit_code {
                    _ if oom => "killed for exceeding its memory limit".to_owned(),
                    Some(code) => format!("exit status {code}"),
                    None => "no exit status".to_owned(),
                };
                if self.looping.contains(&key) {
                    return Vec::new();
                }
                if count >= CRASH_DEATHS {
                    self.looping.insert(key);
                    return vec![change(
                        Action::Fire,
                        "crash_loop",
                        Severity::Critical,
                        Some(app),
                        format!("{app}/{service}"),
                        format!(
                            "{app}/{service} is crash-looping: its containers stopped {count} times within {} (last: {container}, {status}); `berth logs {service} --app {app}` shows why",
                            berth_manifest::units::format_duration(CRASH_WINDOW)
                        ),
                    )];
                }
                if oom {
                    // The OOM kill was its own alert.
                    return Vec::new();
                }
                vec![change(
                    Action::Event,
                    "container_died",
                    Severity::Warning,
                    Some(app),
                    format!("{app}/{service}"),
                    format!("{app}/{service}: {container} stopped unexpectedly ({status})"),
                )]
            }
            Signal::DiskUsage {
                purpose,
                used_percent,
            } => {
                let subject = format!("{purpose} data disk");
                if *used_percent >= DISK_FIRE && self.disk_full.insert(purpose.clone()) {
                    vec![change(
                        Action::Fire,
                        "disk_full",
                        Severity::Critical,
                        None,
                        subject.clone(),
                        format!(
                            "the filesystem of {purpose}'s data is {used_percent:.0}% full (alert from {DISK_FIRE:.0}%): free space before writes fail (`docker system df`, old backups, logs)"
                        ),
                    )]
                } else if *used_percent < DISK_RESOLVE && self.disk_full.remove(purpose) {
                    vec![change(
                        Action::Resolve,
                        "disk_full",
                        Severity::Critical,
                        None,
                        subject,
                        format!("the filesystem of {purpose}'s data is {used_percent:.0}% full"),
                    )]
                } else {
                    Vec::new()
                }
            }
            Signal::Condition {
                rule,
                app,
                subject,
                problem,
                notify_resolved,
            } => {
                let key = format!("{rule}:{subject}");
                match problem {
                    Some((severity, summary)) => {
                        let fire = change(
                            Action::Fire,
                            rule,
                            *severity,
                            app.as_ref(),
                            subject.clone(),
                            summary.clone(),
                        );
                        match self.conditions.insert(key, *severity) {
                            None => vec![fire],
                            // Worse than when it fired (a certificate now expired): the old
                            // alert ends quietly and the graver one is told.
                            Some(before) if before < *severity => {
                                let mut quiet = fire.clone();
                                quiet.action = Action::Resolve;
                                quiet.notify = false;
                                vec![quiet, fire]
                            }
                            Some(_) => Vec::new(),
                        }
                    }
                    // Resolving what does not fire changes nothing, and an agent that
                    // restarted must still resolve what fired before it.
                    None => {
                        self.conditions.remove(&key);
                        let mut resolve = change(
                            Action::Resolve,
                            rule,
                            Severity::Info,
                            app.as_ref(),
                            subject.clone(),
                            format!("{subject} is fine again"),
                        );
                        resolve.notify = *notify_resolved;
                        vec![resolve]
                    }
                }
            }
            Signal::Gone {
                rule,
                app,
                subject,
                why,
            } => {
                self.conditions.remove(&format!("{rule}:{subject}"));
                // A service stopped, removed or renamed is not down: nothing is held back
                // for it any more.
                if let Some((app, service)) = subject.split_once('/') {
                    let key = (app.to_owned(), service.to_owned());
                    self.down_while_looping.remove(&key);
                    if rule == "crash_loop" || rule == "service_down" {
                        self.looping.remove(&key);
                        self.deaths.remove(&key);
                    }
                }
                vec![AlertChange {
                    action: Action::Resolve,
                    key: format!("{rule}:{subject}"),
                    rule: "gone",
                    severity: Severity::Info,
                    app: app.clone(),
                    subject: subject.clone(),
                    summary: format!("{subject}: {why}"),
                    notify: true,
                }]
            }
            Signal::DeployFailed {
                app,
                release,
                error,
            } => vec![change(
                Action::Event,
                "deploy_failed",
                Severity::Critical,
                Some(app),
                app.clone(),
                format!(
                    "{app}: the deploy of release {release} failed, the previous release keeps serving: {error}"
                ),
            )],
            Signal::MemoryUsage { used_percent } => {
                if *used_percent >= MEMORY_FIRE {
                    let since = *self.memory_high_since.get_or_insert(now);
                    if !self.memory_firing && now - since >= millis(MEMORY_FOR) {
                        self.memory_firing = true;
                        return vec![change(
                            Action::Fire,
                            "memory_high",
                            Severity::Warning,
                            None,
                            "host memory".into(),
                            format!(
                                "the host has used {used_percent:.0}% of its memory for over {} (`berth top` shows which containers)",
                                berth_manifest::units::format_duration(MEMORY_FOR)
                            ),
                        )];
                    }
                } else if *used_percent < MEMORY_RESOLVE {
                    self.memory_high_since = None;
                    if self.memory_firing {
                        self.memory_firing = false;
                        return vec![change(
                            Action::Resolve,
                            "memory_high",
                            Severity::Warning,
                            None,
                            "host memory".into(),
                            format!("the host uses {used_percent:.0}% of its memory"),
                        )];
                    }
                }
                Vec::new()
            }
        }
    }

    /// Takes up what fired before the agent restarted, so it can resolve: crash loops (over
    /// if no container dies within a window from now), full disks, high memory, conditions.
    pub fn resume(&mut self, firing: &[AlertRecord], now: i64) {
        for alert in firing {
            match alert.rule.as_str() {
                "crash_loop" => {
                    if let Some((app, service)) = alert.subject.split_once('/') {
                        let key = (app.to_owned(), service.to_owned());
                        self.deaths.entry(key.clone()).or_default().push_back(now);
                        self.looping.insert(key);
                    }
                }
                "disk_full" => {
                    if let Some(purpose) = alert.subject.strip_suffix(" data disk") {
                        self.disk_full.insert(purpose.to_owned());
                    }
                }
                "memory_high" => {
                    self.memory_firing = true;
                    self.memory_high_since = Some(alert.started_at);
                }
                _ if !alert.event => {
                    let severity = Severity::parse(&alert.severity).unwrap_or(Severity::Info);
                    self.conditions.insert(alert.key.clone(), severity);
                }
                _ => {}
            }
        }
    }

    /// What time alone changes: a crash loop is over once no container died for a window.
    pub fn on_tick(&mut self, now: i64) -> Vec<AlertChange> {
        let mut changes = Vec::new();
        let over: Vec<(String, String)> = self
            .looping
            .iter()
            .filter(|key| {
                self.deaths
                    .get(*key)
                    .and_then(|d| d.back())
                    .is_none_or(|last| now - *last > millis(CRASH_WINDOW))
            })
            .cloned()
            .collect();
        for (app, service) in over {
            self.looping.remove(&(app.clone(), service.clone()));
            self.deaths.remove(&(app.clone(), service.clone()));
            let still_down = self
                .down_while_looping
                .remove(&(app.clone(), service.clone()));
            changes.push(change(
                Action::Resolve,
                "crash_loop",
                Severity::Critical,
                Some(&app),
                format!("{app}/{service}"),
                format!(
                    "{app}/{service} has run without a crash for {}",
                    berth_manifest::units::format_duration(CRASH_WINDOW)
                ),
            ));
            if still_down {
                changes.push(service_down(&app, &service));
            }
        }
        self.oom_killed.retain(|_, at| now - *at < 60_000);
        changes
    }
}

fn change(
    action: Action,
    rule: &'static str,
    severity: Severity,
    app: Option<&String>,
    subject: String,
    summary: String,
) -> AlertChange {
    AlertChange {
        action,
        key: format!("{rule}:{subject}"),
        rule,
        severity,
        app: app.cloned(),
        subject,
        summary,
        notify: true,
    }
}

/// How many alerts fire, by (rule, severity); kept by the alerts worker.
#[derive(Debug, Default)]
pub struct FiringCounts(Mutex<BTreeMap<(String, String), i64>>);

impl FiringCounts {
    /// Replaces the counts; a rule that stopped firing reads 0 rather than vanishing.
    pub fn set(&self, firing: &[berth_state::AlertRecord]) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for count in counts.values_mut() {
            *count = 0;
        }
        for alert in firing {
            *counts
                .entry((alert.rule.clone(), alert.severity.clone()))
                .or_default() += 1;
        }
    }

    pub fn all(&self) -> Vec<((String, String), i64)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// Where monitors send what they notice. Cheap to share; never blocks.
pub struct Alerts {
    sender: mpsc::Sender<Signal>,
    /// Firing alerts by rule and severity, for the metrics endpoint.
    pub firing: Arc<FiringCounts>,
    /// Tests read back what was signalled.
    seen: Option<Mutex<Vec<Signal>>>,
}

impl Alerts {
    /// The hub, and the receiving end for [`deliver`].
    pub fn new() -> (Arc<Self>, mpsc::Receiver<Signal>) {
        let (sender, receiver) = mpsc::channel(1024);
        (
            Arc::new(Self {
                sender,
                firing: Arc::default(),
                seen: None,
            }),
            receiver,
        )
    }

    /// Queues a signal; when the queue is full (a storm), it is dropped with a warning.
    pub fn signal(&self, signal: Signal) {
        if let Some(seen) = &self.seen {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(signal.clone());
        }
        if let Err(error) = self.sender.try_send(signal) {
            tracing::warn!(%error, "the alert queue is full: a signal was dropped");
        }
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        let (sender, _) = mpsc::channel(1);
        Self {
            sender,
            firing: Arc::default(),
            seen: Some(Mutex::new(Vec::new())),
        }
    }

    #[cfg(test)]
    pub fn signals_seen(&self) -> Vec<Signal> {
        self.seen
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }
}

/// Attempts per delivery, and the pause before each retry.
const RETRY_PAUSES: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(120),
];

/// The alert worker: turns signals into alerts, records them and delivers them, until `stop`.
pub async fn deliver(
    engine: Arc<Engine>,
    mut signals: mpsc::Receiver<Signal>,
    firing: Arc<FiringCounts>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let sender = match Sender::new(berth_core::names::host_name()) {
        Ok(sender) => Arc::new(sender),
        Err(error) => {
            report.failed_run(error);
            return;
        }
    };
    let mut rules = Rules::default();
    let mut deliveries = Deliveries::default();
    if let Ok(now_firing) = engine.store().firing_alerts() {
        rules.resume(&now_firing, berth_state::now_ms());
        firing.set(&now_firing);
    }
    // When each firing alert was last sent to each channel, for reminders.
    let mut last_sent: HashMap<(i64, String, String), i64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    report.running("waiting for something to alert on");
    loop {
        let changes = tokio::select! {
            () = &mut stop => return,
            signal = signals.recv() => match signal {
                Some(signal) => rules.on_signal(&signal, berth_state::now_ms()),
                None => return,
            },
            _ = tick.tick() => {
                let now = berth_state::now_ms();
                remind(&engine, &sender, &mut deliveries, &mut last_sent, now);
                rules.on_tick(now)
            }
        };
        let now = berth_state::now_ms();
        for change in changes {
            match record(&engine, &change, now) {
                Ok(Some((alert, what))) => {
                    tracing::info!(rule = %alert.rule, subject = %alert.subject, what, summary = %alert.summary, "alert");
                    let channels = if change.notify && !muted(&engine, &alert, now) {
                        channels_for(&engine, &alert)
                    } else {
                        Vec::new()
                    };
                    for (app, channel) in channels {
                        last_sent.insert((alert.id, app.clone(), channel.name.clone()), now);
                        deliveries.enqueue(&engine, &sender, app, channel, alert.clone(), what);
                    }
                    if alert.resolved_at.is_some() {
                        last_sent.retain(|(id, _, _), _| *id != alert.id);
                    }
                }
                Ok(None) => {}
                Err(error) => report.failed_run(format!("cannot record an alert: {error}")),
            }
            if let Ok(now_firing) = engine.store().firing_alerts() {
                firing.set(&now_firing);
            }
        }
    }
}

/// Records a change; returns the alert and what to tell the channels, or `None` when it
/// changes nothing (already firing, or nothing to resolve).
fn record(
    engine: &Engine,
    change: &AlertChange,
    now: i64,
) -> Result<Option<(AlertRecord, &'static str)>, berth_state::StateError> {
    let store = engine.store();
    match change.action {
        Action::Resolve => Ok(store.resolve_alert(&change.key, now)?.map(|mut alert| {
            alert.summary = change.summary.clone();
            (alert, "resolved")
        })),
        Action::Fire | Action::Event => {
            let event = change.action == Action::Event;
            if !event && store.firing_alerts()?.iter().any(|a| a.key == change.key) {
                return Ok(None);
            }
            let new = NewAlert {
                key: &change.key,
                rule: change.rule,
                severity: change.severity.as_str(),
                app: change.app.as_deref(),
                subject: &change.subject,
                summary: &change.summary,
                event,
                at: now,
            };
            let id = store.add_alert(&new)?;
            Ok(Some((
                AlertRecord {
                    id,
                    key: change.key.clone(),
                    rule: change.rule.to_owned(),
                    severity: change.severity.as_str().to_owned(),
                    app: change.app.clone(),
                    subject: change.subject.clone(),
                    summary: change.summary.clone(),
                    event,
                    started_at: now,
                    resolved_at: event.then_some(now),
                },
                if event { "event" } else { "firing" },
            )))
        }
    }
}

/// The channels an alert goes to: its app's (host alerts: every app's), at or above their
/// minimum severity; none for an app in maintenance (`berth maintenance on`).
fn channels_for(engine: &Engine, alert: &AlertRecord) -> Vec<(String, AlertChannel)> {
    let severity = Severity::parse(&alert.severity).unwrap_or(Severity::Critical);
    let apps = match &alert.app {
        Some(app) => vec![app.clone()],
        None => engine
            .store()
            .apps()
            .map(|apps| apps.into_iter().map(|a| a.name).collect())
            .unwrap_or_default(),
    };
    let mut channels = Vec::new();
    for app in apps {
        if alert.app.is_some()
            && engine
                .store()
                .app(&app)
                .ok()
                .flatten()
                .is_some_and(|a| a.maintenance.is_some())
        {
            tracing::info!(%app, subject = %alert.subject, "alert not sent: the app is in maintenance");
            continue;
        }
        for channel in app_channels(engine, &app) {
            if severity >= channel.min_severity {
                channels.push((app.clone(), channel));
            }
        }
    }
    channels
}

/// Whether `berth alerts mute` keeps an alert from the channels now (it is still recorded).
fn muted(engine: &Engine, alert: &AlertRecord, now: i64) -> bool {
    let muted = engine
        .store()
        .alert_mutes(now)
        .is_ok_and(|mutes| mutes.iter().any(|m| m.covers(alert)));
    if muted {
        tracing::info!(rule = %alert.rule, subject = %alert.subject, "alert not sent: muted");
    }
    muted
}

/// An app's alert channels, from its live release's manifest.
pub fn app_channels(engine: &Engine, app: &str) -> Vec<AlertChannel> {
    crate::live::manifest(engine, app)
        .map(|manifest| manifest.alerts)
        .unwrap_or_default()
}

/// Sends firing alerts again to channels with `remind_every`, when it has passed.
fn remind(
    engine: &Arc<Engine>,
    sender: &Arc<Sender>,
    deliveries: &mut Deliveries,
    last_sent: &mut HashMap<(i64, String, String), i64>,
    now: i64,
) {
    let Ok(firing) = engine.store().firing_alerts() else {
        return;
    };
    let firing: Vec<AlertRecord> = firing
        .into_iter()
        .filter(|alert| !muted(engine, alert, now))
        .collect();
    for (app, channel, alert) in
        reminders_due(&firing, |alert| channels_for(engine, alert), last_sent, now)
    {
        deliveries.enqueue(engine, sender, app, channel, alert, "reminder");
    }
}

/// The reminders due at `now`: each firing alert again to each of its channels with a
/// `remind_every`, once that long has passed since it was last sent there (or since it
/// started); `last_sent` is brought up to date.
fn reminders_due(
    firing: &[AlertRecord],
    channels: impl Fn(&AlertRecord) -> Vec<(String, AlertChannel)>,
    last_sent: &mut HashMap<(i64, String, String), i64>,
    now: i64,
) -> Vec<(String, AlertChannel, AlertRecord)> {
    let mut due = Vec::new();
    for alert in firing {
        for (app, channel) in channels(alert) {
            let every = millis(channel.remind_every);
            if every == 0 {
                continue;
            }
            let key = (alert.id, app.clone(), channel.name.clone());
            let last = *last_sent.entry(key.clone()).or_insert(alert.started_at);
            if now - last >= every {
                last_sent.insert(key, now);
                due.push((app, channel, alert.clone()));
            }
        }
    }
    due
}

/// One message for one channel.
struct Job {
    channel: AlertChannel,
    alert: AlertRecord,
    what: &'static str,
}

/// A queue per channel (of each app), worked in order: a channel never hears "resolved"
/// before the "firing" it resolves, however long that one's retries take.
#[derive(Default)]
struct Deliveries {
    queues: HashMap<(String, String), mpsc::UnboundedSender<Job>>,
}

impl Deliveries {
    fn enqueue(
        &mut self,
        engine: &Arc<Engine>,
        sender: &Arc<Sender>,
        app: String,
        channel: AlertChannel,
        alert: AlertRecord,
        what: &'static str,
    ) {
        if what == "resolved" && !channel.send_resolved {
            return;
        }
        let key = (app.clone(), channel.name.clone());
        let mut job = Job {
            channel,
            alert,
            what,
        };
        if let Some(queue) = self.queues.get(&key) {
            match queue.send(job) {
                Ok(()) => return,
                // Its worker ended: start another below.
                Err(mpsc::error::SendError(back)) => job = back,
            }
        }
        let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
        let _ = queue.send(job);
        self.queues.insert(key, queue);
        let (engine, sender) = (engine.clone(), sender.clone());
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let message = Message::for_alert(&job.alert, job.what);
                let delivery = send_with_retries(
                    &engine,
                    &sender,
                    &app,
                    &job.channel,
                    &message,
                    &RETRY_PAUSES,
                )
                .await;
                let delivery = AlertDelivery {
                    alert_id: Some(job.alert.id),
                    ..delivery
                };
                if !delivery.ok {
                    tracing::warn!(%app, channel = %job.channel.name, error = ?delivery.error, attempts = delivery.attempts, "an alert could not be delivered");
                }
                if let Err(error) = engine.store().add_alert_delivery(&delivery) {
                    tracing::warn!(%error, "cannot record an alert delivery");
                }
            }
        });
    }
}

/// Sends one message, retrying after each pause; the record of how it went.
pub async fn send_with_retries(
    engine: &Engine,
    sender: &Sender,
    app: &str,
    channel: &AlertChannel,
    message: &Message,
    pauses: &[Duration],
) -> AlertDelivery {
    let mut attempts = 0u32;
    let result = loop {
        attempts += 1;
        let secrets = |name: &str| {
            engine
                .channel_secret(app, name)
                .map_err(|e| e.message.clone())
        };
        let result = sender.send(channel, message, &secrets).await;
        match (&result, pauses.get(attempts as usize - 1)) {
            (Ok(()), _) | (Err(_), None) => break result,
            (Err(channels::SendError::Permanent(_)), _) => break result,
            (Err(_), Some(pause)) => tokio::time::sleep(*pause).await,
        }
    };
    AlertDelivery {
        alert_id: None,
        channel: channel.name.clone(),
        app: Some(app.to_owned()),
        what: message.what.to_owned(),
        at: berth_state::now_ms(),
        ok: result.is_ok(),
        attempts,
        error: result.err().map(|e| e.to_string()),
    }
}

/// The name messages give the server: its host name, else "berth".
/// The alert channels of every app, by app (for `berth status`).
pub fn all_channels(engine: &Engine) -> BTreeMap<String, Vec<AlertChannel>> {
    engine
        .store()
        .apps()
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            let channels = app_channels(engine, &a.name);
            (a.name, channels)
        })
        .filter(|(_, c)| !c.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn died(container: &str, code: i64) -> Signal {
        Signal::ContainerDied {
            app: "shop".into(),
            service: "web".into(),
            container: container.into(),
            exit_code: Some(code),
        }
    }

    fn actions(changes: &[AlertChange]) -> Vec<(Action, &str)> {
        changes.iter().map(|c| (c.action, c.rule)).collect()
    }

    #[test]
    fn a_crash_loop_fires_once_not_per_restart_and_resolves_after_a_quiet_window() {
        let mut rules = Rules::default();
        let minute = 60_000;
        assert_eq!(
            actions(&rules.on_signal(&died("c1", 1), 0)),
            [(Action::Event, "container_died")]
        );
        assert_eq!(
            actions(&rules.on_signal(&died("c1", 1), minute)),
            [(Action::Event, "container_died")]
        );
        let third = rules.on_signal(&died("c1", 1), 2 * minute);
        assert_eq!(actions(&third), [(Action::Fire, "crash_loop")]);
        assert_eq!(third[0].key, "crash_loop:shop/web");
        assert!(third[0].summary.contains("3 times"), "{}", third[0].summary);
        for i in 3..20 {
            assert!(
                rules
                    .on_signal(&died("c1", 1), i * 10_000 + 2 * minute)
                    .is_empty(),
                "no storm while it loops"
            );
        }
        assert!(
            rules.on_tick(4 * minute).is_empty(),
            "still within the window"
        );
        let last_death = 19 * 10_000 + 2 * minute;
        assert_eq!(
            actions(&rules.on_tick(last_death + 5 * minute + 1)),
            [(Action::Resolve, "crash_loop")]
        );
        assert_eq!(
            actions(&rules.on_signal(&died("c1", 1), last_death + 6 * minute)),
            [(Action::Event, "container_died")],
            "a new window starts afresh"
        );
    }

    #[test]
    fn a_service_down_while_it_crash_loops_is_said_once_the_loop_is_over() {
        let mut rules = Rules::default();
        let minute = 60_000;
        let (down, up) = (
            Signal::ServiceDown {
                app: "shop".into(),
                service: "web".into(),
            },
            Signal::ServiceUp {
                app: "shop".into(),
                service: "web".into(),
            },
        );
        for i in 0..3 {
            rules.on_signal(&died("c1", 137), i * 10_000);
        }
        assert!(
            rules.on_signal(&down, 30_000).is_empty(),
            "the crash loop's alert says it already"
        );
        assert_eq!(
            actions(&rules.on_tick(20_000 + 5 * minute + 1)),
            [
                (Action::Resolve, "crash_loop"),
                (Action::Fire, "service_down")
            ],
            "still down once the loop is over"
        );
        // Down and back up within a loop: nothing more to say after it.
        for i in 0..3 {
            rules.on_signal(&died("c1", 137), 10 * minute + i * 10_000);
        }
        assert!(rules.on_signal(&down, 11 * minute).is_empty());
        rules.on_signal(&up, 11 * minute + 1);
        assert_eq!(
            actions(&rules.on_tick(20 * minute)),
            [(Action::Resolve, "crash_loop")]
        );
        // A service removed while it loops and is down is not paged as down later.
        for i in 0..3 {
            rules.on_signal(&died("c1", 137), 40 * minute + i * 10_000);
        }
        assert!(rules.on_signal(&down, 41 * minute).is_empty());
        rules.on_signal(
            &Signal::Gone {
                rule: "service_down".into(),
                app: Some("shop".into()),
                subject: "shop/web".into(),
                why: "shop/web was removed".into(),
            },
            41 * minute + 1,
        );
        assert!(
            rules.on_tick(60 * minute).is_empty(),
            "nothing held back for it"
        );
        // Without a loop, down is said at once.
        assert_eq!(
            actions(&rules.on_signal(&down, 30 * minute)),
            [(Action::Fire, "service_down")]
        );
    }

    #[test]
    fn deaths_spread_over_more_than_the_window_are_no_crash_loop() {
        let mut rules = Rules::default();
        for i in 0..10 {
            let changes = rules.on_signal(&died("c1", 137), i * 3 * 60_000);
            assert_eq!(actions(&changes), [(Action::Event, "container_died")]);
        }
    }

    #[test]
    fn an_oom_kill_is_one_alert_with_the_fix_not_two() {
        let mut rules = Rules::default();
        let oom = Signal::OomKilled {
            app: "shop".into(),
            service: "web".into(),
            container: "c1".into(),
        };
        let changes = rules.on_signal(&oom, 0);
        assert_eq!(actions(&changes), [(Action::Event, "oom_killed")]);
        assert!(changes[0].summary.contains("raise `memory`"));
        assert!(
            rules.on_signal(&died("c1", 137), 100).is_empty(),
            "the death that follows is the same kill"
        );
        assert_eq!(
            actions(&rules.on_signal(&died("c1", 137), 60_000)),
            [(Action::Event, "container_died")]
        );
    }

    #[test]
    fn disk_and_memory_fire_past_their_thresholds_with_hysteresis_and_duration() {
        let mut rules = Rules::default();
        let disk = |p: f64| Signal::DiskUsage {
            purpose: "berth".into(),
            used_percent: p,
        };
        assert!(rules.on_signal(&disk(80.0), 0).is_empty());
        assert_eq!(
            actions(&rules.on_signal(&disk(91.0), 1)),
            [(Action::Fire, "disk_full")]
        );
        assert!(rules.on_signal(&disk(95.0), 2).is_empty());
        assert!(
            rules.on_signal(&disk(88.0), 3).is_empty(),
            "between 85 and 90: no flapping"
        );
        assert_eq!(
            actions(&rules.on_signal(&disk(84.0), 4)),
            [(Action::Resolve, "disk_full")]
        );
        let memory = |p: f64| Signal::MemoryUsage { used_percent: p };
        assert!(rules.on_signal(&memory(95.0), 0).is_empty());
        assert!(rules.on_signal(&memory(95.0), 4 * 60_000).is_empty());
        assert_eq!(
            actions(&rules.on_signal(&memory(95.0), 5 * 60_000)),
            [(Action::Fire, "memory_high")]
        );
        assert!(rules.on_signal(&memory(95.0), 6 * 60_000).is_empty());
        assert_eq!(
            actions(&rules.on_signal(&memory(50.0), 7 * 60_000)),
            [(Action::Resolve, "memory_high")]
        );
        assert!(rules.on_signal(&memory(95.0), 8 * 60_000).is_empty());
        assert!(
            rules.on_signal(&memory(50.0), 9 * 60_000).is_empty(),
            "a short spike resolves nothing it never fired"
        );
    }

    #[test]
    fn a_service_down_alert_names_the_service_and_where_to_look() {
        let mut rules = Rules::default();
        let down = rules.on_signal(
            &Signal::ServiceDown {
                app: "shop".into(),
                service: "web".into(),
            },
            0,
        );
        assert_eq!(down[0].key, "service_down:shop/web");
        assert_eq!(down[0].severity, Severity::Critical);
        assert!(down[0].summary.contains("berth status shop"));
        let up = rules.on_signal(
            &Signal::ServiceUp {
                app: "shop".into(),
                service: "web".into(),
            },
            1,
        );
        assert_eq!(
            (up[0].action, up[0].key.as_str()),
            (Action::Resolve, "service_down:shop/web")
        );
    }

    #[test]
    fn a_condition_fires_once_while_it_lasts_and_always_tries_to_resolve() {
        let mut rules = Rules::default();
        let backup = |problem: Option<&str>| Signal::Condition {
            rule: "backup_failed",
            app: Some("shop".into()),
            subject: "shop/backup db".into(),
            problem: problem.map(|p| (Severity::Critical, p.to_owned())),
            notify_resolved: true,
        };
        assert_eq!(
            actions(&rules.on_signal(&backup(None), 0)),
            [(Action::Resolve, "backup_failed")],
            "after a restart, what fired before may need resolving"
        );
        let fired = rules.on_signal(&backup(Some("the upload failed")), 1);
        assert_eq!(actions(&fired), [(Action::Fire, "backup_failed")]);
        assert_eq!(fired[0].key, "backup_failed:shop/backup db");
        assert!(
            rules
                .on_signal(&backup(Some("the upload failed")), 2)
                .is_empty()
        );
        assert_eq!(
            actions(&rules.on_signal(&backup(None), 3)),
            [(Action::Resolve, "backup_failed")]
        );
        let failed = rules.on_signal(
            &Signal::DeployFailed {
                app: "shop".into(),
                release: 7,
                error: "service web failed its health check".into(),
            },
            4,
        );
        assert_eq!(actions(&failed), [(Action::Event, "deploy_failed")]);
        assert!(
            failed[0].summary.contains("release 7") && failed[0].summary.contains("keeps serving")
        );
    }

    fn firing(rule: &str, subject: &str, severity: &str) -> AlertRecord {
        AlertRecord {
            id: 1,
            key: format!("{rule}:{subject}"),
            rule: rule.into(),
            severity: severity.into(),
            app: Some("shop".into()),
            subject: subject.into(),
            summary: String::new(),
            event: false,
            started_at: 0,
            resolved_at: None,
        }
    }

    #[test]
    fn what_fired_before_a_restart_can_still_resolve() {
        let mut rules = Rules::default();
        rules.resume(
            &[
                firing("crash_loop", "shop/web", "critical"),
                firing("disk_full", "berth data disk", "critical"),
                firing("memory_high", "host memory", "warning"),
            ],
            1_000,
        );
        assert_eq!(
            actions(&rules.on_tick(1_000 + 5 * 60_000 + 1)),
            [(Action::Resolve, "crash_loop")],
            "no death for a window after the restart"
        );
        let disk = Signal::DiskUsage {
            purpose: "berth".into(),
            used_percent: 50.0,
        };
        assert_eq!(
            actions(&rules.on_signal(&disk, 2_000)),
            [(Action::Resolve, "disk_full")]
        );
        let memory = Signal::MemoryUsage { used_percent: 40.0 };
        assert_eq!(
            actions(&rules.on_signal(&memory, 2_000)),
            [(Action::Resolve, "memory_high")]
        );
    }

    #[test]
    fn a_condition_that_gets_worse_is_told_again_and_a_gone_subject_resolves() {
        let mut rules = Rules::default();
        let cert = |severity: Severity, text: &str| Signal::Condition {
            rule: "certificate",
            app: Some("shop".into()),
            subject: "shop.example".into(),
            problem: Some((severity, text.to_owned())),
            notify_resolved: true,
        };
        assert_eq!(
            actions(&rules.on_signal(&cert(Severity::Warning, "expires in 13 days"), 0)),
            [(Action::Fire, "certificate")]
        );
        assert!(
            rules
                .on_signal(&cert(Severity::Warning, "expires in 12 days"), 1)
                .is_empty()
        );
        let worse = rules.on_signal(&cert(Severity::Critical, "has expired"), 2);
        assert_eq!(
            worse
                .iter()
                .map(|c| (c.action, c.notify, c.severity))
                .collect::<Vec<_>>(),
            [
                (Action::Resolve, false, Severity::Critical),
                (Action::Fire, true, Severity::Critical)
            ]
        );
        let gone = rules.on_signal(
            &Signal::Gone {
                rule: "certificate".into(),
                app: Some("shop".into()),
                subject: "shop.example".into(),
                why: "shop was removed from this server".into(),
            },
            3,
        );
        assert_eq!(gone[0].action, Action::Resolve);
        assert_eq!(gone[0].key, "certificate:shop.example");
        assert!(
            rules
                .on_signal(&cert(Severity::Critical, "has expired"), 4)
                .len()
                == 1,
            "forgotten, so it may fire anew"
        );
    }

    #[test]
    fn reminders_come_every_remind_every_while_firing_and_never_when_zero() {
        let hour = 3_600_000;
        let channel = |name: &str, every: u64| AlertChannel {
            name: name.into(),
            kind: berth_manifest::ChannelKind::Ntfy {
                url: "https://ntfy.example/x".into(),
                token_secret: None,
            },
            min_severity: Severity::Info,
            send_resolved: true,
            remind_every: Duration::from_secs(every),
        };
        let alert = AlertRecord {
            id: 7,
            key: "service_down:shop/web".into(),
            rule: "service_down".into(),
            severity: "critical".into(),
            app: Some("shop".into()),
            subject: "shop/web".into(),
            summary: "down".into(),
            event: false,
            started_at: 10 * hour,
            resolved_at: None,
        };
        let channels = |_: &AlertRecord| {
            vec![
                ("shop".to_owned(), channel("pager", 4 * 3600)),
                ("shop".to_owned(), channel("quiet", 0)),
            ]
        };
        let mut last_sent = HashMap::new();
        let mut due_at = |now: i64| -> Vec<String> {
            reminders_due(std::slice::from_ref(&alert), channels, &mut last_sent, now)
                .into_iter()
                .map(|(_, channel, _)| channel.name)
                .collect()
        };
        assert!(due_at(13 * hour).is_empty(), "3 hours in");
        assert_eq!(due_at(14 * hour), ["pager"], "4 hours in");
        assert!(due_at(15 * hour).is_empty(), "once, not every tick");
        assert!(due_at(18 * hour - 1).is_empty());
        assert_eq!(due_at(18 * hour), ["pager"], "4 hours after the last");
    }
}
