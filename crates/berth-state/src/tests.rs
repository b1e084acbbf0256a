use super::*;

fn release(store: &Store, app: &str) -> Release {
    store
        .create_release(&NewRelease {
            app: app.into(),
            version: "v1".into(),
            kind: ReleaseKind::Deploy,
            rollback_of: None,
            manifest_toml: "app = \"a\"".into(),
            manifest_json: "{}".into(),
            actor: "tester".into(),
        })
        .unwrap()
}

fn instance(store: &Store, id: &str, release: i64, state: InstanceState) {
    store
        .add_instance(&Instance {
            container_id: id.into(),
            name: format!("a-web-{id}"),
            app: "a".into(),
            service: "web".into(),
            release,
            replica: 1,
            state,
            created_at: now_ms(),
        })
        .unwrap();
}

#[test]
fn release_numbers_count_up_per_app() {
    let store = Store::in_memory().unwrap();
    assert_eq!(release(&store, "a").number, 1);
    assert_eq!(release(&store, "a").number, 2);
    assert_eq!(release(&store, "b").number, 1);
    let r = store.release("a", 2).unwrap().unwrap();
    assert_eq!(r.status, ReleaseStatus::Deploying);
    assert_eq!(
        store
            .releases("a", 10)
            .unwrap()
            .iter()
            .map(|r| r.number)
            .collect::<Vec<_>>(),
        [2, 1]
    );
}

#[test]
fn the_switch_moves_live_release_and_containers_in_one_step() {
    let store = Store::in_memory().unwrap();
    let first = release(&store, "a");
    instance(&store, "c1", first.number, InstanceState::Pending);
    store
        .commit_switch(&Switch {
            app: "a",
            new_live_release: Some(1),
            now_current: &["c1".into()],
            retiring: &[],
        })
        .unwrap();
    assert_eq!(store.live_release("a").unwrap().unwrap().number, 1);

    let second = release(&store, "a");
    instance(&store, "c2", second.number, InstanceState::Pending);
    store
        .commit_switch(&Switch {
            app: "a",
            new_live_release: Some(2),
            now_current: &["c2".into()],
            retiring: &["c1".into()],
        })
        .unwrap();
    assert_eq!(store.live_release("a").unwrap().unwrap().number, 2);
    assert_eq!(
        store.release("a", 1).unwrap().unwrap().status,
        ReleaseStatus::Retired
    );
    let states: Vec<_> = store
        .instances("a")
        .unwrap()
        .into_iter()
        .map(|i| (i.container_id, i.state))
        .collect();
    assert_eq!(
        states,
        [
            ("c1".to_owned(), InstanceState::Retiring),
            ("c2".to_owned(), InstanceState::Current)
        ]
    );
}

#[test]
fn a_failed_release_forgets_its_pending_containers_and_keeps_the_live_one() {
    let store = Store::in_memory().unwrap();
    let first = release(&store, "a");
    instance(&store, "c1", first.number, InstanceState::Current);
    store
        .commit_switch(&Switch {
            app: "a",
            new_live_release: Some(1),
            now_current: &[],
            retiring: &[],
        })
        .unwrap();
    let second = release(&store, "a");
    instance(&store, "c2", second.number, InstanceState::Pending);
    store.fail_release("a", 2, "health gate timed out").unwrap();
    let failed = store.release("a", 2).unwrap().unwrap();
    assert_eq!(failed.status, ReleaseStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("health gate timed out"));
    assert_eq!(store.live_release("a").unwrap().unwrap().number, 1);
    assert_eq!(store.instances("a").unwrap().len(), 1);
}

#[test]
fn secrets_are_upserted_listed_and_deleted() {
    let store = Store::in_memory().unwrap();
    store.put_secret("a", "K", b"one").unwrap();
    store.put_secret("a", "K", b"two").unwrap();
    assert_eq!(
        store.secret_ciphertext("a", "K").unwrap().as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(store.secrets("a").unwrap().len(), 1);
    assert!(store.secrets("b").unwrap().is_empty());
    assert!(store.delete_secret("a", "K").unwrap());
    assert!(!store.delete_secret("a", "K").unwrap());
}

#[test]
fn a_state_file_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = Store::open(&path).unwrap();
        release(&store, "a");
        store
            .add_audit(&AuditEntry {
                at: now_ms(),
                actor: "me".into(),
                action: "deploy".into(),
                target: "a".into(),
                result: "ok".into(),
                detail: String::new(),
            })
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.releases("a", 5).unwrap().len(), 1);
    assert_eq!(store.audit(10, None).unwrap()[0].action, "deploy");
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(
        &path,
        b"this is not sqlite, just some text that is long enough to be a header",
    )
    .unwrap();
    let error = Store::open(&path).err().unwrap().to_string();
    assert!(error.contains("state.db"), "{error}");
}

