//! The runner end to end on local directories: a simulated year of daily backups under a GFS
//! policy, and the failures a run must report instead of keeping a bad copy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_backup::destination::Destination;
use berth_backup::keys::Identities;
use berth_backup::meta::{ContentKind, Reason};
use berth_backup::pipeline::Compression;
use berth_backup::runner::{self, Clock, Runner, no_events};
use berth_backup::source::{BuiltinCheck, Directory, Source};
use berth_backup::{BackupError, Keep};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

struct FakeClock(AtomicI64);

impl FakeClock {
    fn at(text: &str) -> Arc<Self> {
        let t: Timestamp = text.parse().unwrap();
        Arc::new(FakeClock(AtomicI64::new(t.as_second())))
    }

    fn advance_days(&self, days: i64) {
        self.0.fetch_add(days * 86_400, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_second(self.0.load(Ordering::SeqCst)).unwrap()
    }
}

fn identity() -> Identities {
    let key = age::x25519::Identity::generate();
    Identities::parse(age::secrecy::ExposeSecret::expose_secret(&key.to_string())).unwrap()
}

fn runner(destinations: Vec<Destination>, clock: Arc<dyn Clock>, keys: &Identities) -> Runner {
    Runner {
        destinations: destinations.into_iter().map(Arc::new).collect(),
        recipients: keys.recipients(),
        identities: keys.clone(),
        compression: Compression::default(),
        clock,
        time_zone: TimeZone::UTC,
        events: no_events(),
    }
}

fn data_dir(path: &Path) {
    std::fs::create_dir_all(path.join("uploads")).unwrap();
    std::fs::write(path.join("uploads/a.txt"), b"first upload").unwrap();
    std::fs::write(path.join("notes.md"), b"# notes\n").unwrap();
}

fn directory_source(path: &Path) -> Directory {
    Directory {
        path: path.to_owned(),
        label: format!("directory {}", path.display()),
        kind: ContentKind::Tar,
    }
}

fn checker(scratch: &Path) -> BuiltinCheck {
    BuiltinCheck {
        kind: ContentKind::Tar,
        scratch: scratch.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_daily_backups_keeps_exactly_what_restic_rules_keep() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    data_dir(&data);
    let clock = FakeClock::at("2025-01-01T03:00:00Z");
    let keys = identity();
    let local = Destination::local("local", work.path().join("backups"));
    let runner = runner(vec![local], clock.clone(), &keys);
    let keep = Keep {
        daily: 7,
        weekly: 4,
        monthly: 12,
        yearly: 2,
        ..Keep::default()
    };
    for day in 0..365 {
        if day > 0 {
            clock.advance_days(1);
        }
        let mut source = directory_source(&data);
        let outcome = runner
            .run(
                "shop",
                "files",
                Reason::Scheduled,
                &mut source,
                &checker(work.path()),
            )
            .await
            .unwrap();
        assert!(outcome.all_good(), "day {day}: {:?}", outcome.copies);
        // As the agent does: prune each destination after its new backup was verified.
        runner
            .prune(&runner.destinations[0], "shop", "files", &keep, false)
            .await
            .unwrap();
    }
    let left = runner::list(&runner.destinations[0], "shop", "files")
        .await
        .unwrap();
    let mut days: Vec<String> = left
        .iter()
        .map(|b| b.created_at.strftime("%Y-%m-%d").to_string())
        .collect();
    days.sort();
    // Worked out by hand from the rules, newest first over 2025-01-01..2025-12-31:
    // daily 7: Dec 25-31. weekly 4 (ISO weeks): Dec 31 (2026-W01), Dec 28 (W52), Dec 21
    // (W51), Dec 14 (W50). monthly 12: the last day of each month, Jan to Dec. yearly 2:
    // Dec 31 for 2025, then Jan 1 as the oldest backup while a yearly slot is left.
    let expected = [
        "2025-01-01",
        "2025-01-31",
        "2025-02-28",
        "2025-03-31",
        "2025-04-30",
        "2025-05-31",
        "2025-06-30",
        "2025-07-31",
        "2025-08-31",
        "2025-09-30",
        "2025-10-31",
        "2025-11-30",
        "2025-12-14",
        "2025-12-21",
        "2025-12-25",
        "2025-12-26",
        "2025-12-27",
        "2025-12-28",
        "2025-12-29",
        "2025-12-30",
        "2025-12-31",
    ];
    assert_eq!(days, expected);
    // Nothing else is left on disk: every pruned backup took its data with it.
    let files = std::fs::read_dir(work.path().join("backups/shop/files"))
        .unwrap()
        .count();
    assert_eq!(files, expected.len() * 2);
}

#[tokio::test]
async fn a_copy_that_cannot_be_written_is_reported_and_the_other_is_kept() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    data_dir(&data);
    // A file where the directory should be: every write under it fails.
    let blocked = work.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let keys = identity();
    let runner = runner(
        vec![
            Destination::local("good", work.path().join("good")),
            Destination::local("broken", blocked),
        ],
        Arc::new(runner::SystemClock),
        &keys,
    );
    let outcome = runner
        .run(
            "shop",
            "files",
            Reason::Manual,
            &mut directory_source(&data),
            &checker(work.path()),
        )
        .await
        .unwrap();
    assert!(!outcome.all_good());
    assert!(outcome.copies[0].result.is_ok());
    let error = outcome.copies[1].result.as_ref().unwrap_err().to_string();
    assert!(error.contains("destination broken"), "{error}");
    assert_eq!(
        runner::list(&runner.destinations[0], "shop", "files")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_failing_source_leaves_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let keys = identity();
    let runner = runner(
        vec![Destination::local("local", work.path().join("backups"))],
        Arc::new(runner::SystemClock),
        &keys,
    );
    let mut missing = directory_source(&work.path().join("no-such-dir"));
    let error = runner
        .run(
            "shop",
            "files",
            Reason::Manual,
            &mut missing,
            &checker(work.path()),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, BackupError::Source(_)), "{error}");
    let dir = work.path().join("backups/shop/files");
    let leftovers = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        leftovers,
        0,
        "no partial file may remain in {}",
        dir.display()
    );
}

