//! Continuous health. After a release goes live, every current replica and every accessory
//! keeps being probed with its own health check at its own interval. `failure_threshold`
//! failures in a row make a replica unhealthy: it leaves the proxy's rotation (requests go to
//! the service's other replicas; the proxy still tries it when no other is left), and once it
//! has stayed unhealthy for `restart_after` the engine replaces it through the deploy's health
//! gate. Each verdict lands on the engine's [`HealthBoard`] for `berth status`, and each
//! change of a replica's or a service's health is told to the alerts.
//!
//! The decisions are in [`Tracker`], which is plain data driven by the caller's clock; the
//! worker ([`watch`]) probes, applies them, and asks the engine to replace replicas.

use crate::alerts::{Alerts, Signal};
use berth_core::{HealthBoard, WatchedHealth, names};
use berth_engine::health::{self, ProbeResult};
use berth_engine::{Engine, WatchTarget};
use berth_runtime::{ContainerRuntime, ContainerState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// What one probe of a container found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// Docker could not be asked: no verdict on the container.
    Unknown,
}

/// A change the tracker decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It failed `failure_threshold` checks in a row.
    Unhealthy { id: String, reason: String },
    /// It passed a check after being unhealthy.
    Recovered { id: String },
    /// It has been unhealthy for `restart_after`: replace it.
    Replace { id: String, reason: String },
}

/// Who a tracked container is, and the check settings it is held to.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub app: String,
    pub service: String,
    pub container: String,
    pub interval: Duration,
    pub failure_threshold: u32,
    /// Zero: never replaced.
    pub restart_after: Duration,
    /// The `cpus` limit.
    pub cpu_limit: Option<f64>,
}

struct Tracked {
    subject: Subject,
    health: WatchedHealth,
    unhealthy_since: Option<i64>,
    next_probe: i64,
    replacing: bool,
    last_replace: Option<i64>,
    /// Replacements that failed in a row: each doubles the wait before the next.
    failed_replacements: u32,
    /// Whether a probe ever gave a verdict on it.
    probed: bool,
}

/// The health of every tracked container, decided from probe results and the time.
#[derive(Default)]
pub struct Tracker {
    tracked: HashMap<String, Tracked>,
}

impl Tracker {
    /// Makes `subjects` (by container id) the tracked set: new ones start healthy (they
    /// passed the deploy's gate) with a first probe one interval from `now`; ones no longer
    /// listed are forgotten. Returns the forgotten ids.
    pub fn sync(&mut self, subjects: &[(String, Subject)], now: i64) -> Vec<String> {
        let keep: HashSet<&String> = subjects.iter().map(|(id, _)| id).collect();
        let gone: Vec<String> = self
            .tracked
            .keys()
            .filter(|id| !keep.contains(id))
            .cloned()
            .collect();
        for id in &gone {
            self.tracked.remove(id);
        }
        for (id, subject) in subjects {
            match self.tracked.get_mut(id) {
                Some(tracked) => tracked.subject = subject.clone(),
                None => {
                    self.tracked.insert(
                        id.clone(),
                        Tracked {
                            health: WatchedHealth {
                                app: subject.app.clone(),
                                service: subject.service.clone(),
                                container: subject.container.clone(),
                                healthy: true,
                                since_ms: now,
                                failures_in_row: 0,
                                last_failure: None,
                                in_rotation: true,
                                cpu_limit: subject.cpu_limit,
                            },
                            next_probe: now + millis(subject.interval),
                            subject: subject.clone(),
                            unhealthy_since: None,
                            replacing: false,
                            last_replace: None,
                            failed_replacements: 0,
                            probed: false,
                        },
                    );
                }
            }
        }
        gone
    }