#[test]
fn maintenance_mode_is_stored_per_app() {
    let store = Store::in_memory().unwrap();
    release(&store, "a");
    assert!(store.set_maintenance("a", Some("back soon")).unwrap());
    assert_eq!(
        store.app("a").unwrap().unwrap().maintenance.as_deref(),
        Some("back soon")
    );
    assert!(store.set_maintenance("a", None).unwrap());
    assert_eq!(store.app("a").unwrap().unwrap().maintenance, None);
    assert!(!store.set_maintenance("nope", Some("x")).unwrap());
}

fn copy(id: &str, destination: &str, at: i64) -> BackupCopy {
    BackupCopy {
        app: "a".into(),
        name: "db".into(),
        id: id.into(),
        destination: destination.into(),
        created_at: at,
        verified_at: at,
        verify_error: None,
        meta_json: "{}".into(),
    }
}

#[test]
fn the_backup_catalog_follows_its_storage_and_keeps_failure_flags() {
    let store = Store::in_memory().unwrap();
    store.put_backup_copy(&copy("b1", "local", 1)).unwrap();
    store.put_backup_copy(&copy("b2", "local", 2)).unwrap();
    store.put_backup_copy(&copy("b2", "offsite", 2)).unwrap();
    store
        .fail_backup_copy("a", "db", "b2", "local", "checksum mismatch")
        .unwrap();
    // A refresh from the local storage: b1 was pruned elsewhere, b3 appeared.
    store
        .replace_backup_copies(
            "a",
            "db",
            "local",
            &[copy("b2", "local", 2), copy("b3", "local", 3)],
        )
        .unwrap();
    let listed = store.backup_copies("a", Some("db")).unwrap();
    let ids: Vec<(&str, &str)> = listed
        .iter()
        .map(|c| (c.id.as_str(), c.destination.as_str()))
        .collect();
    assert_eq!(ids, [("b2", "local"), ("b2", "offsite"), ("b3", "local")]);
    assert_eq!(listed[0].verify_error.as_deref(), Some("checksum mismatch"));
    // A good verification clears the flag.
    store.put_backup_copy(&copy("b2", "local", 2)).unwrap();
    assert_eq!(
        store.backup_copies("a", None).unwrap()[0].verify_error,
        None
    );
    store.remove_backup_copy("a", "db", "b3", "local").unwrap();
    assert_eq!(store.backup_copies("a", None).unwrap().len(), 2);
}

#[test]
fn backup_runs_record_outcomes_and_interruptions() {
    let store = Store::in_memory().unwrap();
    let first = store.start_backup_run("a", "db", "backup", "cli").unwrap();
    store
        .finish_backup_run(
            first,
            &RunFinish {
                status: "ok",
                backup_id: Some("b1"),
                cause: None,
                error: None,
            },
        )
        .unwrap();
    let second = store
        .start_backup_run("a", "db", "backup", "schedule")
        .unwrap();
    assert!(second > first);
    assert!(store.last_good_backup("a", "db").unwrap().is_some());
    assert_eq!(store.abandon_running_backup_runs().unwrap(), 1);
    let latest = store.latest_backup_runs("a").unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].status, "failed");
    assert_eq!(latest[0].cause.as_deref(), Some("interrupted"));
    assert_eq!(store.last_good_backup("a", "nope").unwrap(), None);
}

#[test]
fn the_audit_log_filters_by_app_and_its_parts_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    for target in ["shop", "shop/db", "shopping", "other/shop", "shop/web"] {
        store
            .add_audit(&AuditEntry {
                at: now_ms(),
                actor: "me".into(),
                action: "deploy".into(),
                target: target.into(),
                result: "ok".into(),
                detail: String::new(),
            })
            .unwrap();
    }
    let targets: Vec<String> = store
        .audit(10, Some("shop"))
        .unwrap()
        .into_iter()
        .map(|e| e.target)
        .collect();
    assert_eq!(targets, ["shop/web", "shop/db", "shop"], "newest first");
    assert_eq!(store.audit(10, None).unwrap().len(), 5);
    assert_eq!(store.audit(2, None).unwrap().len(), 2);
}

