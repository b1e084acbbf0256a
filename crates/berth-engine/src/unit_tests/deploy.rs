//! What a deploy does, in which order, and what it leaves when something fails.

use crate::testing::{Harness, failures, steps, web_app};
use berth_runtime::RuntimeError;
use berth_state::{InstanceState, ReleaseStatus};

fn web_containers(h: &Harness) -> Vec<String> {
    let mut names: Vec<String> = h
        .fake
        .containers()
        .into_iter()
        .filter(|c| c.spec.name.contains("-web-"))
        .map(|c| c.spec.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn first_deploy_prepares_pulls_starts_checks_and_switches_in_that_order() {
    let h = Harness::new();
    let (outcome, events) = h.deploy(&web_app("shop", ""), "v1").await;
    assert!(outcome.ok, "{:?} {events:?}", outcome.error);
    assert_eq!((outcome.release, outcome.live_release), (Some(1), Some(1)));
    assert_eq!(
        steps(&events),
        [
            "prepare network and volumes",
            "pull example/web:1",
            "start web (1 replica)",
            "health check web: command `true` exits 0",
            "switch traffic",
        ]
    );
    let calls = h.fake.calls();
    let position = |prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {calls:?}"))
    };
    assert!(position("ensure_network berth-shop") < position("pull_image"));
    assert!(position("pull_image") < position("create_container"));
    assert!(position("start_container") < position("exec"));
    assert_eq!(h.fake.networks(), ["berth-shop"]);
}

#[tokio::test]
async fn a_deploy_records_the_release_live_and_its_replica_current() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let store = h.engine.store();
    let live = store.live_release("shop").unwrap().expect("a live release");
    assert_eq!((live.number, live.version.as_str()), (1, "v1"));
    assert_eq!(live.status, ReleaseStatus::Live);
    let instances = store.instances("shop").unwrap();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].state, InstanceState::Current);
    assert_eq!(instances[0].service, "web");
    let running = h.fake.running();
    assert_eq!(running, [instances[0].name.clone()]);
}

#[tokio::test]
async fn a_deploy_routes_the_web_service_through_the_proxy() {
    let h = Harness::new();
    let outcome = h
        .deployed(
            &web_app("shop", "route = { domains = [\"shop.example\"] }"),
            "v1",
        )
        .await;
    let routes = h.engine.routing().routes();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].app, "shop");
    assert_eq!(routes[0].domains, ["shop.example"]);
    assert!(
        outcome.urls.iter().any(|u| u.contains("shop.example")),
        "{:?}",
        outcome.urls
    );
}

#[tokio::test]
async fn replicas_each_pass_the_health_gate() {
    let h = Harness::new();
    h.deployed(&web_app("shop", "replicas = 3"), "v1").await;
    assert_eq!(web_containers(&h).len(), 3);
    assert_eq!(
        h.fake.calls_to("exec").len(),
        3,
        "one health check per replica"
    );
    assert_eq!(h.fake.running().len(), 3);
}

#[tokio::test]
async fn a_second_deploy_replaces_the_old_replica_and_retires_the_old_release() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let first = web_containers(&h);
    let mut plan = h.plan(&web_app("shop", ""), "v2");
    plan.wait_drain = true;
    let (outcome, _) = h.run(plan).await;
    assert!(outcome.ok, "{:?}", outcome.error);
    let second = web_containers(&h);
    assert_eq!(second.len(), 1);
    assert_ne!(first, second, "a new container serves");
    let releases = h.engine.store().releases("shop", 10).unwrap();
    let status = |n: i64| releases.iter().find(|r| r.number == n).unwrap().status;
    assert_eq!(status(1), ReleaseStatus::Retired);
    assert_eq!(status(2), ReleaseStatus::Live);
}