    /// Containers whose next probe is due.
    pub fn due(&self, now: i64) -> Vec<String> {
        let mut due: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.next_probe <= now)
            .map(|(id, _)| id.clone())
            .collect();
        due.sort();
        due
    }

    /// Records a probe's verdict and says what changes.
    pub fn observe(&mut self, id: &str, verdict: &Verdict, now: i64) -> Vec<Change> {
        let Some(t) = self.tracked.get_mut(id) else {
            return Vec::new();
        };
        t.next_probe = now + millis(t.subject.interval);
        let mut changes = Vec::new();
        if *verdict != Verdict::Unknown {
            t.probed = true;
        }
        match verdict {
            Verdict::Unknown => {}
            Verdict::Pass => {
                t.health.failures_in_row = 0;
                if !t.health.healthy {
                    t.health.healthy = true;
                    t.health.since_ms = now;
                    t.unhealthy_since = None;
                    changes.push(Change::Recovered { id: id.to_owned() });
                }
            }
            Verdict::Fail(reason) => {
                t.health.failures_in_row = t.health.failures_in_row.saturating_add(1);
                t.health.last_failure = Some((now, reason.clone()));
                if t.health.healthy && t.health.failures_in_row >= t.subject.failure_threshold {
                    t.health.healthy = false;
                    t.health.since_ms = now;
                    t.unhealthy_since = Some(now);
                    changes.push(Change::Unhealthy {
                        id: id.to_owned(),
                        reason: reason.clone(),
                    });
                }
                let restart_after = millis(t.subject.restart_after);
                // After failed replacements, wait 2, 4, 8... times as long (an hour at most).
                let backoff = restart_after
                    .saturating_mul(1 << t.failed_replacements.min(6))
                    .min(restart_after.max(3_600_000));
                let waited_since_last = t.last_replace.is_none_or(|last| now - last >= backoff);
                if let Some(since) = t.unhealthy_since
                    && restart_after > 0
                    && now - since >= restart_after
                    && !t.replacing
                    && waited_since_last
                {
                    t.replacing = true;
                    changes.push(Change::Replace {
                        id: id.to_owned(),
                        reason: format!(
                            "unhealthy for {}: {reason}",
                            berth_manifest::units::format_duration(Duration::from_millis(
                                (now - since).max(0) as u64
                            ))
                        ),
                    });
                }
            }
        }
        changes
    }

    /// A replacement ended: another may be tried `restart_after` from now, or longer after
    /// replacements that failed.
    pub fn replace_finished(&mut self, id: &str, now: i64, succeeded: bool) {
        if let Some(t) = self.tracked.get_mut(id) {
            t.replacing = false;
            t.last_replace = Some(now);
            t.failed_replacements = if succeeded {
                0
            } else {
                t.failed_replacements.saturating_add(1)
            };
        }
    }

    pub fn set_in_rotation(&mut self, id: &str, in_rotation: bool) {
        if let Some(t) = self.tracked.get_mut(id) {
            t.health.in_rotation = in_rotation;
        }
    }

    pub fn health(&self, id: &str) -> Option<&WatchedHealth> {
        self.tracked.get(id).map(|t| &t.health)
    }

    pub fn subject(&self, id: &str) -> Option<&Subject> {
        self.tracked.get(id).map(|t| &t.subject)
    }

    /// Per (app, service): how many tracked containers are healthy, of how many, and how
    /// many have been probed at all.
    pub fn services(&self) -> BTreeMap<(String, String), ServiceCount> {
        let mut services: BTreeMap<(String, String), ServiceCount> = BTreeMap::new();
        for t in self.tracked.values() {
            let entry = services
                .entry((t.subject.app.clone(), t.subject.service.clone()))
                .or_default();
            entry.total += 1;
            if t.health.healthy {
                entry.healthy += 1;
            }
            if t.probed {
                entry.probed += 1;
            }
        }
        services
    }
}

/// A service's containers as the tracker sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCount {
    pub healthy: usize,
    pub total: usize,
    pub probed: usize,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Probes one container: its state from Docker, then its own health check. Also returns its