#[test]
fn deleting_an_app_forgets_its_releases_but_keeps_other_apps_secrets_and_audit() {
    let store = Store::in_memory().unwrap();
    let first = release(&store, "a");
    release(&store, "b");
    instance(&store, "c1", first.number, InstanceState::Current);
    store
        .add_event("a", Some(first.number), "info", "hello")
        .unwrap();
    store.put_secret("a", "K", b"v").unwrap();
    store
        .add_audit(&AuditEntry {
            at: now_ms(),
            actor: "tester".into(),
            action: "deploy".into(),
            target: "a".into(),
            result: "ok".into(),
            detail: String::new(),
        })
        .unwrap();

    assert!(store.delete_app("a").unwrap());
    assert!(!store.delete_app("a").unwrap(), "gone the second time");
    assert!(store.app("a").unwrap().is_none());
    assert!(store.releases("a", 10).unwrap().is_empty());
    assert!(store.instances("a").unwrap().is_empty());
    assert!(store.events("a", first.number).unwrap().is_empty());
    assert_eq!(
        store.secrets("a").unwrap().len(),
        1,
        "secrets go on their own"
    );
    assert_eq!(store.audit(10, Some("a")).unwrap().len(), 1);
    assert_eq!(store.releases("b", 10).unwrap().len(), 1);
    // A new app of the same name starts counting again.
    assert_eq!(release(&store, "a").number, 1);
    assert_eq!(store.delete_secrets("a").unwrap(), 1);
    assert!(store.secrets("a").unwrap().is_empty());
}

#[test]
fn an_alert_fires_once_and_resolves_and_events_are_resolved_when_recorded() {
    let store = Store::in_memory().unwrap();
    let down = NewAlert {
        key: "service_down:shop/web",
        rule: "service_down",
        severity: "critical",
        app: Some("shop"),
        subject: "shop/web",
        summary: "shop/web is down",
        event: false,
        at: 1_000,
    };
    let id = store.add_alert(&down).unwrap();
    store
        .add_alert(&NewAlert {
            key: "oom:shop/web",
            rule: "oom_killed",
            event: true,
            at: 2_000,
            ..down.clone()
        })
        .unwrap();
    store
        .add_alert(&NewAlert {
            key: "disk:berth",
            app: None,
            at: 3_000,
            ..down.clone()
        })
        .unwrap();
    let firing = store.firing_alerts().unwrap();
    assert_eq!(
        firing.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(),
        ["service_down:shop/web", "disk:berth"]
    );
    let resolved = store
        .resolve_alert("service_down:shop/web", 4_000)
        .unwrap()
        .unwrap();
    assert_eq!((resolved.id, resolved.resolved_at), (id, Some(4_000)));
    assert_eq!(
        store.resolve_alert("service_down:shop/web", 5_000).unwrap(),
        None,
        "nothing fires under that key any more"
    );
    let recent = store.recent_alerts(10, Some("shop")).unwrap();
    assert_eq!(recent.len(), 3, "the app's and the host's");
    assert!(recent[1].event && recent[1].resolved_at == Some(2_000));
    assert_eq!(store.recent_alerts(10, Some("other")).unwrap().len(), 1);
}

