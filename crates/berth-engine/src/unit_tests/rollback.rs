//! Which release a rollback returns to, what it changes, and how it runs.

use crate::ErrorKind;
use crate::testing::{Harness, web_app};
use berth_state::ReleaseKind;

async fn three_releases(h: &Harness) {
    for (version, greeting) in [("v1", "one"), ("v2", "two"), ("v3", "three")] {
        let text = web_app("shop", &format!("env = {{ GREETING = \"{greeting}\" }}"));
        h.deployed(&text, version).await;
    }
}

#[tokio::test]
async fn the_default_target_is_the_newest_release_that_was_live_before() {
    let h = Harness::new();
    three_releases(&h).await;
    let (live, target) = h.engine.rollback_target("shop", None).unwrap();
    assert_eq!((live.number, target.number), (3, 2));
}

#[tokio::test]
async fn a_failed_release_is_skipped_by_default_and_refused_by_number() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    h.fake.exit_on_start("shop-web-r2", 1);
    let (failed, _) = h.deploy(&web_app("shop", ""), "v2").await;
    assert!(!failed.ok);
    h.deployed(&web_app("shop", ""), "v3").await;
    let (_, target) = h.engine.rollback_target("shop", None).unwrap();
    assert_eq!(target.number, 1, "release 2 never went live");
    let error = h.engine.rollback_target("shop", Some(2)).unwrap_err();
    assert_eq!(error.kind, ErrorKind::Invalid);
    assert!(
        error.message.contains("never went live"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn rolling_back_to_the_live_release_is_refused() {
    let h = Harness::new();
    three_releases(&h).await;
    let error = h.engine.rollback_target("shop", Some(3)).unwrap_err();
    assert!(error.message.contains("already live"), "{}", error.message);
}

#[tokio::test]
async fn an_unknown_release_or_app_is_not_found() {
    let h = Harness::new();
    three_releases(&h).await;
    let error = h.engine.rollback_target("shop", Some(42)).unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotFound);
    assert_eq!(error.hint.as_deref(), Some("`berth releases` lists them"));
    let error = h.engine.rollback_target("nothing", None).unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn a_first_release_has_nothing_to_roll_back_to() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let error = h.engine.rollback_target("shop", None).unwrap_err();
    assert!(
        error.message.contains("no earlier release"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn the_plan_shows_what_the_old_manifest_brings_back() {
    let h = Harness::new();
    three_releases(&h).await;
    let plan = h.engine.rollback_plan("shop", Some(1)).unwrap();
    assert_eq!((plan.from, plan.to), (3, 1));
    let shown = serde_json::to_string(&plan).unwrap();
    assert!(shown.contains("GREETING"), "{shown}");
}

#[tokio::test]
async fn a_rollback_reuses_the_old_images_without_pulling_and_becomes_a_new_release() {
    let h = Harness::new();
    three_releases(&h).await;
    let plan = h
        .engine
        .plan_rollback("shop", Some(1), "test", false)
        .unwrap();
    h.fake.clear_calls();
    let (outcome, _) = h.run(plan).await;
    assert!(outcome.ok, "{:?}", outcome.error);
    assert_eq!(outcome.live_release, Some(4));
    assert!(
        h.fake.calls_to("pull_image").is_empty(),
        "{:?}",
        h.fake.calls()
    );
    assert!(h.fake.calls_to("build_image").is_empty());
    let release = h.engine.store().release("shop", 4).unwrap().unwrap();
    assert_eq!(release.kind, ReleaseKind::Rollback);
    assert_eq!(release.rollback_of, Some(1));
    assert_eq!(release.version, "v1");
    let web = h.container("-web-");
    assert!(
        web.spec.env.contains(&"GREETING=one".to_owned()),
        "{:?}",
        web.spec.env
    );
}
