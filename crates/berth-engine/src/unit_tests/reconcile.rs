//! What start-up reconciliation does for each combination of state file and containers.

use crate::names;
use crate::testing::{Harness, web_app};
use berth_runtime::{ContainerSpec, ContainerState};
use berth_state::{NewRelease, ReleaseKind, ReleaseStatus};

fn web_name(h: &Harness) -> String {
    h.container("-web-").spec.name
}

fn stray(h: &Harness, agent: &str, app: &str, name: &str) -> String {
    let spec = ContainerSpec {
        name: name.into(),
        image: "example/web:1".into(),
        labels: names::base_labels(agent, app),
        ..ContainerSpec::default()
    };
    h.fake.add_image("example/web:1", "");
    h.fake.add_container(spec, ContainerState::Running)
}

#[tokio::test]
async fn a_stopped_container_of_the_live_release_is_started_again() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let web = web_name(&h);
    h.fake.set_state(&web, ContainerState::Exited, Some(137));
    let report = h.restarted().reconcile_all().await.unwrap();
    assert_eq!(report.started, std::slice::from_ref(&web));
    assert!(report.recreated.is_empty() && report.removed.is_empty());
    assert_eq!(h.fake.running(), [web]);
}

#[tokio::test]
async fn a_missing_container_of_the_live_release_is_recreated_through_the_gate() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let web = web_name(&h);
    h.fake.vanish(&web);
    h.fake.clear_calls();
    let engine = h.restarted();
    let report = engine.reconcile_all().await.unwrap();
    assert_eq!(report.recreated.len(), 1, "{report:?}");
    assert_eq!(h.fake.running().len(), 1);
    assert_eq!(
        h.fake.calls_to("exec").len(),
        1,
        "the new replica was health-checked"
    );
    let live = engine.live_app("shop").expect("routed");
    assert_eq!(live.upstreams["web"].len(), 1);
    let current = engine.store().instances("shop").unwrap();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].name, report.recreated[0]);
}

#[tokio::test]
async fn a_container_the_state_does_not_count_as_current_is_removed() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    stray(&h, "test-agent", "shop", "shop-web-r9-dead");
    let report = h.restarted().reconcile_all().await.unwrap();
    assert_eq!(report.removed, ["shop-web-r9-dead"]);
    assert!(
        !h.fake
            .containers()
            .iter()
            .any(|c| c.spec.name == "shop-web-r9-dead")
    );
    assert_eq!(h.fake.running(), [web_name(&h)]);
}

#[tokio::test]
async fn another_agents_containers_are_never_touched() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    stray(&h, "other-agent", "shop", "shop-web-r1-theirs");
    let report = h.restarted().reconcile_all().await.unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert!(h.fake.running().contains(&"shop-web-r1-theirs".to_owned()));
}

#[tokio::test]
async fn an_interrupted_release_is_recorded_as_failed_and_the_previous_keeps_serving() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    h.engine
        .store()
        .create_release(&NewRelease {
            app: "shop".into(),
            version: "v2".into(),
            kind: ReleaseKind::Deploy,
            rollback_of: None,
            manifest_toml: web_app("shop", ""),
            manifest_json: String::new(),
            actor: "test".into(),
        })
        .unwrap();
    stray(&h, "test-agent", "shop", "shop-web-r2-pending");
    let engine = h.restarted();
    let report = engine.reconcile_all().await.unwrap();
    assert_eq!(report.interrupted_releases, ["shop release 2"]);
    assert_eq!(report.removed, ["shop-web-r2-pending"]);
    let release = engine.store().release("shop", 2).unwrap().unwrap();
    assert_eq!(release.status, ReleaseStatus::Failed);
    assert_eq!(
        engine.store().live_release("shop").unwrap().unwrap().number,
        1
    );
}

#[tokio::test]
async fn a_stopped_app_stays_stopped_and_its_containers_are_left_alone() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    h.stop("shop").await;
    h.fake.clear_calls();
    let engine = h.restarted();
    let report = engine.reconcile_all().await.unwrap();
    assert!(
        report.started.is_empty() && report.removed.is_empty(),
        "{report:?}"
    );
    assert!(h.fake.running().is_empty());
    assert!(h.fake.calls_to("start_container").is_empty());
    let live = engine.live_app("shop").expect("still routed (to a 503)");
    assert!(live.upstreams.is_empty());
}

#[tokio::test]
async fn docker_being_down_fails_reconcile_before_anything_is_touched() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    h.fake.set_down(true);
    h.fake.clear_calls();
    let error = h.restarted().reconcile_all().await.expect_err("fails fast");
    assert_eq!(error.cause, Some("docker-unreachable"));
    assert_eq!(h.fake.calls(), ["info "], "nothing but the first question");
}

#[tokio::test]
async fn accessories_are_kept_even_though_they_belong_to_no_release() {
    let h = Harness::new();
    let text = web_app(
        "shop",
        "\n[accessories.db]\nimage = \"postgres:17\"\nhealthcheck = { command = [\"pg_isready\"] }\n",
    );
    h.deployed(&text, "v1").await;
    let report = h.restarted().reconcile_all().await.unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(h.fake.running().len(), 2);
}

#[tokio::test]
async fn an_app_without_a_live_release_loses_its_strays_and_its_route() {
    let h = Harness::new();
    h.engine.store().ensure_app("ghost").unwrap();
    stray(&h, "test-agent", "ghost", "ghost-web-r1-left");
    let engine = h.restarted();
    let report = engine.reconcile_all().await.unwrap();
    assert_eq!(report.removed, ["ghost-web-r1-left"]);
    assert!(engine.live_app("ghost").is_none());
}