#[test]
fn uptime_is_kept_raw_then_in_minutes_and_hours_and_pruned_by_age() {
    let store = Store::in_memory().unwrap();
    let hour = 3_600_000;
    let day = 24 * hour;
    let now = 100 * day;
    let sample = |at: i64, up: bool, latency_ms: i64| UptimeSample {
        subject: "shop/web".into(),
        at,
        up,
        latency_ms,
    };
    // 30 days ago: one failed and three passed checks, recorded then.
    let old: Vec<UptimeSample> = (0..4)
        .map(|i| sample(now - 30 * day + i * 1000, i != 0, 10 * (i + 1)))
        .collect();
    store
        .add_uptime_samples(&old, now - 30 * day + 5000)
        .unwrap();
    // The last hour: 99 passed checks of 1..=99 ms and one failure.
    let recent: Vec<UptimeSample> = (1..=100)
        .map(|i| sample(now - hour + i * 1000, i != 100, i))
        .collect();
    store.add_uptime_samples(&recent, now).unwrap();

    let day_window = store.uptime_since("shop/web", now - day, now).unwrap();
    assert_eq!((day_window.checks, day_window.ups), (100, 99));
    assert_eq!((day_window.p50_ms, day_window.p95_ms), (Some(50), Some(95)));
    let week = store.uptime_since("shop/web", now - 7 * day, now).unwrap();
    assert_eq!((week.checks, week.ups), (100, 99), "from minute buckets");
    let month = store.uptime_since("shop/web", now - 31 * day, now).unwrap();
    assert_eq!(
        (month.checks, month.ups),
        (104, 102),
        "from hour buckets, the old ones too"
    );
    // The raw samples of 30 days ago are gone, their hour bucket stays.
    let raw_old = store
        .uptime_since("shop/web", now - 31 * day, now - 29 * day)
        .unwrap();
    assert_eq!(raw_old.checks, 0);
    assert_eq!(store.uptime_subjects(Some("shop")).unwrap(), ["shop/web"]);
    assert!(store.uptime_subjects(Some("sho")).unwrap().is_empty());
    // Per day, for the status page: the old day and the last one, each whole.
    let days = store.uptime_days("shop/web", now - 90 * day).unwrap();
    assert_eq!(
        days,
        vec![
            UptimeDay {
                day_start: 70 * day,
                checks: 4,
                ups: 3
            },
            UptimeDay {
                day_start: 99 * day,
                checks: 100,
                ups: 99
            }
        ]
    );
    assert_eq!(
        store.uptime_latest("shop/web").unwrap(),
        Some((now - hour + 100_000, false))
    );
    assert_eq!(store.uptime_latest("shop/api").unwrap(), None);
    // 91 days on, everything is past keeping.
    store.add_uptime_samples(&[], now + 91 * day).unwrap();
    assert!(store.uptime_subjects(None).unwrap().is_empty());
}

#[test]
fn a_mute_covers_what_it_names_until_it_ends() {
    let store = Store::in_memory().unwrap();
    let mute = |app: Option<&str>, rule: Option<&str>, until: i64| AlertMute {
        id: 0,
        app: app.map(str::to_owned),
        rule: rule.map(str::to_owned),
        subject: None,
        until,
        actor: "t".into(),
        created_at: 0,
    };
    let shop_down = store
        .add_alert_mute(&mute(Some("shop"), Some("service_down"), 1_000))
        .unwrap();
    store.add_alert_mute(&mute(None, None, 500)).unwrap();
    let alert = AlertRecord {
        id: 1,
        key: "service_down:shop/web".into(),
        rule: "service_down".into(),
        severity: "critical".into(),
        app: Some("shop".into()),
        subject: "shop/web".into(),
        summary: String::new(),
        event: false,
        started_at: 0,
        resolved_at: None,
    };
    let other = AlertRecord {
        app: Some("blog".into()),
        ..alert.clone()
    };
    let active = store.alert_mutes(600).unwrap();
    assert_eq!(active.len(), 1, "the one until 500 ended");
    assert!(active[0].covers(&alert));
    assert!(!active[0].covers(&other));
    assert!(store.remove_alert_mute(shop_down).unwrap());
    assert!(!store.remove_alert_mute(shop_down).unwrap());
    assert!(store.alert_mutes(600).unwrap().is_empty());
}

