//! `[thresholds.NAME]` of the live releases (`cpu > 80% for 10m`): each is read from the
//! last samples of the host and of the containers (what `berth top` shows), and fires a
//! `threshold` alert once it has held for its duration; it resolves at the first reading
//! that is back within the limit.

use crate::alerts::{Alerts, Signal};
use berth_api::TopAnswer;
use berth_engine::Engine;
use berth_manifest::{Limit, Manifest, Metric, Threshold};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub const RULE: &str = "threshold";
const CHECK_EVERY: Duration = Duration::from_secs(15);

/// One thing a threshold watches: its alert's subject, and the reading now when there is
/// one (a service without a running container, or a host not sampled twice yet, has none).
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    pub subject: String,
    /// What is measured, for messages (`shop/web's cpu, of its limit`).
    pub what: String,
    pub reading: Option<f64>,
}

/// What a threshold of `app` watches now.
pub fn watched(
    app: &str,
    manifest: &Manifest,
    threshold: &Threshold,
    top: &TopAnswer,
) -> Vec<Watched> {
    let name = &threshold.name;
    let condition = &threshold.condition;
    if condition.metric.per_service() {
        return manifest
            .services
            .keys()
            .chain(manifest.accessories.keys())
            .filter(|s| threshold.service.as_ref().is_none_or(|t| t == *s))
            .map(|service| {
                let replicas = top
                    .containers
                    .iter()
                    .filter(|c| c.app == app && c.service == *service);
                let (reading, what) = match (condition.metric, condition.limit) {
                    (Metric::Cpu, _) => (
                        replicas
                            .filter_map(|c| c.cpu_limit_percent.or(c.cpu_percent))
                            .reduce(f64::max),
                        "cpu (of its cpus limit, or of one core)",
                    ),
                    (_, Limit::Percent(_)) => (
                        replicas
                            .filter_map(|c| c.memory_limit_percent)
                            .reduce(f64::max),
                        "memory (of its limit)",
                    ),
                    _ => (
                        replicas.map(|c| c.memory_bytes as f64).reduce(f64::max),
                        "memory",
                    ),
                };
                Watched {
                    subject: format!("{app}/{service} {name}"),
                    what: format!("{app}/{service}'s {what}"),
                    reading,
                }
            })
            .collect();
    }
    let host = &top.host;
    let percent = |used: u64, total: u64| (total > 0).then(|| 100.0 * used as f64 / total as f64);
    let sampled = host.memory_total_bytes > 0;
    let one = |what: &str, reading: Option<f64>| {
        vec![Watched {
            subject: format!("{app} {name}"),
            what: what.to_owned(),
            reading: reading.filter(|_| sampled),
        }]
    };
    match condition.metric {
        Metric::HostCpu => one("the host's cpu", host.cpu_percent),
        Metric::HostMemory => one(
            "the host's memory in use",
            percent(host.memory_used_bytes, host.memory_total_bytes),
        ),
        Metric::HostSwap => one(
            "the host's swap in use",
            // No swap is none in use.
            percent(host.swap_used_bytes, host.swap_total_bytes).or(Some(0.0)),
        ),
        Metric::HostLoad => one("the host's 1-minute load", Some(host.load[0])),
        Metric::Disk => host
            .filesystems
            .iter()
            .map(|fs| Watched {
                subject: format!("{app} {name} ({} data)", fs.purpose),
                what: format!("the use of {}'s data filesystem", fs.purpose),
                reading: Some(fs.used_percent),
            })
            .collect(),
        Metric::Cpu | Metric::Memory => Vec::new(),
    }
}

/// When each subject's condition started to hold, and which fire: plain data on the caller's
/// clock (Unix milliseconds).
#[derive(Default)]
pub struct Sustained {
    since: HashMap<String, i64>,
    firing: HashMap<String, Option<String>>,
}

impl Sustained {
    /// Takes up what fired before the agent restarted (subject and app), so it can resolve.
    pub fn resume(&mut self, firing: impl IntoIterator<Item = (String, Option<String>)>) {
        self.firing.extend(firing);
    }

    /// A reading of a subject: `Some(true)` when its alert fires now, `Some(false)` when it
    /// resolves, `None` when nothing changes.
    pub fn observe(
        &mut self,
        subject: &str,
        holds: bool,
        lasting: Duration,
        now: i64,
        app: &str,
    ) -> Option<bool> {
        if holds {
            let since = *self.since.entry(subject.to_owned()).or_insert(now);
            let lasting = i64::try_from(lasting.as_millis()).unwrap_or(i64::MAX);
            if !self.firing.contains_key(subject) && now - since >= lasting {
                self.firing.insert(subject.to_owned(), Some(app.to_owned()));
                return Some(true);
            }
            None
        } else {
            self.since.remove(subject);
            self.firing.remove(subject).map(|_| false)
        }
    }