/// address on the app network now (a container started again may have a new one).
pub async fn check(
    runtime: &dyn ContainerRuntime,
    target: &WatchTarget,
) -> (Verdict, Option<std::net::IpAddr>) {
    let info = match runtime.inspect_container(&target.container_id).await {
        Ok(Some(info)) => info,
        Ok(None) => return (Verdict::Fail("the container no longer exists".into()), None),
        Err(error) if error.is_not_found() => {
            return (Verdict::Fail("the container no longer exists".into()), None);
        }
        Err(_) => return (Verdict::Unknown, None),
    };
    if info.state != ContainerState::Running {
        let mut why = format!("the container is {}", info.state.as_str());
        if info.oom_killed {
            why.push_str(" (killed for using more memory than its limit)");
        } else if let Some(code) = info
            .exit_code
            .filter(|_| info.state != ContainerState::Paused)
        {
            why.push_str(&format!(" (exit status {code})"));
        }
        return (Verdict::Fail(why), None);
    }
    let ip = info.addresses.get(&names::network(&target.app)).copied();
    let verdict = match health::probe(
        runtime,
        &target.container_id,
        ip,
        &target.service,
        &target.host,
    )
    .await
    {
        ProbeResult::Healthy => Verdict::Pass,
        ProbeResult::Unhealthy(why) => Verdict::Fail(why),
    };
    (verdict, ip)
}

