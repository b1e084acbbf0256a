//! Alerts from berth's own records, read every 15 s (nothing here calls Docker): backups
//! that failed, whose copies failed verification or that missed their schedule; certificates
//! expiring within 14 days, failing to renew or expired; deploys that failed.

use crate::alerts::{Alerts, Signal};
use berth_api::{BackupStatus, CertificateInfo, RunStatus};
use berth_engine::Engine;
use berth_manifest::Severity;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the records are read.
pub const CHECK_EVERY: Duration = Duration::from_secs(15);
/// A certificate expiring within this many days is an alert.
pub const CERTIFICATE_DAYS: i64 = 14;
/// A scheduled backup this late is overdue.
pub const BACKUP_GRACE: Duration = Duration::from_secs(3600);

/// What a backup's record says is wrong, if anything.
pub fn backup_problem(backup: &BackupStatus, now_ms: i64) -> Option<(Severity, String)> {
    if let Some(run) = &backup.last_run
        && !run.status.is_good()
        && run.status != RunStatus::Running
    {
        return Some((
            Severity::Critical,
            format!(
                "its last {} {}: {} (`berth backup list` and `berth status` show more)",
                run.operation,
                run.status,
                run.error.as_deref().unwrap_or("no detail")
            ),
        ));
    }
    if !backup.failing_copies.is_empty() {
        return Some((
            Severity::Critical,
            format!(
                "{} copies failed verification: {}",
                backup.failing_copies.len(),
                backup.failing_copies.join(", ")
            ),
        ));
    }
    let grace = i64::try_from(BACKUP_GRACE.as_millis()).unwrap_or(i64::MAX);
    if backup.schedule.is_some()
        && let Some(next) = backup.next_run
        && now_ms - next > grace
    {
        return Some((
            Severity::Critical,
            format!(
                "it did not run at its scheduled time ({}); the last good one is from {}",
                berth_core::locks::format_time(next),
                backup
                    .last_ok
                    .map(berth_core::locks::format_time)
                    .unwrap_or_else(|| "never".into())
            ),
        ));
    }
    None
}

/// What a certificate's record says is wrong, if anything.
pub fn certificate_problem(cert: &CertificateInfo, now_s: i64) -> Option<(Severity, String)> {
    let days_left = cert.not_after.map(|t| (t - now_s).div_euclid(86_400));
    let error = cert
        .last_error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    match cert.state.as_str() {
        "expired" => Some((
            Severity::Critical,
            format!("the certificate of {} has expired{error}", cert.domain),
        )),
        "failing" => Some((
            Severity::Critical,
            format!(
                "the certificate of {} cannot be obtained or renewed{error}{}",
                cert.domain,
                days_left
                    .map(|d| format!(" ({d} days left)"))
                    .unwrap_or_default()
            ),
        )),
        _ => match days_left {
            Some(days) if days < CERTIFICATE_DAYS => Some((
                Severity::Warning,
                format!(
                    "the certificate of {} expires in {days} days and has not been renewed{}",
                    cert.domain,
                    if cert.source == "files" {
                        " (it comes from files: renew it where it is made)"
                    } else {
                        ""
                    }
                ),
            )),
            _ => None,
        },
    }
}