    /// Firing subjects that are no longer watched (a threshold, service or app removed):
    /// they stop firing here, and the caller says why.
    pub fn forget_except(
        &mut self,
        watched: &std::collections::HashSet<String>,
    ) -> Vec<(String, Option<String>)> {
        self.since.retain(|s, _| watched.contains(s));
        let gone: Vec<String> = self
            .firing
            .keys()
            .filter(|s| !watched.contains(*s))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|s| self.firing.remove_entry(&s))
            .collect()
    }
}

/// One round: every threshold of every live app against `top`; the signals to send.
pub fn round(
    manifests: &BTreeMap<String, Manifest>,
    top: &TopAnswer,
    sustained: &mut Sustained,
    now: i64,
) -> Vec<Signal> {
    let mut signals = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (app, manifest) in manifests {
        for threshold in &manifest.thresholds {
            let condition = &threshold.condition;
            for watched in watched(app, manifest, threshold, top) {
                seen.insert(watched.subject.clone());
                // Without a reading nothing changes: not firing, not resolving.
                let Some(reading) = watched.reading else {
                    continue;
                };
                let change = sustained.observe(
                    &watched.subject,
                    condition.holds(reading),
                    condition.lasting,
                    now,
                    app,
                );
                let problem = match change {
                    None => continue,
                    Some(true) => Some((
                        threshold.severity,
                        format!(
                            "{} is {} ({condition}, threshold `{}` of berth.toml)",
                            watched.what,
                            condition.limit.show_reading(reading),
                            threshold.name
                        ),
                    )),
                    Some(false) => None,
                };
                signals.push(Signal::Condition {
                    rule: RULE,
                    app: Some(app.clone()),
                    subject: watched.subject,
                    problem,
                    notify_resolved: true,
                });
            }
        }
    }
    // Before the host's first sample its filesystems are unknown: a disk alert that fired
    // before a restart is not "gone" yet.
    if top.host.memory_total_bytes == 0 {
        return signals;
    }
    for (subject, app) in sustained.forget_except(&seen) {
        signals.push(Signal::Gone {
            rule: RULE.into(),
            app,
            subject,
            why: "no longer watched (its threshold, service or app is gone or stopped)".into(),
        });
    }
    signals
}