#[tokio::test]
async fn a_flipped_byte_fails_verification_naming_the_backup() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    data_dir(&data);
    std::fs::write(data.join("big.bin"), vec![42u8; 300_000]).unwrap();
    let keys = identity();
    let runner = runner(
        vec![Destination::local("local", work.path().join("backups"))],
        Arc::new(runner::SystemClock),
        &keys,
    );
    let outcome = runner
        .run(
            "shop",
            "files",
            Reason::Manual,
            &mut directory_source(&data),
            &checker(work.path()),
        )
        .await
        .unwrap();
    let meta = outcome.copies[0].result.as_ref().unwrap().clone();
    let object = work.path().join("backups").join(meta.object_key());
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&object, bytes).unwrap();
    let error = runner
        .verify(&runner.destinations[0], &meta, &checker(work.path()), false)
        .await
        .unwrap_err();
    assert!(
        matches!(error, BackupError::ChecksumMismatch { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(text.contains(&meta.id), "{text}");
    assert!(text.contains("on local"), "{text}");
}

#[tokio::test]
async fn without_a_matching_identity_nothing_is_restored() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    data_dir(&data);
    let keys = identity();
    let runner = runner(
        vec![Destination::local("local", work.path().join("backups"))],
        Arc::new(runner::SystemClock),
        &keys,
    );
    let outcome = runner
        .run(
            "shop",
            "files",
            Reason::Manual,
            &mut directory_source(&data),
            &checker(work.path()),
        )
        .await
        .unwrap();
    let meta = outcome.copies[0].result.as_ref().unwrap().clone();
    let target = work.path().join("restored.tar");
    let error = runner
        .read_back(
            &runner.destinations[0],
            &meta,
            &identity(),
            &runner::WriteToFile {
                path: target.clone(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, BackupError::NoKey { .. }), "{error}");
    assert_eq!(error.cause(), "no-key");
    // With the right key the same backup restores.
    runner
        .read_back(
            &runner.destinations[0],
            &meta,
            &keys,
            &runner::WriteToFile { path: target },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_source_trait_object_is_enough_to_run() {
    // The agent hands the runner its own sources as trait objects.
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    data_dir(&data);
    let keys = identity();
    let runner = runner(
        vec![Destination::local("local", work.path().join("backups"))],
        Arc::new(runner::SystemClock),
        &keys,
    );
    let mut boxed: Box<dyn Source> = Box::new(directory_source(&data));
    let outcome = runner
        .run(
            "shop",
            "files",
            Reason::Manual,
            boxed.as_mut(),
            &checker(work.path()),
        )
        .await
        .unwrap();
    let meta = outcome.copies[0].result.as_ref().unwrap();
    assert!(meta.check.contains("2 files"), "{}", meta.check);
    assert_eq!(meta.recipients, [keys.recipients()[0].as_str()]);
}

/// What someone who can write the storage (but holds no key) can plant: a backup encrypted
/// to the public recipient with a correct checksum, a copy of a real record pointed at it,
/// and a record whose object is a path out of the storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_berth_did_not_write_are_untrusted_never_counted_deleted_or_rewritten() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    data_dir(&data);
    let keys = identity();
    let clock = FakeClock::at("2026-11-01T03:00:00Z");
    let runner = runner(
        vec![Destination::local("local", work.path().join("backups"))],
        clock.clone(),
        &keys,
    );
    let genuine = runner
        .run(
            "shop",
            "files",
            Reason::Manual,
            &mut directory_source(&data),
            &checker(work.path()),
        )
        .await
        .unwrap()
        .copies[0]
        .result
        .as_ref()
        .unwrap()
        .clone();
    assert!(
        runner.trust(&genuine).is_trusted(),
        "berth signs what it writes"
    );
    let dir = work.path().join("backups/shop/files");

    // A forged backup: the attacker's own archive, encrypted to the public recipient.
    let mut archive = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut archive);
        let mut header = tar::Header::new_gnu();
        header.set_size(9);
        header.set_mode(0o4755);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        builder
            .append_data(&mut header, "backdoor", &b"#!/bin/sh"[..])
            .unwrap();
        builder.finish().unwrap();
    }
    let mut payload = Vec::new();
    let encoded = berth_backup::pipeline::encode(
        &mut &archive[..],
        &mut payload,
        &keys.recipients(),
        Compression::default(),
        &|_| {},
    )
    .unwrap();
    let plant = |id: &str, auth_from: Option<&berth_backup::meta::BackupMeta>| {
        let mut forged = genuine.clone();
        forged.id = id.to_owned();
        forged.created_at = "2099-12-31T00:00:00Z".parse().unwrap();
        forged.object = berth_backup::meta::object_name(id, ContentKind::Tar);
        forged.size = encoded.size;
        forged.sha256 = encoded.sha256.clone();
        forged.content_size = encoded.content_size;
        forged.auth = auth_from.and_then(|m| m.auth.clone());
        std::fs::write(dir.join(&forged.object), &payload).unwrap();
        std::fs::write(dir.join(format!("{id}.json")), forged.to_json()).unwrap();
        forged
    };
    let unsigned = plant("20991231T000000Z-0001", None);
    let copied_mac = plant("20991231T000000Z-0002", Some(&genuine));
    // A record whose object leads out of the storage, at a file the prune must not delete.
    let victim = work.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let mut traversal = genuine.clone();
    traversal.id = "20991231T000000Z-0003".into();
    traversal.object = "../../../victim".into();
    std::fs::write(
        dir.join("20991231T000000Z-0003.json"),
        serde_json::to_vec(&traversal).unwrap(),
    )
    .unwrap();

    let listed = runner
        .list(&runner.destinations[0], "shop", "files")
        .await
        .unwrap();
    let ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        [genuine.id.as_str(), &unsigned.id, &copied_mac.id],
        "the traversal record is not listed at all"
    );
    assert_eq!(
        runner.trust(&listed[1]),
        berth_backup::meta::Trust::Unsigned
    );
    assert_eq!(runner.trust(&listed[2]), berth_backup::meta::Trust::Forged);

    // Verification refuses them without reading or rewriting them.
    let before = std::fs::read(dir.join(format!("{}.json", unsigned.id))).unwrap();
    let error = runner
        .verify(
            &runner.destinations[0],
            &listed[1],
            &checker(work.path()),
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, BackupError::Untrusted { .. }), "{error}");
    assert_eq!(error.cause(), "untrusted");
    assert_eq!(
        std::fs::read(dir.join(format!("{}.json", unsigned.id))).unwrap(),
        before,
        "an untrusted record is never rewritten (and so never laundered)"
    );

    // Prune keeping one: the genuine backup stays (the newer forgeries do not count),
    // the forgeries stay too (not berth's to delete), and nothing outside the storage goes.
    let report = runner
        .prune(
            &runner.destinations[0],
            "shop",
            "files",
            &Keep {
                last: 1,
                ..Keep::default()
            },
            false,
        )
        .await
        .unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.kept.len(), 1);
    assert_eq!(report.kept[0].id, genuine.id);
    assert_eq!(
        report.untrusted,
        [unsigned.id.clone(), copied_mac.id.clone()]
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(
        dir.join(genuine.object_key().rsplit('/').next().unwrap())
            .exists()
    );

    // A genuine backup whose record someone spoiled, and a record that is a link (to a
    // FIFO, which would hang a reader): listing goes on, and a month later prune still
    // does not take the spoiled backup's data for an orphan.
    let spoiled = runner
        .run(
            "shop",
            "files",
            Reason::Manual,
            &mut directory_source(&data),
            &checker(work.path()),
        )
        .await
        .unwrap()
        .copies[0]
        .result
        .as_ref()
        .unwrap()
        .clone();
    std::fs::write(dir.join(format!("{}.json", spoiled.id)), b"{not json").unwrap();
    let fifo = work.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink(&fifo, dir.join("20991231T000000Z-0004.json")).unwrap();
    let listed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        runner.list(&runner.destinations[0], "shop", "files"),
    )
    .await
    .expect("a planted link to a FIFO does not hang the listing")
    .unwrap();
    assert!(listed.iter().all(|m| m.id != spoiled.id));
    clock.advance_days(30);
    let report = runner
        .prune(
            &runner.destinations[0],
            "shop",
            "files",
            &Keep {
                last: 1,
                ..Keep::default()
            },
            false,
        )
        .await
        .unwrap();
    assert!(report.orphans_removed.is_empty(), "{report:?}");
    assert!(
        dir.join(spoiled.object_key().rsplit('/').next().unwrap())
            .exists(),
        "the spoiled backup's data is still there"
    );
}
