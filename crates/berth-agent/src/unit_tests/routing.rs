//! What the proxy is told to route, and the small decisions around a pull.

use crate::engine::{LiveApp, routes_for};
use crate::testing::{Harness, manifest, web_app};
use std::collections::BTreeMap;

fn live(text: &str) -> LiveApp {
    LiveApp {
        manifest: manifest(text),
        release: 7,
        upstreams: BTreeMap::new(),
    }
}

#[test]
fn each_routed_web_service_gets_one_route_and_a_worker_none() {
    let text = web_app(
        "shop",
        "route = { domains = [\"shop.example\"], path = \"/api\" }\n\n[services.worker]\nimage = \"example/web:1\"\ncommand = [\"work\"]\n",
    );
    let routes = routes_for(&live(&text), None, false);
    assert_eq!(routes.len(), 1);
    assert_eq!(
        (routes[0].service.as_str(), routes[0].path.as_str()),
        ("web", "/api")
    );
    assert_eq!(routes[0].release, 7);
    assert_eq!(routes[0].settings.maintenance, None);
}

#[test]
fn maintenance_reaches_every_route_of_the_app() {
    let text = web_app(
        "shop",
        "route = { domains = [\"shop.example\"] }\n\n[services.admin]\nimage = \"example/web:1\"\nport = 9000\nroute = { domains = [\"admin.shop.example\"] }\n",
    );
    let routes = routes_for(&live(&text), Some("back at 10"), false);
    assert_eq!(routes.len(), 2);
    assert!(!routes.is_empty());
    assert!(
        routes
            .iter()
            .all(|r| r.settings.maintenance.as_deref() == Some("back at 10"))
    );
}

#[tokio::test]
async fn maintenance_on_an_unknown_app_is_not_found_and_on_a_live_one_is_audited() {
    let h = Harness::new();
    let error = h
        .engine
        .set_maintenance("nope", Some("x"), "t")
        .unwrap_err();
    assert_eq!(error.kind, crate::ErrorKind::NotFound);
    h.deployed(&web_app("shop", ""), "v1").await;
    h.engine
        .set_maintenance("shop", Some("upgrading"), "alice")
        .unwrap();
    let audit = h.engine.store().audit(10, Some("shop")).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "maintenance.on" && e.actor == "alice" && e.detail == "upgrading"),
        "{audit:?}"
    );
}

#[test]
fn docker_hub_has_several_names_and_other_registries_one() {
    use crate::engine::same_registry;
    assert!(same_registry("docker.io", "index.docker.io"));
    assert!(same_registry("registry-1.docker.io", "docker.io"));
    assert!(same_registry(
        "Registry.Example:5000",
        "registry.example:5000"
    ));
    assert!(!same_registry("registry.example", "docker.io"));
    assert!(!same_registry("registry.example:5000", "registry.example"));
}

#[test]
fn only_network_failures_count_as_an_unreachable_registry() {
    use crate::engine::registry_unreachable;
    assert!(registry_unreachable(
        "Get https://r/v2/: dial tcp 10.0.0.1:443: connect: connection refused"
    ));
    assert!(registry_unreachable("lookup r.example: no such host"));
    assert!(!registry_unreachable(
        "unauthorized: authentication required"
    ));
    assert!(!registry_unreachable(
        "manifest for example/web:9 not found"
    ));
}