#[test]
fn resource_history_keeps_means_and_peaks_in_minutes_then_hours_and_prunes_by_age() {
    let store = Store::in_memory().unwrap();
    let minute = 60_000;
    let hour = 60 * minute;
    let day = 24 * hour;
    let now = 100 * day;
    let sample = |subject: &str, metric: &str, at: i64, value: f64| ResourceSample {
        subject: subject.into(),
        metric: metric.into(),
        at,
        value,
    };
    // 100 days ago (past every keeping time), then 3 days ago (hours only).
    store
        .add_resource_samples(&[sample("shop/web", "cpu_percent", 0, 99.0)], 15_000)
        .unwrap();
    store
        .add_resource_samples(
            &[sample("shop/web", "cpu_percent", now - 3 * day, 70.0)],
            now - 3 * day,
        )
        .unwrap();
    // The last minutes: four samples a minute; another app whose name starts the same.
    for (i, value) in [10.0, 20.0, 30.0, 40.0, 50.0, 50.0].into_iter().enumerate() {
        let at = now - 2 * minute + i as i64 * 15_000;
        store
            .add_resource_samples(
                &[
                    sample("shop/web", "cpu_percent", at, value),
                    sample("host", "load1", at, 1.0),
                    sample("shopping/web", "cpu_percent", at, 5.0),
                    sample("shop/web", "memory_bytes", at, f64::NAN),
                ],
                at,
            )
            .unwrap();
    }
    let last_hour = store
        .resource_history(Some("shop"), now - hour, now, minute)
        .unwrap();
    let names: Vec<(&str, &str)> = last_hour
        .iter()
        .map(|s| (s.subject.as_str(), s.metric.as_str()))
        .collect();
    assert_eq!(
        names,
        [("host", "load1"), ("shop/web", "cpu_percent")],
        "the host and this app's services; not a NaN"
    );
    let cpu = &last_hour[1].points;
    assert_eq!(cpu.len(), 2);
    assert_eq!(
        (cpu[0].at, cpu[0].mean, cpu[0].peak),
        (now - 2 * minute, 25.0, 40.0)
    );
    assert_eq!((cpu[1].mean, cpu[1].peak), (50.0, 50.0));
    // Coarser points: one for the whole two minutes.
    let coarse = store
        .resource_history(Some("shop"), now - hour, now, 10 * minute)
        .unwrap();
    assert_eq!(coarse[1].points.len(), 1);
    assert_eq!(
        (coarse[1].points[0].mean, coarse[1].points[0].peak),
        (100.0 / 3.0, 50.0)
    );
    // A week: from hour buckets, the old sample pruned.
    let week = store
        .resource_history(None, now - 7 * day, now, 6 * hour)
        .unwrap();
    let web = week
        .iter()
        .find(|s| s.subject == "shop/web" && s.metric == "cpu_percent")
        .unwrap();
    assert_eq!(web.points.len(), 2);
    assert_eq!(web.points[0].peak, 70.0);
    assert!(
        store
            .resource_history(None, 0, now, day)
            .unwrap()
            .iter()
            .all(|s| s.points.iter().all(|p| p.peak < 99.0)),
        "100 days ago is gone"
    );
    assert!(
        week.iter().any(|s| s.subject == "shopping/web"),
        "every app without one"
    );
}

#[test]
fn api_tokens_are_kept_as_hashes_revoked_by_name_and_a_live_name_is_unique() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let issued = berth_auth::tokens::issue(
        "ci",
        berth_auth::Scope::Deploy,
        Some("shop".into()),
        1_000,
        "root via unix",
        None,
    );
    store.add_token(&issued.record).unwrap();
    let again = berth_auth::tokens::issue("ci", berth_auth::Scope::Read, None, 2_000, "x", None);
    let taken = store.add_token(&again.record).unwrap_err().to_string();
    assert!(taken.contains("revoke it first"), "{taken}");

    let found = store.token_by_id(&issued.record.id).unwrap().unwrap();
    assert_eq!(found, issued.record);
    let (caller, _) =
        berth_auth::authenticate(&store, &issued.text, 3_000).expect("the token checks");
    assert_eq!(caller.app.as_deref(), Some("shop"));

    store.touch_token(&issued.record.id, 4_000).unwrap();
    assert_eq!(store.tokens().unwrap()[0].last_used_ms, Some(4_000));
    assert!(store.revoke_token("ci", 5_000).unwrap());
    assert!(
        !store.revoke_token("ci", 6_000).unwrap(),
        "nothing live left"
    );
    assert!(matches!(
        berth_auth::authenticate(&store, &issued.text, 7_000),
        Err(berth_auth::AuthError::Refused(
            berth_auth::Refusal::Revoked { .. }
        ))
    ));
    // The name is free again; the revoked record stays listed.
    store.add_token(&again.record).unwrap();
    assert_eq!(store.tokens().unwrap().len(), 2);
    // Nothing of the token itself is stored.
    let secret = issued.text.rsplit('_').next().unwrap();
    for file in ["state.db", "state.db-wal"] {
        let raw = std::fs::read(dir.path().join(file)).unwrap_or_default();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{file}"
        );
    }
}