#[tokio::test]
async fn a_failing_health_check_keeps_the_old_release_serving_and_removes_the_new_replica() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let before = web_containers(&h);
    let failing = web_app("shop", "").replace(
        "healthcheck = { command = [\"true\"] }",
        "healthcheck = { command = [\"check\"], start_timeout = \"1s\", interval = \"100ms\" }",
    );
    h.fake.on_exec(|_, command| {
        if command == ["check"] {
            (1, "database not reachable".into())
        } else {
            (0, String::new())
        }
    });
    let (outcome, events) = h.deploy(&failing, "v2").await;
    assert!(!outcome.ok);
    assert_eq!(outcome.live_release, Some(1));
    let error = outcome.error.expect("an error");
    assert!(
        error
            .hint
            .unwrap_or_default()
            .contains("release 1 (v1) keeps serving")
    );
    assert!(
        failures(&events)
            .iter()
            .any(|(_, m)| m.contains("database not reachable")),
        "{events:?}"
    );
    assert_eq!(web_containers(&h), before, "the new replica is gone");
    let release = h.engine.store().release("shop", 2).unwrap().unwrap();
    assert_eq!(release.status, ReleaseStatus::Failed);
}

#[tokio::test]
async fn a_container_that_exits_at_start_fails_the_gate_with_its_exit_code() {
    let h = Harness::new();
    h.fake.exit_on_start("shop-web", 3);
    h.fake.add_logs("shop-web-r1-x", &["boom"]);
    let (outcome, _) = h.deploy(&web_app("shop", ""), "v1").await;
    assert!(!outcome.ok);
    assert_eq!(outcome.live_release, None);
    let error = outcome.error.unwrap();
    assert!(
        error.message.contains("exited with status 3"),
        "{}",
        error.message
    );
    assert!(error.hint.unwrap().contains("nothing was serving before"));
    assert!(
        web_containers(&h).is_empty(),
        "the failed replica is removed"
    );
}

#[tokio::test]
async fn a_missing_secret_fails_before_any_container_is_created() {
    let h = Harness::new();
    let (outcome, _) = h
        .deploy(&web_app("shop", "secrets = [\"API_KEY\"]"), "v1")
        .await;
    let error = outcome.error.expect("refused");
    assert_eq!(error.kind, crate::ErrorKind::Invalid);
    assert!(
        error
            .message
            .contains("secret API_KEY not set for app shop")
    );
    assert!(
        error
            .hint
            .unwrap()
            .contains("berth secrets set API_KEY --app shop")
    );
    assert!(h.fake.calls_to("create_container").is_empty());
}

#[tokio::test]
async fn a_set_secret_reaches_the_container_environment() {
    let h = Harness::new();
    let sealed = h.engine.secrets().seal("s3cr3t").unwrap();
    h.engine.store().ensure_app("shop").unwrap();
    h.engine
        .store()
        .put_secret("shop", "API_KEY", &sealed)
        .unwrap();
    h.deployed(&web_app("shop", "secrets = [\"API_KEY\"]"), "v1")
        .await;
    let web = h.container("-web-");
    assert!(web.spec.env.contains(&"API_KEY=s3cr3t".to_owned()));
}

#[tokio::test]
async fn an_image_nobody_can_pull_fails_the_deploy_with_its_cause() {
    let h = Harness::new();
    let text = web_app("shop", "").replace("example/web:1", "example/missing:1");
    let (outcome, _) = h.deploy(&text, "v1").await;
    let error = outcome.error.expect("refused");
    assert_eq!(error.cause.as_deref(), Some("image-unavailable"));
    assert!(
        error.message.contains("example/missing:1"),
        "{}",
        error.message
    );
    assert!(h.fake.calls_to("create_container").is_empty());
}

#[tokio::test]
async fn an_unreachable_registry_falls_back_to_the_servers_copy() {
    let h = Harness::new();
    h.fake.publish("example/local:1");
    let text = web_app("shop", "").replace("example/web:1", "example/local:1");
    h.deployed(&text, "v1").await;
    h.fake.fail("pull_image", "example/local", |reference| {
        RuntimeError::ImageUnavailable {
            reference: reference.into(),
            reason: "dial tcp: lookup registry: connection refused".into(),
        }
    });
    let (outcome, events) = h.deploy(&text, "v2").await;
    assert!(outcome.ok, "{:?}", outcome.error);
    let warned = events.iter().any(|e| {
        matches!(e, berth_api::OperationEvent::Log { message }
            if message.contains("uses the copy already on the server"))
    });
    assert!(warned, "{events:?}");
    let images = h.engine.store().release("shop", 2).unwrap().unwrap().images;
    let first = h.engine.store().release("shop", 1).unwrap().unwrap().images;
    assert_eq!(images, first, "the server's copy is deployed");
}