/// The checks worker: every [`CHECK_EVERY`], a signal per backup, certificate and new failed
/// deploy, until `stop`.
pub async fn watch(
    engine: Arc<Engine>,
    alerts: Arc<Alerts>,
    report: berth_workers::Reporter,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    // The newest failed release of each app already told (or failed before this agent).
    let mut told: HashMap<String, i64> = HashMap::new();
    let mut first = true;
    loop {
        let now = berth_state::now_ms();
        for signal in signals(&engine, now, &mut told, first) {
            alerts.signal(signal);
        }
        first = false;
        report.idle(
            Some(now + i64::try_from(CHECK_EVERY.as_millis()).unwrap_or(60_000)),
            None,
        );
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// One pass over the records. On the `first` pass, failed deploys are only noted: they
/// happened before this agent started, and were told then.
pub fn signals(
    engine: &Engine,
    now_ms: i64,
    told: &mut HashMap<String, i64>,
    first: bool,
) -> Vec<Signal> {
    let mut signals = Vec::new();
    let apps = engine.store().apps().unwrap_or_default();
    for app in &apps {
        if let Ok(Some(live)) = engine.store().live_release(&app.name)
            && let Ok(manifest) = berth_core::release_manifest(&live)
        {
            for backup in engine.backups().backup_status(&manifest) {
                let problem = backup_problem(&backup, now_ms);
                signals.push(Signal::Condition {
                    rule: "backup_failed",
                    app: Some(app.name.clone()),
                    subject: format!("{}/backup {}", app.name, backup.name),
                    problem: problem.map(|(severity, text)| {
                        (
                            severity,
                            format!("{} backup {}: {text}", app.name, backup.name),
                        )
                    }),
                    notify_resolved: true,
                });
            }
        }
        if let Ok(Some(newest)) = engine
            .store()
            .releases(&app.name, 1)
            .map(|r| r.into_iter().next())
            && newest.status == berth_state::ReleaseStatus::Failed
            && told.get(&app.name) != Some(&newest.number)
        {
            told.insert(app.name.clone(), newest.number);
            if !first {
                signals.push(Signal::DeployFailed {
                    app: app.name.clone(),
                    release: newest.number,
                    error: newest.error.clone().unwrap_or_else(|| "no detail".into()),
                });
            }
        }
    }
    // Alerts of an app that is no longer here end with it.
    if let Ok(firing) = engine.store().firing_alerts() {
        for alert in firing {
            if let Some(app) = &alert.app
                && !apps.iter().any(|a| a.name == *app)
            {
                signals.push(Signal::Gone {
                    rule: alert.rule.clone(),
                    app: Some(app.clone()),
                    subject: alert.subject.clone(),
                    why: format!("{app} was removed from this server"),
                });
            }
        }
    }
    // A certificate is the concern of the apps that route its domain (no other app's
    // channels hear of it); one no app routes any more is the host's.
    let mut routed: HashMap<String, Vec<String>> = HashMap::new();
    for app in &apps {
        if let Some(live) = engine.live_app(&app.name) {
            for service in live.manifest.web_services() {
                for domain in service.route.iter().flat_map(|r| r.domains.iter()) {
                    routed
                        .entry(domain.to_ascii_lowercase())
                        .or_default()
                        .push(app.name.clone());
                }
            }
        }
    }
    for cert in engine.routing().edge().certificates() {
        let owners: Vec<Option<String>> = match routed.get(&cert.domain.to_ascii_lowercase()) {
            Some(apps) => apps.iter().cloned().map(Some).collect(),
            None => vec![None],
        };
        let problem = certificate_problem(&cert, now_ms / 1000);
        for app in owners {
            signals.push(Signal::Condition {
                rule: "certificate",
                subject: match &app {
                    Some(app) => format!("{app}/{}", cert.domain),
                    None => cert.domain.clone(),
                },
                app,
                problem: problem.clone(),
                notify_resolved: true,
            });
        }
    }
    signals
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::BackupRunInfo;

    fn backup(last_run: Option<RunStatus>, next_run: Option<i64>) -> BackupStatus {
        BackupStatus {
            name: "db".into(),
            schedule: Some("0 3 * * *".into()),
            next_run,
            last_ok: Some(0),
            last_run: last_run.map(|status| BackupRunInfo {
                operation: "backup".into(),
                status,
                started_at: 0,
                finished_at: Some(1),
                backup_id: None,
                cause: None,
                error: Some("the bucket refused the upload".into()),
            }),
            failing_copies: Vec::new(),
        }
    }

    #[test]
    fn a_backup_is_a_problem_when_it_failed_its_copies_failed_or_it_missed_its_time() {
        let hour = 3_600_000;
        assert_eq!(
            backup_problem(&backup(Some(RunStatus::Ok), Some(10 * hour)), 0),
            None
        );
        let (severity, text) =
            backup_problem(&backup(Some(RunStatus::Failed), Some(10 * hour)), 0).unwrap();
        assert_eq!(severity, Severity::Critical);
        assert!(text.contains("the bucket refused the upload"), "{text}");
        let mut copies = backup(None, Some(10 * hour));
        copies.failing_copies = vec!["offsite".into()];
        assert!(backup_problem(&copies, 0).unwrap().1.contains("offsite"));
        assert_eq!(
            backup_problem(&backup(None, Some(10 * hour)), 10 * hour + hour / 2),
            None,
            "within the hour's grace"
        );
        assert!(
            backup_problem(&backup(None, Some(10 * hour)), 12 * hour)
                .unwrap()
                .1
                .contains("did not run at its scheduled time")
        );
        assert_eq!(
            backup_problem(&backup(Some(RunStatus::Running), Some(10 * hour)), 0),
            None,
            "a run in progress is no failure"
        );
    }

    #[test]
    fn a_certificate_is_a_problem_within_14_days_of_expiry_or_when_renewal_fails() {
        let day = 86_400;
        let cert = |state: &str, days: i64| CertificateInfo {
            domain: "shop.example".into(),
            source: "acme".into(),
            state: state.into(),
            not_after: Some(100 * day + days * day),
            issuer: None,
            last_error: (state == "failing").then(|| "DNS has no A record".into()),
            next_attempt: None,
        };
        assert_eq!(certificate_problem(&cert("valid", 30), 100 * day), None);
        let (severity, text) = certificate_problem(&cert("valid", 13), 100 * day).unwrap();
        assert_eq!(severity, Severity::Warning);
        assert!(text.contains("expires in 13 days"), "{text}");
        let (severity, text) = certificate_problem(&cert("failing", 20), 100 * day).unwrap();
        assert_eq!(severity, Severity::Critical);
        assert!(
            text.contains("DNS has no A record") && text.contains("20 days left"),
            "{text}"
        );
        assert!(
            certificate_problem(&cert("expired", -1), 100 * day)
                .unwrap()
                .1
                .contains("has expired")
        );
    }
}