/// The thresholds worker, until `stop`.
pub async fn watch(
    engine: Arc<Engine>,
    host: Arc<crate::HostMetrics>,
    containers: Arc<crate::ContainerMetrics>,
    alerts: Arc<Alerts>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut sustained = Sustained::default();
    if let Ok(firing) = engine.store().firing_alerts() {
        sustained.resume(
            firing
                .into_iter()
                .filter(|a| a.rule == RULE)
                .map(|a| (a.subject, a.app)),
        );
    }
    loop {
        let now = berth_state::now_ms();
        let manifests = crate::live::manifests(&engine);
        let top = crate::top::top(&host, &containers, None);
        let signals = round(&manifests, &top, &mut sustained, now);
        let count: usize = manifests.values().map(|m| m.thresholds.len()).sum();
        for signal in signals {
            alerts.signal(signal);
        }
        report.idle(
            Some(now + i64::try_from(CHECK_EVERY.as_millis()).unwrap_or(15_000)),
            Some(format!("{count} thresholds watched")),
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
    use berth_api::{ContainerTop, FilesystemTop, HostTop};

    fn manifest(thresholds: &str) -> Manifest {
        let text = format!(
            "app = \"shop\"\n[services.web]\nimage = \"shop:1\"\nport = 8080\nmemory = \"100m\"\ncpus = 0.5\n[services.worker]\nimage = \"shop:1\"\n{thresholds}"
        );
        berth_engine::testing::manifest(&text)
    }

    fn container(service: &str, cpu: f64, memory: u64) -> ContainerTop {
        ContainerTop {
            app: "shop".into(),
            service: service.into(),
            container: format!("shop-{service}-1"),
            cpu_percent: Some(cpu),
            cpu_limit_percent: (service == "web").then_some(cpu * 2.0),
            memory_bytes: memory,
            memory_limit_bytes: (service == "web").then_some(100 << 20),
            memory_limit_percent: (service == "web")
                .then(|| 100.0 * memory as f64 / (100 << 20) as f64),
            net_rx_rate: None,
            net_tx_rate: None,
            disk_read_rate: None,
            disk_write_rate: None,
            oom_kills: None,
            restarts: 0,
        }
    }

    fn top(containers: Vec<ContainerTop>, disk: f64) -> TopAnswer {
        TopAnswer {
            sampled_at: Some(0),
            host: HostTop {
                cpus: 2,
                cpu_percent: Some(50.0),
                load: [1.0, 1.0, 1.0],
                memory_used_bytes: 900,
                memory_total_bytes: 1000,
                swap_used_bytes: 0,
                swap_total_bytes: 0,
                filesystems: vec![FilesystemTop {
                    purpose: "berth".into(),
                    mountpoint: "/".into(),
                    used_percent: disk,
                    avail_bytes: 1,
                }],
                gpus: Vec::new(),
            },
            containers,
        }
    }

    fn summary(signal: &Signal) -> (String, Option<String>) {
        match signal {
            Signal::Condition {
                subject, problem, ..
            } => (subject.clone(), problem.as_ref().map(|p| p.1.clone())),
            Signal::Gone { subject, why, .. } => (subject.clone(), Some(format!("gone: {why}"))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_threshold_fires_once_it_has_held_for_its_duration_and_resolves_at_once() {
        let manifests = BTreeMap::from([(
            "shop".to_owned(),
            manifest("[thresholds.web-cpu]\nservice = \"web\"\nwhen = \"cpu > 80% for 10m\"\n"),
        )]);
        let minute = 60_000;
        let mut sustained = Sustained::default();
        // 45 % of one core is 90 % of web's half core.
        let busy = top(vec![container("web", 45.0, 1 << 20)], 10.0);
        assert!(round(&manifests, &busy, &mut sustained, 0).is_empty());
        assert!(round(&manifests, &busy, &mut sustained, 9 * minute).is_empty());
        let fired = round(&manifests, &busy, &mut sustained, 10 * minute);
        assert_eq!(fired.len(), 1);
        let (subject, problem) = summary(&fired[0]);
        assert_eq!(subject, "shop/web web-cpu");
        let problem = problem.unwrap();
        assert!(
            problem.contains("is 90%") && problem.contains("cpu > 80% for 10m"),
            "{problem}"
        );
        assert!(
            round(&manifests, &busy, &mut sustained, 11 * minute).is_empty(),
            "once"
        );
        // No container running: no reading, nothing changes.
        assert!(round(&manifests, &top(vec![], 10.0), &mut sustained, 12 * minute).is_empty());
        let calm = top(vec![container("web", 10.0, 1 << 20)], 10.0);
        let resolved = round(&manifests, &calm, &mut sustained, 13 * minute);
        assert_eq!(summary(&resolved[0]), ("shop/web web-cpu".to_owned(), None));
        // A dip restarts the clock.
        round(&manifests, &busy, &mut sustained, 14 * minute);
        round(&manifests, &calm, &mut sustained, 20 * minute);
        assert!(round(&manifests, &busy, &mut sustained, 24 * minute + 1).is_empty());
    }

    #[test]
    fn each_service_and_filesystem_is_its_own_subject_and_removal_resolves() {
        let manifests = BTreeMap::from([(
            "shop".to_owned(),
            manifest(
                "[thresholds.big]\nwhen = \"memory > 10MB\"\n[thresholds.disk]\nwhen = \"disk > 1%\"\nseverity = \"critical\"\n",
            ),
        )]);
        let mut sustained = Sustained::default();
        let now = top(
            vec![
                container("web", 1.0, 20 << 20),
                container("worker", 1.0, 30 << 20),
            ],
            42.0,
        );
        let mut fired: Vec<(String, Option<String>)> = round(&manifests, &now, &mut sustained, 0)
            .iter()
            .map(summary)
            .collect();
        fired.sort();
        assert_eq!(
            fired.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
            ["shop disk (berth data)", "shop/web big", "shop/worker big"]
        );
        assert!(
            fired[0]
                .1
                .as_deref()
                .unwrap()
                .contains("berth's data filesystem is 42%")
        );
        assert!(
            fired[2].1.as_deref().unwrap().contains("is 30m"),
            "{:?}",
            fired[2]
        );
        // The thresholds leave berth.toml: each firing alert resolves, saying why.
        let gone = round(
            &BTreeMap::from([("shop".to_owned(), manifest(""))]),
            &now,
            &mut sustained,
            1,
        );
        assert_eq!(gone.len(), 3);
        assert!(gone.iter().all(|g| matches!(g, Signal::Gone { .. })));
    }

    #[test]
    fn a_resumed_disk_alert_waits_for_the_hosts_first_sample() {
        let manifests = BTreeMap::from([(
            "shop".to_owned(),
            manifest("[thresholds.disk]\nwhen = \"disk > 80%\"\n"),
        )]);
        let mut sustained = Sustained::default();
        sustained.resume([("shop disk (berth data)".to_owned(), Some("shop".to_owned()))]);
        let mut unsampled = top(vec![], 90.0);
        unsampled.host = HostTop::default();
        assert!(round(&manifests, &unsampled, &mut sustained, 0).is_empty());
        assert!(
            round(&manifests, &top(vec![], 90.0), &mut sustained, 15_000).is_empty(),
            "still full: it keeps firing"
        );
        let resolved = round(&manifests, &top(vec![], 50.0), &mut sustained, 30_000);
        assert_eq!(
            summary(&resolved[0]),
            ("shop disk (berth data)".to_owned(), None)
        );
    }

    #[test]
    fn a_resumed_alert_resolves_when_the_reading_is_fine() {
        let manifests = BTreeMap::from([(
            "shop".to_owned(),
            manifest("[thresholds.mem]\nwhen = \"host.memory > 95%\"\n"),
        )]);
        let mut sustained = Sustained::default();
        sustained.resume([("shop mem".to_owned(), Some("shop".to_owned()))]);
        let signals = round(&manifests, &top(vec![], 1.0), &mut sustained, 0);
        assert_eq!(summary(&signals[0]), ("shop mem".to_owned(), None));
    }
}