/// How often the set of containers to watch is read again (besides on every release change).
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The continuous health worker: probes, decides, takes replicas out of rotation, replaces
/// the ones that stay unhealthy and tells the alerts, until `stop` resolves.
pub async fn watch(
    engine: Arc<Engine>,
    alerts: Arc<Alerts>,
    uptime: Arc<crate::uptime::Uptime>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let board: Arc<HealthBoard> = engine.health_board().clone();
    let mut changes = engine.subscribe_release_changes();
    let mut tracker = Tracker::default();
    let mut targets: HashMap<String, WatchTarget> = HashMap::new();
    type Probed = (String, Verdict, Option<std::net::IpAddr>, Duration);
    let mut probes: JoinSet<Probed> = JoinSet::new();
    let mut probing: HashSet<String> = HashSet::new();
    let mut replacements: JoinSet<(WatchTarget, String, Result<String, String>)> = JoinSet::new();
    let mut verdicts = ServiceVerdicts::default();
    let mut refresh_at = 0i64;
    report.running("probing every replica and accessory at its interval");
    loop {
        let now = berth_state::now_ms();
        if now >= refresh_at {
            refresh_at = now + millis(REFRESH_EVERY);
            match engine.watch_targets().await {
                Ok(list) => {
                    let subjects: Vec<(String, Subject)> = list
                        .iter()
                        .map(|t| (t.container_id.clone(), subject_of(t)))
                        .collect();
                    tracker.sync(&subjects, now);
                    targets = list
                        .into_iter()
                        .map(|t| (t.container_id.clone(), t))
                        .collect();
                    for (id, target) in &targets {
                        // An upstream made anew (a repoint) keeps the replica's place in rotation.
                        if let (Some(upstream), Some(health)) =
                            (&target.upstream, tracker.health(id))
                        {
                            upstream.set_in_rotation(health.in_rotation);
                        }
                        // On the board from the start (it passed the gate), so Docker's events
                        // about it count before its first probe.
                        if board.get(id).is_none()
                            && let Some(health) = tracker.health(id)
                        {
                            board.set(id, health.clone());
                        }
                    }
                    board.retain(&targets.keys().cloned().collect());
                    report.running(format!(
                        "probing {}",
                        berth_core::progress::counted(targets.len(), "container")
                    ));
                }
                Err(error) => report.retrying(error.message.clone(), Some(refresh_at)),
            }
        }
        for id in tracker.due(now) {
            if probing.contains(&id) {
                continue;
            }
            let Some(target) = targets.get(&id).cloned() else {
                continue;
            };
            // A deploy, restart or backup holds the lock while it changes containers:
            // probes wait (and what the tracker knows stays).
            if engine.locks().holder(&target.app).is_some() {
                tracker.observe(&id, &Verdict::Unknown, now);
                continue;
            }
            let runtime = engine.runtime().clone();
            probing.insert(id.clone());
            probes.spawn(async move {
                let started = std::time::Instant::now();
                let (verdict, ip) = check(runtime.as_ref(), &target).await;
                (target.container_id, verdict, ip, started.elapsed())
            });
        }
        tokio::select! {
            () = &mut stop => return,
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                let Ok((id, verdict, ip, took)) = done else { continue };
                probing.remove(&id);
                let Some(target) = targets.get(&id).cloned() else { continue };
                // A deploy or restart holds the lock while it changes containers: its
                // verdicts are about containers on their way out.
                if engine.locks().holder(&target.app).is_some() {
                    tracker.observe(&id, &Verdict::Unknown, berth_state::now_ms());
                    continue;
                }
                if let (Some(upstream), Some(ip), Some(port)) = (&target.upstream, ip, target.service.port) {
                    let addr = std::net::SocketAddr::new(ip, port);
                    if upstream.addr() != addr
                        && engine.repoint_replica(&target.app, &target.service.name, &id, addr).unwrap_or(false)
                    {
                        // The new upstream is watched from the next refresh.
                        refresh_at = 0;
                    }
                }
                let now = berth_state::now_ms();
                for change in tracker.observe(&id, &verdict, now) {
                    match change {
                        Change::Unhealthy { reason, .. } => {
                            if let Some(upstream) = &target.upstream {
                                upstream.set_in_rotation(false);
                                tracker.set_in_rotation(&id, false);
                            }
                            tracing::warn!(app = %target.app, service = %target.service.name, container = %target.container, %reason, "a replica is unhealthy");
                            alerts.signal(Signal::ReplicaUnhealthy {
                                app: target.app.clone(),
                                service: target.service.name.clone(),
                                container: target.container.clone(),
                                reason,
                            });
                        }
                        Change::Recovered { .. } => {
                            if let Some(upstream) = &target.upstream {
                                upstream.set_in_rotation(true);
                                tracker.set_in_rotation(&id, true);
                            }
                            tracing::info!(app = %target.app, service = %target.service.name, container = %target.container, "a replica is healthy again");
                            alerts.signal(Signal::ReplicaRecovered {
                                app: target.app.clone(),
                                service: target.service.name.clone(),
                                container: target.container.clone(),
                            });
                        }
                        Change::Replace { reason, .. } => {
                            tracing::warn!(app = %target.app, service = %target.service.name, container = %target.container, %reason, "replacing an unhealthy replica");
                            let engine = engine.clone();
                            let target = target.clone();
                            replacements.spawn(async move {
                                let result = engine
                                    .replace_replica(&target.app, &target.service.name, &target.container_id, &reason)
                                    .await
                                    .map_err(|e| e.message.clone());
                                (target, reason, result)
                            });
                        }
                    }
                }
                if let Some(health) = tracker.health(&id) {
                    board.set(&id, health.clone());
                }
                if verdict != Verdict::Unknown {
                    let key = (target.app.clone(), target.service.name.clone());
                    let up = tracker.services().get(&key).is_some_and(|c| c.healthy > 0);
                    uptime.record(format!("{}/{}", target.app, target.service.name), up, took);
                }
                service_verdicts(&tracker, &mut verdicts, &alerts);
            }
            Some(done) = replacements.join_next(), if !replacements.is_empty() => {
                // The target travels with the task: by now the old container may be forgotten.
                let Ok((target, reason, result)) = done else { continue };
                tracker.replace_finished(&target.container_id, berth_state::now_ms(), result.is_ok());
                match &result {
                    Ok(fresh) => tracing::info!(app = %target.app, service = %target.service.name, old = %target.container, new = %fresh, "replaced an unhealthy replica"),
                    Err(error) => tracing::warn!(app = %target.app, service = %target.service.name, container = %target.container, %error, "could not replace an unhealthy replica"),
                }
                alerts.signal(Signal::ReplicaReplaced {
                    app: target.app.clone(),
                    service: target.service.name.clone(),
                    container: target.container.clone(),
                    reason,
                    result,
                });
                // The new container is watched from the next refresh.
                refresh_at = 0;
            }
            change = changes.recv() => {
                if !matches!(change, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    refresh_at = 0;
                }
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Which services are down, and which were seen at all (a service first seen healthy is
/// reported up once: an agent that restarted resolves what fired before it).
#[derive(Default)]
struct ServiceVerdicts {
    down: HashSet<(String, String)>,
    seen: HashSet<(String, String)>,
}

/// Tells the alerts when a service has no healthy container left, and when it has one again.
fn service_verdicts(tracker: &Tracker, verdicts: &mut ServiceVerdicts, alerts: &Alerts) {
    let services = tracker.services();
    let ServiceVerdicts { down, seen } = verdicts;
    for ((app, service), count) in &services {
        // No verdict yet (a restarted agent, a new service): nothing to say.
        if count.probed == 0 {
            continue;
        }
        let key = (app.clone(), service.clone());
        let first_sight = seen.insert(key.clone());
        if count.healthy == 0 && count.total > 0 {
            if down.insert(key) {
                alerts.signal(Signal::ServiceDown {
                    app: app.clone(),
                    service: service.clone(),
                });
            }
        } else if down.remove(&key) || first_sight {
            alerts.signal(Signal::ServiceUp {
                app: app.clone(),
                service: service.clone(),
            });
        }
    }
    seen.retain(|k| services.contains_key(k));
    // A service that went away (destroyed, renamed) is no longer down.
    let gone: Vec<(String, String)> = down
        .iter()
        .filter(|k| !services.contains_key(*k))
        .cloned()
        .collect();
    for (app, service) in gone {
        down.remove(&(app.clone(), service.clone()));
        alerts.signal(Signal::Gone {
            rule: "service_down".into(),
            subject: format!("{app}/{service}"),
            app: Some(app),
            why: "no longer watched (its app was stopped or removed, or the service renamed)"
                .into(),
        });
    }
}

fn subject_of(target: &WatchTarget) -> Subject {
    let check = &target.service.healthcheck;
    Subject {
        app: target.app.clone(),
        service: target.service.name.clone(),
        container: target.container.clone(),
        interval: check.interval,
        failure_threshold: check.failure_threshold.max(1),
        restart_after: check.restart_after,
        cpu_limit: target.service.cpus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(threshold: u32, restart_after: Duration) -> Subject {
        Subject {
            app: "shop".into(),
            service: "web".into(),
            container: "shop-web-1".into(),
            interval: Duration::from_secs(5),
            failure_threshold: threshold,
            restart_after,
            cpu_limit: None,
        }
    }

    fn fail() -> Verdict {
        Verdict::Fail("GET /health returned 500".into())
    }

    #[test]
    fn a_replica_turns_unhealthy_after_the_threshold_and_recovers_on_one_pass() {
        let mut tracker = Tracker::default();
        tracker.sync(&[("c1".into(), subject(3, Duration::from_secs(60)))], 0);
        assert!(
            tracker.due(4_999).is_empty(),
            "first probe one interval after the gate"
        );
        assert_eq!(tracker.due(5_000), vec!["c1".to_owned()]);
        assert!(tracker.observe("c1", &fail(), 5_000).is_empty());
        assert!(tracker.observe("c1", &fail(), 10_000).is_empty());
        let health = tracker.health("c1").unwrap();
        assert!(health.healthy, "two failures of three");
        assert_eq!(health.failures_in_row, 2);
        assert_eq!(
            tracker.observe("c1", &fail(), 15_000),
            vec![Change::Unhealthy {
                id: "c1".into(),
                reason: "GET /health returned 500".into()
            }]
        );
        assert_eq!(tracker.health("c1").unwrap().since_ms, 15_000);
        assert!(
            tracker.observe("c1", &fail(), 20_000).is_empty(),
            "one change per state, not one per failure"
        );
        assert_eq!(
            tracker.observe("c1", &Verdict::Pass, 25_000),
            vec![Change::Recovered { id: "c1".into() }]
        );
        let health = tracker.health("c1").unwrap();
        assert!(health.healthy);
        assert_eq!(health.failures_in_row, 0);
        assert_eq!(
            health.last_failure,
            Some((20_000, "GET /health returned 500".into())),
            "the last failure stays visible"
        );
    }

    #[test]
    fn a_pass_between_failures_resets_the_count_and_unknown_changes_nothing() {
        let mut tracker = Tracker::default();
        tracker.sync(&[("c1".into(), subject(2, Duration::ZERO))], 0);
        tracker.observe("c1", &fail(), 5_000);
        tracker.observe("c1", &Verdict::Pass, 10_000);
        assert!(tracker.observe("c1", &fail(), 15_000).is_empty());
        assert!(tracker.observe("c1", &Verdict::Unknown, 20_000).is_empty());
        assert_eq!(tracker.health("c1").unwrap().failures_in_row, 1);
        assert!(!tracker.observe("c1", &fail(), 25_000).is_empty());
    }

    #[test]
    fn an_unhealthy_replica_is_replaced_after_restart_after_once_at_a_time() {
        let mut tracker = Tracker::default();
        tracker.sync(&[("c1".into(), subject(1, Duration::from_secs(60)))], 0);
        assert!(matches!(
            tracker.observe("c1", &fail(), 5_000)[..],
            [Change::Unhealthy { .. }]
        ));
        assert!(
            tracker.observe("c1", &fail(), 60_000).is_empty(),
            "55 s < 1 m"
        );
        let changes = tracker.observe("c1", &fail(), 65_000);
        assert!(
            matches!(&changes[..], [Change::Replace { reason, .. }] if reason.starts_with("unhealthy for 1m")),
            "{changes:?}"
        );
        assert!(
            tracker.observe("c1", &fail(), 70_000).is_empty(),
            "not again while the replacement runs"
        );
        tracker.replace_finished("c1", 75_000, false);
        assert!(
            tracker.observe("c1", &fail(), 130_000).is_empty(),
            "after a failed replacement, the next waits twice restart_after"
        );
        assert!(matches!(
            tracker.observe("c1", &fail(), 195_000)[..],
            [Change::Replace { .. }]
        ));
        tracker.replace_finished("c1", 200_000, false);
        assert!(
            tracker.observe("c1", &fail(), 400_000).is_empty(),
            "then four times"
        );
        assert!(matches!(
            tracker.observe("c1", &fail(), 440_000)[..],
            [Change::Replace { .. }]
        ));
    }

    #[test]
    fn restart_after_zero_never_replaces() {
        let mut tracker = Tracker::default();
        tracker.sync(&[("c1".into(), subject(1, Duration::ZERO))], 0);
        tracker.observe("c1", &fail(), 5_000);
        for t in 2..100 {
            assert!(tracker.observe("c1", &fail(), t * 60_000).is_empty());
        }
    }

    #[test]
    fn sync_forgets_gone_containers_and_counts_services() {
        let mut tracker = Tracker::default();
        tracker.sync(
            &[
                ("c1".into(), subject(1, Duration::ZERO)),
                ("c2".into(), subject(1, Duration::ZERO)),
            ],
            0,
        );
        tracker.observe("c1", &fail(), 5_000);
        assert_eq!(
            tracker.services()[&("shop".to_owned(), "web".to_owned())],
            ServiceCount {
                healthy: 1,
                total: 2,
                probed: 1
            }
        );
        let gone = tracker.sync(&[("c3".into(), subject(1, Duration::ZERO))], 6_000);
        assert_eq!(gone.len(), 2);
        assert!(tracker.health("c1").is_none());
        assert_eq!(
            tracker.services()[&("shop".to_owned(), "web".to_owned())],
            ServiceCount {
                healthy: 1,
                total: 1,
                probed: 0
            }
        );
    }

    #[test]
    fn service_verdicts_fire_once_per_change() {
        let alerts = Alerts::for_tests();
        let mut tracker = Tracker::default();
        let mut verdicts = ServiceVerdicts::default();
        tracker.sync(&[("c1".into(), subject(1, Duration::ZERO))], 0);
        tracker.observe("c1", &fail(), 5_000);
        service_verdicts(&tracker, &mut verdicts, &alerts);
        service_verdicts(&tracker, &mut verdicts, &alerts);
        tracker.observe("c1", &Verdict::Pass, 10_000);
        service_verdicts(&tracker, &mut verdicts, &alerts);
        service_verdicts(&tracker, &mut verdicts, &alerts);
        assert_eq!(
            alerts.signals_seen(),
            vec![
                Signal::ServiceDown {
                    app: "shop".into(),
                    service: "web".into()
                },
                Signal::ServiceUp {
                    app: "shop".into(),
                    service: "web".into()
                },
            ]
        );
    }

    #[test]
    fn a_service_first_seen_healthy_is_reported_up_once() {
        let alerts = Alerts::for_tests();
        let mut tracker = Tracker::default();
        let mut verdicts = ServiceVerdicts::default();
        tracker.sync(&[("c1".into(), subject(1, Duration::ZERO))], 0);
        service_verdicts(&tracker, &mut verdicts, &alerts);
        assert!(
            alerts.signals_seen().is_empty(),
            "nothing is said before a verdict"
        );
        tracker.observe("c1", &Verdict::Pass, 5_000);
        service_verdicts(&tracker, &mut verdicts, &alerts);
        service_verdicts(&tracker, &mut verdicts, &alerts);
        assert_eq!(
            alerts.signals_seen(),
            vec![Signal::ServiceUp {
                app: "shop".into(),
                service: "web".into()
            }]
        );
    }

    /// Waits up to 10 s for `done`.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} did not happen within 10 s");
    }

    #[tokio::test]
    async fn the_worker_takes_a_failing_replica_out_of_rotation_and_replaces_it() {
        let h = berth_engine::testing::Harness::new();
        let text = r#"app = "shop"
[services.web]
image = "example/web:1"
port = 8080
replicas = 2
healthcheck = { command = ["check"], interval = "100ms", failure_threshold = 2, restart_after = "1s" }
"#;
        h.deployed(text, "v1").await;
        let live = h.engine.live_app("shop").unwrap();
        let (sick_id, sick) = live.upstreams["web"][0].clone();
        let sick_name = sick.name().to_owned();
        let failing = sick_name.clone();
        h.fake.on_exec(move |container, _| {
            if container.spec.name == failing {
                (1, "check failed: database unreachable".into())
            } else {
                (0, String::new())
            }
        });
        let alerts = Arc::new(Alerts::for_tests());
        let (engine, watcher_alerts) = (h.engine.clone(), alerts.clone());
        let uptime = Arc::new(crate::uptime::Uptime::default());
        let recorded = uptime.clone();
        h.engine.workers().spawn("health checks", |report, stop| {
            watch(engine, watcher_alerts, recorded, report, stop.stopped())
        });
        eventually("the sick replica leaving rotation", || !sick.in_rotation()).await;
        let board = h.engine.health_board().get(&sick_id).unwrap();
        assert!(!board.healthy && !board.in_rotation);
        assert_eq!(
            board.last_failure.map(|(_, why)| why),
            Some("`check` exited with 1: check failed: database unreachable".to_owned())
        );
        eventually("the sick replica being replaced", || {
            h.engine
                .live_app("shop")
                .is_some_and(|l| l.upstreams["web"].iter().all(|(id, _)| *id != sick_id))
        })
        .await;
        assert_eq!(h.engine.live_app("shop").unwrap().upstreams["web"].len(), 2);
        uptime.flush(h.engine.store()).unwrap();
        let now = berth_state::now_ms();
        let day = h
            .engine
            .store()
            .uptime_since("shop/web", now - 86_400_000, now)
            .unwrap();
        assert!(
            day.checks > 0 && day.ups == day.checks,
            "one sick replica of two never took the service down: {day:?}"
        );
        eventually("the replacement being told", || {
            alerts.signals_seen().iter().any(|s| {
                matches!(s, Signal::ReplicaReplaced { container, result: Ok(_), .. } if *container == sick_name)
            })
        })
        .await;
        assert!(
            !alerts
                .signals_seen()
                .iter()
                .any(|s| matches!(s, Signal::ServiceDown { .. })),
            "one healthy replica kept the service up"
        );
    }
}
