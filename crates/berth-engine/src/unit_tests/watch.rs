//! What the health monitor asks of the engine: the containers to watch, and replacing one.

use crate::testing::{Harness, web_app};

#[tokio::test]
async fn the_watched_containers_are_the_current_replicas_with_their_upstreams() {
    let h = Harness::new();
    h.deployed(&web_app("shop", "replicas = 2"), "v1").await;
    let targets = h.engine.watch_targets().await.unwrap();
    assert_eq!(targets.len(), 2);
    for target in &targets {
        assert_eq!((target.app.as_str(), target.release), ("shop", 1));
        assert_eq!(target.service.name, "web");
        let upstream = target.upstream.as_ref().expect("a routed replica");
        assert_eq!(upstream.name(), target.container);
    }
    h.stop("shop").await;
    assert!(
        h.engine.watch_targets().await.unwrap().is_empty(),
        "a stopped app is down on purpose"
    );
}

#[tokio::test]
async fn an_app_whose_lock_is_held_is_still_listed_but_not_changed() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let _held = h
        .engine
        .locks()
        .try_acquire(
            "shop",
            berth_api::LockInfo {
                operation: "deploy".into(),
                holder: "t".into(),
                since: 0,
            },
        )
        .unwrap();
    assert_eq!(
        h.engine.watch_targets().await.unwrap().len(),
        1,
        "the monitor keeps what it knows of it, and pauses its probes"
    );
    let refused = h
        .engine
        .replace_replica("shop", "web", "x", "test")
        .await
        .unwrap_err();
    assert_eq!(refused.kind, crate::ErrorKind::Locked);
}

#[tokio::test]
async fn replacing_a_replica_gates_a_new_one_then_swaps_it_in_and_retires_the_old() {
    let h = Harness::new();
    h.deployed(&web_app("shop", "replicas = 2"), "v1").await;
    let targets = h.engine.watch_targets().await.unwrap();
    let (sick, well) = (&targets[0], &targets[1]);
    h.fake.clear_calls();
    let fresh = h
        .engine
        .replace_replica("shop", "web", &sick.container_id, "unhealthy for 1m")
        .await
        .unwrap();
    assert_eq!(h.fake.calls_to("exec").len(), 1, "gated before it serves");
    let live = h.engine.live_app("shop").unwrap();
    let serving: Vec<&str> = live.upstreams["web"]
        .iter()
        .map(|(_, u)| u.name())
        .collect();
    assert_eq!(serving.len(), 2);
    assert!(serving.contains(&fresh.as_str()) && serving.contains(&well.container.as_str()));
    assert!(!serving.contains(&sick.container.as_str()));
    let now: Vec<String> = h
        .engine
        .watch_targets()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.container)
        .collect();
    assert!(now.contains(&fresh) && !now.contains(&sick.container));
    // The old one drains in the background (nothing is in flight), then goes.
    for _ in 0..200 {
        if !h.fake.running().contains(&sick.container) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        !h.fake.running().contains(&sick.container),
        "the old one is drained and removed"
    );
    let audit = h.engine.store().audit(5, Some("shop")).unwrap();
    assert!(
        audit.iter().any(|e| e.action == "replace-replica"
            && e.result == "ok"
            && e.detail == "unhealthy for 1m"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_replacement_that_fails_its_gate_leaves_the_old_replica_serving() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let old = h.engine.watch_targets().await.unwrap().remove(0);
    h.fake.exit_on_start("shop-web", 1);
    let error = h
        .engine
        .replace_replica("shop", "web", &old.container_id, "unhealthy")
        .await
        .unwrap_err();
    assert!(error.message.contains("health check"), "{}", error.message);
    let live = h.engine.live_app("shop").unwrap();
    assert_eq!(live.upstreams["web"][0].0, old.container_id);
    assert_eq!(h.fake.running(), std::slice::from_ref(&old.container));
}

#[tokio::test]
async fn a_replica_back_at_a_new_address_is_followed_by_the_proxy() {
    let h = Harness::new();
    h.deployed(&web_app("shop", "route = { domains = [] }"), "v1")
        .await;
    let target = h.engine.watch_targets().await.unwrap().remove(0);
    let old = target.upstream.clone().unwrap();
    let moved: std::net::SocketAddr = "10.99.0.7:8080".parse().unwrap();
    assert!(
        !h.engine
            .repoint_replica("shop", "web", &target.container_id, old.addr())
            .unwrap(),
        "the same address changes nothing"
    );
    assert!(
        h.engine
            .repoint_replica("shop", "web", &target.container_id, moved)
            .unwrap()
    );
    let live = h.engine.live_app("shop").unwrap();
    let (id, upstream) = &live.upstreams["web"][0];
    assert_eq!(
        (id.as_str(), upstream.addr()),
        (target.container_id.as_str(), moved)
    );
    assert_eq!(upstream.name(), old.name());
    assert_eq!(
        h.engine.routing().routes()[0].upstreams,
        vec![format!("{} ({moved})", old.name())],
        "the proxy's route follows"
    );
    assert!(upstream.in_rotation());
    upstream.set_in_rotation(false);
    let again: std::net::SocketAddr = "10.99.0.8:8080".parse().unwrap();
    h.engine
        .repoint_replica("shop", "web", &target.container_id, again)
        .unwrap();
    let live = h.engine.live_app("shop").unwrap();
    assert!(
        !live.upstreams["web"][0].1.in_rotation(),
        "an unhealthy replica at a new address stays out of rotation"
    );
}
