//! `GET /health` on the agent's metrics listener: the IETF draft "Health Check Response Format
//! for HTTP APIs" (`application/health+json`), for outside uptime monitors. It is served
//! without authentication, so it carries a verdict per name and nothing else: no error text,
//! no container ids, no paths, no secrets.

use crate::Status;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The media type of a [`HealthReport`].
pub const HEALTH_JSON: &str = "application/health+json";

/// A check's verdict, worst last (so the overall verdict is the maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// The whole answer: the overall verdict and one check per name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: Verdict,
    pub description: String,
    /// Keyed `component:measurement`, as the draft names them (`shop/web:replicas`,
    /// `shop/backup db:last-run`, `shop.example:certificate`, `docker:reachable`).
    pub checks: BTreeMap<String, Vec<HealthCheck>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `component` (a service or accessory), `backup`, `certificate` or `system`.
    pub component_type: String,
    pub status: Verdict,
}

impl Default for HealthReport {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthReport {
    /// The HTTP status the draft asks for: 200 while nothing fails, 503 once something does.
    pub fn http_status(&self) -> u16 {
        match self.status {
            Verdict::Pass | Verdict::Warn => 200,
            Verdict::Fail => 503,
        }
    }

    /// A report of one failing system check, for when the agent cannot say more (its own
    /// state or Docker did not answer in time).
    pub fn failing(measurement: &str) -> Self {
        let mut report = HealthReport::new();
        report.add(measurement, "system", Verdict::Fail);
        report
    }

    /// A report with no checks yet: it passes until one is added that does not.
    pub fn new() -> Self {
        HealthReport {
            status: Verdict::Pass,
            description: "berth agent".to_owned(),
            checks: BTreeMap::new(),
        }
    }

