//! Stopping, starting, restarting and destroying an app.

use crate::progress::Progress;
use crate::testing::{Harness, web_app};

fn silent() -> Progress {
    Progress::silent("shop")
}

#[tokio::test]
async fn stop_stops_every_container_and_start_brings_them_back() {
    let h = Harness::new();
    h.deployed(&web_app("shop", "replicas = 2"), "v1").await;
    let before = h.fake.running();
    h.stop("shop").await;
    assert!(h.fake.running().is_empty());
    assert!(h.engine.store().app("shop").unwrap().unwrap().stopped);
    let started = h
        .engine
        .clone()
        .start_app("shop".into(), "t".into(), silent())
        .await;
    assert!(started.ok, "{:?}", started.error);
    assert_eq!(h.fake.running(), before);
    assert!(!h.engine.store().app("shop").unwrap().unwrap().stopped);
}

#[tokio::test]
async fn starting_a_running_app_or_stopping_a_stopped_one_is_refused() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    assert!(h.engine.ensure_stopped("shop").is_err());
    h.stop("shop").await;
    let error = h.engine.ensure_not_stopped("shop", "restart").unwrap_err();
    assert!(error.message.contains("stopped"), "{}", error.message);
    assert!(h.engine.ensure_stopped("shop").is_ok());
}

#[tokio::test]
async fn restart_replaces_a_services_replicas_through_the_gate() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let before = h.fake.running();
    h.fake.clear_calls();
    let outcome = h
        .engine
        .clone()
        .restart_service("shop".into(), "web".into(), "t".into(), silent())
        .await;
    assert!(outcome.ok, "{:?}", outcome.error);
    assert_eq!(h.fake.calls_to("exec").len(), 1, "checked before it serves");
    let live = h.engine.live_app("shop").expect("routed");
    let serving: Vec<&str> = live.upstreams["web"]
        .iter()
        .map(|(_, u)| u.name())
        .collect();
    assert_eq!(serving.len(), 1);
    assert_ne!(serving[0], before[0], "a new container serves");
    // The old one drains in the background (nothing is in flight), then goes.
    for _ in 0..200 {
        if h.fake.running() == [serving[0].to_owned()] {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the old replica is still there: {:?}", h.fake.running());
}

#[tokio::test]
async fn restarting_an_unknown_service_is_not_found() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let error = h.engine.service_role("shop", "nope").unwrap_err();
    assert_eq!(error.kind, crate::ErrorKind::NotFound);
}

#[tokio::test]
async fn destroy_removes_containers_network_images_and_forgets_the_app() {
    let h = Harness::new();
    h.deployed(&web_app("shop", "volumes = [\"data:/data\"]"), "v1")
        .await;
    let outcome = h
        .engine
        .clone()
        .destroy_app(
            "shop".into(),
            berth_api::DestroyRequest::default(),
            "t".into(),
            silent(),
        )
        .await;
    assert!(outcome.ok, "{:?}", outcome.error);
    assert!(h.fake.containers().is_empty());
    assert!(h.fake.networks().is_empty());
    assert!(
        !h.fake
            .images()
            .iter()
            .flat_map(|i| &i.tags)
            .any(|t| t.starts_with("berth/shop/")),
        "release images are untagged"
    );
    assert_eq!(h.fake.volumes(), ["shop_data"], "data stays unless asked");
    assert!(h.engine.store().app("shop").unwrap().is_none());
}

#[tokio::test]
async fn subscribers_hear_of_each_release_that_goes_live_and_of_a_destroy() {
    use berth_core::ReleaseChange;
    let h = Harness::new();
    let mut changes = h.engine.subscribe_release_changes();
    let text = web_app("shop", "");
    h.deployed(&text, "v1").await;
    h.deployed(&text, "v2").await;
    let failed = h
        .deploy(&text.replace("example/web:1", "example/missing:1"), "v3")
        .await;
    assert!(!failed.0.ok, "a release that fails is not announced");
    let outcome = h
        .engine
        .clone()
        .destroy_app(
            "shop".into(),
            berth_api::DestroyRequest::default(),
            "t".into(),
            silent(),
        )
        .await;
    assert!(outcome.ok, "{:?}", outcome.error);
    let mut heard = Vec::new();
    while let Ok(change) = changes.try_recv() {
        heard.push(change);
    }
    let change = |live_release| ReleaseChange {
        app: "shop".into(),
        live_release,
    };
    assert_eq!(heard, [change(Some(1)), change(Some(2)), change(None)]);
}
