//! What the proxy is told to route, and the small decisions around a pull.

use crate::engine::LiveApp;
use crate::routing::routes_for;
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

#[test]
fn installing_an_app_routes_it_and_removing_it_forgets_it_everywhere() {
    use crate::routing::Routing;
    let proxy = berth_proxy::Proxy::new(berth_proxy::ProxyConfig::default());
    let edge = std::sync::Arc::new(crate::edge::Edge::new(
        berth_tls::CertStore::new(),
        false,
        None,
    ));
    let routing = Routing::new(proxy, edge, Some("http://127.0.0.1:8080".into()));
    let shop = web_app("shop", "route = { domains = [\"shop.example\"] }");
    let blog = web_app("blog", "route = { domains = [\"blog.example\"] }");
    routing.install("shop", Some(live(&shop)), None);
    routing.install("blog", Some(live(&blog)), Some("back soon"));
    let mut apps: Vec<String> = routing.routes().into_iter().map(|r| r.app).collect();
    apps.sort();
    assert_eq!(apps, ["blog", "shop"]);
    assert_eq!(routing.live_app("shop").map(|l| l.release), Some(7));
    routing.install("shop", None, None);
    let apps: Vec<String> = routing.routes().into_iter().map(|r| r.app).collect();
    assert_eq!(apps, ["blog"], "the other app keeps its routes");
    assert!(routing.live_app("shop").is_none());
    assert_eq!(
        routing.urls(&manifest(&shop)),
        ["http://shop.example:8080/"],
        "URLs carry the listener's port"
    );
}