    /// Adds a check; the overall verdict becomes the worse of the two.
    pub fn add(&mut self, name: &str, component_type: &str, status: Verdict) {
        self.status = self.status.max(status);
        self.checks
            .entry(name.to_owned())
            .or_default()
            .push(HealthCheck {
                component_type: component_type.to_owned(),
                status,
            });
    }
}

/// A filesystem's verdict by the share of it in use (0 to 1): warn from 90 %, fail from 98 %,
/// where writes (the state file, images, backups being staged) are about to fail.
pub fn disk_verdict(used_fraction: f64) -> Verdict {
    if used_fraction >= 0.98 {
        Verdict::Fail
    } else if used_fraction >= 0.90 {
        Verdict::Warn
    } else {
        Verdict::Pass
    }
}

/// Certificates expiring sooner than this warn.
const CERTIFICATE_WARN_SECONDS: i64 = 14 * 24 * 3600;

impl Status {
    /// The outside monitors' view of this status. A check fails where something is down or
    /// lost: a running app's service with no healthy replica, a backup whose last run failed
    /// or whose copies failed verification, a certificate failing or expired, Docker out of
    /// reach. It warns where something is degraded: some but not all replicas healthy (which
    /// [`Status::find_problems`] already counts as a problem), an app stopped on purpose, a
    /// certificate pending or expiring within 14 days. A `[monitors]` check fails while its
    /// alert fires and warns after a failed check below its threshold. `now` is Unix seconds.
    pub fn health_report(&self, now: i64) -> HealthReport {
        let mut report = HealthReport::new();
        let docker = if self.agent.docker.error.is_some() {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
        report.add("docker:reachable", "system", docker);
        for app in &self.apps {
            for service in &app.services {
                let healthy = service.healthy_replicas();
                let desired = service.desired_replicas as usize;
                let verdict = if app.stopped {
                    Verdict::Warn
                } else if healthy >= desired {
                    Verdict::Pass
                } else if healthy > 0 {
                    // Still serving: degraded, not down.
                    Verdict::Warn
                } else {
                    Verdict::Fail
                };
                report.add(
                    &format!("{}/{}:replicas", app.name, service.name),
                    "component",
                    verdict,
                );
            }
            for backup in &app.backups {
                let last_run_failed = backup
                    .last_run
                    .as_ref()
                    .is_some_and(|run| !run.status.is_good());
                let verdict = if last_run_failed || !backup.failing_copies.is_empty() {
                    Verdict::Fail
                } else {
                    Verdict::Pass
                };
                report.add(
                    &format!("{}/backup {}:last-run", app.name, backup.name),
                    "backup",
                    verdict,
                );
            }
        }
        for monitor in &self.monitors {
            let verdict = if monitor.firing {
                Verdict::Fail
            } else if monitor.failure.is_some() {
                Verdict::Warn
            } else {
                Verdict::Pass
            };
            report.add(
                &format!("{}/monitor {}:check", monitor.app, monitor.name),
                "monitor",
                verdict,
            );
        }
        for certificate in &self.certificates {
            let verdict = match certificate.state.as_str() {
                "failing" | "expired" => Verdict::Fail,
                "pending" => Verdict::Warn,
                _ if certificate
                    .not_after
                    .is_some_and(|end| end - now < CERTIFICATE_WARN_SECONDS) =>
                {
                    Verdict::Warn
                }
                _ => Verdict::Pass,
            };
            report.add(
                &format!("{}:certificate", certificate.domain),
                "certificate",
                verdict,
            );
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::app;

    fn status(
        apps: Vec<serde_json::Value>,
        certificates: serde_json::Value,
        docker_error: Option<&str>,
    ) -> Status {
        serde_json::from_value(serde_json::json!({
            "agent": { "version": "0", "data_dir": "/d", "pid": 1, "http": null, "https": null,
                "docker": { "endpoint": "unix:///x", "version": null, "error": docker_error } },
            "apps": apps,
            "certificates": certificates,
        }))
        .unwrap()
    }

    fn certificate(domain: &str, state: &str, not_after: i64) -> serde_json::Value {
        serde_json::json!({ "domain": domain, "source": "acme", "state": state,
            "not_after": not_after, "issuer": null, "last_error": "secret detail",
            "next_attempt": null })
    }

    fn verdict(report: &HealthReport, name: &str) -> Verdict {
        report.checks[name][0].status
    }

    const NOW: i64 = 2_000_000_000;
    const DAY: i64 = 24 * 3600;

    #[test]
    fn each_name_gets_a_verdict_and_the_worst_one_decides() {
        let all_well = status(
            vec![app("shop", false, "healthy", Some("ok"))],
            serde_json::json!([certificate("shop.example", "valid", NOW + 60 * DAY)]),
            None,
        );
        let report = all_well.health_report(NOW);
        assert_eq!(report.status, Verdict::Pass);
        assert_eq!(report.http_status(), 200);
        let names: Vec<&str> = report.checks.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "docker:reachable",
                "shop.example:certificate",
                "shop/backup db:last-run",
                "shop/web:replicas"
            ]
        );

        let degraded = status(
            vec![
                app("shop", false, "unhealthy", Some("ok")),
                app("blog", true, "stopped", None),
            ],
            serde_json::json!([certificate("shop.example", "valid", NOW + 3 * DAY)]),
            None,
        );
        let report = degraded.health_report(NOW);
        assert_eq!(
            verdict(&report, "shop/web:replicas"),
            Verdict::Warn,
            "1 of 2 still serves"
        );
        assert_eq!(
            verdict(&report, "blog/web:replicas"),
            Verdict::Warn,
            "stopped on purpose"
        );
        assert_eq!(
            verdict(&report, "shop.example:certificate"),
            Verdict::Warn,
            "3 days left"
        );
        assert_eq!((report.status, report.http_status()), (Verdict::Warn, 200));

        let down = status(
            vec![app("shop", false, "healthy", Some("failed"))],
            serde_json::json!([certificate("shop.example", "expired", NOW - DAY)]),
            Some("connection refused"),
        );
        let report = down.health_report(NOW);
        assert_eq!(verdict(&report, "shop/backup db:last-run"), Verdict::Fail);
        assert_eq!(verdict(&report, "shop.example:certificate"), Verdict::Fail);
        assert_eq!(verdict(&report, "docker:reachable"), Verdict::Fail);
        assert_eq!((report.status, report.http_status()), (Verdict::Fail, 503));
    }

    #[test]
    fn a_disk_warns_from_ninety_percent_and_fails_from_ninety_eight() {
        assert_eq!(disk_verdict(0.5), Verdict::Pass);
        assert_eq!(disk_verdict(0.899), Verdict::Pass);
        assert_eq!(disk_verdict(0.9), Verdict::Warn);
        assert_eq!(disk_verdict(0.979), Verdict::Warn);
        assert_eq!(disk_verdict(0.98), Verdict::Fail);
        let mut report = HealthReport::new();
        report.add("berth data:disk", "system", Verdict::Warn);
        assert_eq!((report.status, report.http_status()), (Verdict::Warn, 200));
    }

    #[test]
    fn a_service_with_no_healthy_replica_fails() {
        let mut down = status(
            vec![app("shop", false, "unhealthy", None)],
            serde_json::json!([]),
            None,
        );
        for replica in &mut down.apps[0].services[0].replicas {
            replica.health = crate::Health::Unhealthy;
        }
        let report = down.health_report(NOW);
        assert_eq!(verdict(&report, "shop/web:replicas"), Verdict::Fail);
        assert_eq!(report.http_status(), 503);
    }

    #[test]
    fn the_report_says_pass_warn_or_fail_and_nothing_else() {
        let down = status(
            vec![app("shop", false, "unhealthy", Some("failed"))],
            serde_json::json!([certificate("shop.example", "failing", NOW)]),
            Some("permission denied on /var/run/docker.sock"),
        );
        let wire = serde_json::to_string(&down.health_report(NOW)).unwrap();
        for secret in [
            "secret detail",
            "docker.sock",
            "permission",
            "/d",
            "unix:///x",
        ] {
            assert!(!wire.contains(secret), "{secret} leaked into {wire}");
        }
        assert!(wire.contains("\"componentType\":\"certificate\""), "{wire}");
    }
}