#[tokio::test]
async fn a_registry_refusal_does_not_fall_back_to_an_old_copy() {
    let h = Harness::new();
    h.fake.publish("example/local:1");
    let text = web_app("shop", "").replace("example/web:1", "example/local:1");
    h.deployed(&text, "v1").await;
    h.fake.fail("pull_image", "example/local", |reference| {
        RuntimeError::ImageUnavailable {
            reference: reference.into(),
            reason: "unauthorized: authentication required".into(),
        }
    });
    let (outcome, _) = h.deploy(&text, "v2").await;
    let error = outcome.error.expect("refused");
    assert!(
        error.message.contains("authentication required"),
        "{}",
        error.message
    );
    assert_eq!(outcome.live_release, Some(1));
}

#[tokio::test]
async fn docker_being_down_fails_the_deploy_as_docker_unreachable() {
    let h = Harness::new();
    h.fake.set_down(true);
    let (outcome, _) = h.deploy(&web_app("shop", ""), "v1").await;
    let error = outcome.error.expect("refused");
    assert_eq!(error.cause.as_deref(), Some("docker-unreachable"));
    assert_eq!(outcome.live_release, None);
}

#[tokio::test]
async fn the_release_command_runs_after_the_image_and_before_the_new_replicas() {
    let h = Harness::new();
    h.fake.exit_on_start("-release", 0);
    h.deployed(&web_app("shop", "release_command = [\"migrate\"]"), "v1")
        .await;
    let created = h.fake.calls_to("create_container");
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(created[0].contains("release"), "{created:?}");
    assert!(created[1].contains("-web-"), "{created:?}");
}

#[tokio::test]
async fn a_failing_release_command_stops_the_deploy_before_the_switch() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    h.fake.exit_on_start("-release", 1);
    let (outcome, events) = h
        .deploy(&web_app("shop", "release_command = [\"migrate\"]"), "v2")
        .await;
    assert!(!outcome.ok);
    assert_eq!(outcome.live_release, Some(1));
    assert!(
        !steps(&events).iter().any(|s| s == "switch traffic"),
        "{events:?}"
    );
    assert_eq!(web_containers(&h).len(), 1);
}

#[tokio::test]
async fn accessories_start_before_services_and_are_left_alone_when_unchanged() {
    let h = Harness::new();
    let text = web_app(
        "shop",
        "\n[accessories.db]\nimage = \"postgres:17\"\nhealthcheck = { command = [\"pg_isready\"] }\n",
    );
    h.deployed(&text, "v1").await;
    let created = h.fake.calls_to("create_container");
    assert!(created[0].contains("-db"), "{created:?}");
    assert!(created[1].contains("-web-"), "{created:?}");
    h.fake.clear_calls();
    h.deployed(&text, "v2").await;
    let created = h.fake.calls_to("create_container");
    assert_eq!(created.len(), 1, "only web is replaced: {created:?}");
    assert!(created[0].contains("-web-"));
}

#[tokio::test]
async fn named_volumes_are_created_with_the_apps_labels() {
    let h = Harness::new();
    h.deployed(&web_app("shop", "volumes = [\"data:/data\"]"), "v1")
        .await;
    assert_eq!(h.fake.volumes(), ["shop_data"]);
    let web = h.container("-web-");
    assert!(
        web.spec
            .mounts
            .iter()
            .any(|m| m.source == "shop_data" && m.target == "/data")
    );
}

