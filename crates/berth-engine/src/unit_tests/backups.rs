//! Backups on the in-memory runtime: a volume's files (a real directory the fake hands out
//! as its mount point) taken, read back, listed, pruned, and scheduled.

use crate::progress::Progress;
use crate::testing::{Harness, manifest, web_app};
use berth_api::RunStatus;
use berth_backup::Reason;

fn with_backup(h: &Harness, keep: &str) -> String {
    let storage = h.dir.path().join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    web_app(
        "shop",
        &format!(
            "volumes = [\"data:/data\"]\n\n[storage.local]\npath = \"{}\"\n\n[backups.files]\nsource = {{ volume = {{ name = \"data\" }} }}\nto = [\"local\"]\nschedule = \"0 3 * * *\"\n{keep}\n",
            storage.display()
        ),
    )
}

async fn back_up(h: &Harness, text: &str) -> berth_api::Outcome {
    h.engine
        .backups()
        .clone()
        .run_backups(
            manifest(text),
            vec!["files".into()],
            Reason::Manual,
            "test".into(),
            Progress::silent("shop"),
        )
        .await
}

#[tokio::test]
async fn a_volume_backup_is_read_back_before_it_is_listed() {
    let h = Harness::new();
    let text = with_backup(&h, "");
    h.deployed(&text, "v1").await;
    let volume = h.dir.path().join("volumes/shop_data");
    std::fs::write(volume.join("orders.txt"), b"order 1\n").unwrap();
    let outcome = back_up(&h, &text).await;
    assert!(outcome.ok, "{:?}", outcome.error);
    let runs = outcome.backups.unwrap().runs;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Ok);
    assert_eq!(runs[0].copies.len(), 1);
    let list = h
        .engine
        .backups()
        .list_backups(&manifest(&text), None, true)
        .await
        .unwrap();
    let ids: Vec<&str> = list.backups.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, [runs[0].id.as_deref().unwrap()]);
}

#[tokio::test]
async fn a_missing_volume_fails_the_backup_and_names_it() {
    let h = Harness::new();
    let text = with_backup(&h, "");
    let outcome = back_up(&h, &text).await;
    assert!(!outcome.ok);
    let runs = outcome.backups.unwrap().runs;
    assert_eq!(runs[0].status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.message.contains("shop_data") || format!("{runs:?}").contains("shop_data"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_backup_run_applies_the_keep_rules_once_its_copy_is_good() {
    let h = Harness::new();
    let text = with_backup(&h, "keep = { last = 1 }");
    h.deployed(&text, "v1").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let outcome = back_up(&h, &text).await;
        assert!(outcome.ok, "{:?}", outcome.error);
        ids.push(outcome.backups.unwrap().runs[0].id.clone().unwrap());
    }
    let list = h
        .engine
        .backups()
        .list_backups(&manifest(&text), None, true)
        .await
        .unwrap();
    let left: Vec<&str> = list.backups.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(left, [ids[2].as_str()], "the newest is kept");
}

async fn prune(h: &Harness, text: &str, dry_run: bool) -> berth_api::Outcome {
    h.engine
        .backups()
        .clone()
        .prune_backups(
            manifest(text),
            vec!["files".into()],
            dry_run,
            "t".into(),
            Progress::silent("shop"),
        )
        .await
}

#[tokio::test]
async fn a_dry_run_prune_says_what_would_go_and_removes_nothing() {
    let h = Harness::new();
    let keep_all = with_backup(&h, "");
    h.deployed(&keep_all, "v1").await;
    for _ in 0..3 {
        assert!(back_up(&h, &keep_all).await.ok);
    }
    let keep_one = with_backup(&h, "keep = { last = 1 }");
    let outcome = prune(&h, &keep_one, true).await;
    assert!(outcome.ok, "{:?}", outcome.error);
    let listed = |h: &Harness| {
        let h = h.engine.backups().clone();
        let text = keep_one.clone();
        async move {
            h.list_backups(&manifest(&text), None, true)
                .await
                .unwrap()
                .backups
                .len()
        }
    };
    assert_eq!(listed(&h).await, 3, "a dry run removes nothing");
    let shown = format!("{:?}", outcome.backups.unwrap().pruned);
    assert!(shown.contains("files"), "{shown}");
    let outcome = prune(&h, &keep_one, false).await;
    assert!(outcome.ok, "{:?}", outcome.error);
    assert_eq!(listed(&h).await, 1);
}

#[tokio::test]
async fn a_schedule_missed_while_the_agent_was_down_runs_at_once_and_only_once() {
    let h = Harness::new();
    let text = with_backup(&h, "");
    let schedule = manifest(&text).backup.backups["files"]
        .schedule
        .clone()
        .unwrap();
    let parsed = berth_backup::schedule::Schedule::parse(&schedule).unwrap();
    let tz = jiff::tz::TimeZone::UTC;
    let now = jiff::Timestamp::now();
    // Never ran: the next scheduled time, not now.
    let due = h
        .engine
        .backups()
        .first_due("shop", "files", "backup", &parsed, now, &tz);
    assert!(due > now);
    // Ran long before the last scheduled time: it was missed, so now.
    h.engine.store().ensure_app("shop").unwrap();
    h.engine
        .store()
        .start_backup_run("shop", "files", "backup", "t")
        .unwrap();
    let tomorrow = now + jiff::SignedDuration::from_hours(48);
    let due = h
        .engine
        .backups()
        .first_due("shop", "files", "backup", &parsed, tomorrow, &tz);
    assert_eq!(due, tomorrow);
    // Ran after the last scheduled time: nothing was missed.
    let due = h
        .engine
        .backups()
        .first_due("shop", "files", "backup", &parsed, now, &tz);
    assert!(due > now);
}

#[tokio::test]
async fn a_backup_is_dated_by_the_injected_clock() {
    let h = Harness::new();
    let text = with_backup(&h, "");
    h.deployed(&text, "v1").await;
    h.clock.set("2031-05-04T03:02:01Z".parse().unwrap());
    let outcome = back_up(&h, &text).await;
    assert!(outcome.ok, "{:?}", outcome.error);
    let id = outcome.backups.unwrap().runs[0].id.clone().unwrap();
    assert!(id.starts_with("20310504T030201Z-"), "{id}");
}

#[tokio::test]
async fn daily_retention_keeps_the_newest_backup_of_each_recent_day() {
    let h = Harness::new();
    let text = with_backup(&h, "keep = { daily = 2 }");
    h.deployed(&text, "v1").await;
    let mut ids = Vec::new();
    for at in [
        "2031-05-01T10:00:00Z",
        "2031-05-02T09:00:00Z",
        "2031-05-02T18:00:00Z",
        "2031-05-03T08:00:00Z",
    ] {
        h.clock.set(at.parse().unwrap());
        let outcome = back_up(&h, &text).await;
        assert!(outcome.ok, "{:?}", outcome.error);
        ids.push(outcome.backups.unwrap().runs[0].id.clone().unwrap());
    }
    let list = h
        .engine
        .backups()
        .list_backups(&manifest(&text), None, true)
        .await
        .unwrap();
    let mut left: Vec<&str> = list.backups.iter().map(|b| b.id.as_str()).collect();
    left.sort();
    assert_eq!(
        left,
        [ids[2].as_str(), ids[3].as_str()],
        "the newest of 2 May and of 3 May stay; 1 May and the older one of 2 May go"
    );
}