#[tokio::test]
async fn old_release_images_beyond_keep_releases_are_removed() {
    let h = Harness::new();
    let text = web_app("shop", "").replace(
        "app = \"shop\"",
        "app = \"shop\"\n[deploy]\nkeep_releases = 2\n",
    );
    for version in ["v1", "v2", "v3", "v4"] {
        h.deployed(&text, version).await;
    }
    let mut tags: Vec<String> = h
        .fake
        .images()
        .into_iter()
        .flat_map(|i| i.tags)
        .filter(|t| t.starts_with("berth/shop/"))
        .collect();
    tags.sort();
    assert!(!tags.iter().any(|t| t.ends_with(":r1")), "{tags:?}");
    assert!(tags.iter().any(|t| t.ends_with(":r4")), "{tags:?}");
    assert!(tags.len() <= 3, "{tags:?}");
}

#[tokio::test]
async fn a_route_another_app_serves_is_refused() {
    let h = Harness::new();
    let route = "route = { domains = [\"shop.example\"] }";
    h.deployed(&web_app("shop", route), "v1").await;
    let other = crate::testing::manifest(&web_app("copycat", route));
    let error = h.engine.check_route_conflicts(&other).expect_err("a clash");
    assert_eq!(error.kind, crate::ErrorKind::Invalid);
    assert!(
        error.message.contains("already served by app shop"),
        "{}",
        error.message
    );
    let elsewhere = crate::testing::manifest(&web_app(
        "copycat",
        "route = { domains = [\"copy.example\"] }",
    ));
    assert!(h.engine.check_route_conflicts(&elsewhere).is_ok());
}

#[tokio::test]
async fn a_stopped_app_refuses_a_deploy_and_starts_nothing() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    h.stop("shop").await;
    h.fake.clear_calls();
    let (outcome, _) = h.deploy(&web_app("shop", ""), "v2").await;
    let error = outcome.error.expect("refused");
    assert!(error.message.contains("stopped"), "{}", error.message);
    assert!(h.fake.calls_to("create_container").is_empty());
    assert!(h.fake.running().is_empty());
}

#[tokio::test]
async fn an_image_built_elsewhere_is_taken_as_built_and_keeps_only_its_release_tag() {
    let h = Harness::new();
    let text = web_app("shop", "").replace("image = \"example/web:1\"", "build = \".\"");
    let uploaded = berth_core::names::uploaded_image("shop", "web", "1-2");
    let image = h.fake.add_image(&uploaded, "");
    let mut plan = h.plan(&text, "v1");
    let crate::engine::ImagePlan::Build(inputs) = &mut plan.images else {
        panic!("a deploy builds");
    };
    inputs.prebuilt.insert("web".into(), uploaded.clone());
    let (outcome, events) = h.run(plan).await;
    assert!(outcome.ok, "{:?} {events:?}", outcome.error);
    assert!(
        steps(&events).contains(&"take web as built".to_owned()),
        "{events:?}"
    );
    assert!(h.fake.calls_to("build_image").is_empty());
    let tags: Vec<String> = h
        .fake
        .images()
        .into_iter()
        .find(|i| i.id == image.id)
        .map(|i| i.tags)
        .unwrap_or_default();
    assert_eq!(tags, ["berth/shop/web:r1"]);
}

#[tokio::test]
async fn an_image_built_elsewhere_must_be_the_apps_own_upload() {
    let h = Harness::new();
    let text = web_app("shop", "").replace("image = \"example/web:1\"", "build = \".\"");
    for (service, reference, says) in [
        (
            "web",
            "berth/other/web:local-1",
            "outside this app's uploaded images",
        ),
        (
            "web",
            "berth/shop/web:r1",
            "outside this app's uploaded images",
        ),
        (
            "db",
            "berth/shop/db:local-1",
            "which the manifest does not build",
        ),
    ] {
        let request = crate::engine::DeployRequest {
            manifest: crate::testing::manifest(&text),
            manifest_toml: text.clone(),
            contexts: Default::default(),
            prebuilt: [(service.to_owned(), reference.to_owned())].into(),
            image_archives: Vec::new(),
            version: None,
            actor: "test".into(),
            wait_drain: false,
        };
        let Err(error) = h.engine.plan_deploy(request) else {
            panic!("{reference} was taken for {service}");
        };
        assert!(error.message.contains(says), "{}", error.message);
    }
}
