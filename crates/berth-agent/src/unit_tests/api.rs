//! The API router called in-process: what each kind of request gets back.

use crate::testing::{Harness, api_router, call, monitoring_router, web_app};
use http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

fn deploy_body(manifest: &str) -> Value {
    json!({
        "manifest": manifest,
        "manifest_path": "berth.toml",
        "base_dir": "/tmp",
        "environment": null,
        "version": "v1",
    })
}

/// The last line of an operation's event stream: its outcome.
fn outcome(body: &Value) -> Value {
    let text = body.as_str().expect("an event stream");
    let last = text.lines().last().expect("at least one event");
    let event: Value = serde_json::from_str(last).expect("JSON line");
    assert_eq!(event["event"], "finished", "{text}");
    event
}

#[tokio::test]
async fn status_of_an_empty_agent_lists_no_apps() {
    let h = Harness::new();
    let (status, body) = call(&api_router(&h, None), "GET", "/v1/status", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["apps"], json!([]));
    assert_eq!(body["agent"]["docker"]["endpoint"], "fake://");
}

#[tokio::test]
async fn an_unknown_app_is_not_found_and_a_bad_name_is_invalid() {
    let h = Harness::new();
    let api = api_router(&h, None);
    let (status, body) = call(&api, "GET", "/v1/apps/nope/releases", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["kind"], "not-found");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no app named nope")
    );
    let (status, body) = call(&api, "GET", "/v1/apps/Bad_Name/releases", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["kind"], "invalid");
}

#[tokio::test]
async fn a_tcp_router_refuses_a_missing_or_wrong_token_and_accepts_the_right_one() {
    let h = Harness::new();
    let api = api_router(&h, Some("right-token"));
    for presented in [None, Some("wrong-token"), Some("right-toke")] {
        let (status, body) = call(&api, "GET", "/v1/status", presented, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{presented:?}");
        assert_eq!(body["kind"], "unauthorized");
        assert!(body["hint"].as_str().unwrap().contains("api-token"));
    }
    let (status, _) = call(&api, "GET", "/v1/status", Some("right-token"), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_invalid_manifest_is_refused_with_every_problem() {
    let h = Harness::new();
    let (status, body) = call(
        &api_router(&h, None),
        "POST",
        "/v1/deploy",
        None,
        Some(deploy_body(
            "app = \"shop\"\n[services.web]\nport = \"eighty\"\n",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["kind"], "invalid");
    assert!(!body["details"].as_array().unwrap().is_empty(), "{body}");
    assert!(
        h.engine.store().apps().unwrap().is_empty(),
        "nothing recorded"
    );
}

#[tokio::test]
async fn a_deploy_missing_a_secret_is_refused_before_a_release_is_recorded() {
    let h = Harness::new();
    let manifest = web_app("shop", "secrets = [\"API_KEY\"]");
    let (status, body) = call(
        &api_router(&h, None),
        "POST",
        "/v1/deploy",
        None,
        Some(deploy_body(&manifest)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["hint"]
            .as_str()
            .unwrap()
            .contains("berth secrets set API_KEY")
    );
    assert!(h.engine.store().releases("shop", 10).unwrap().is_empty());
}

#[tokio::test]
async fn a_build_without_an_uploaded_context_is_refused_with_the_fix() {
    let h = Harness::new();
    let manifest = "app = \"shop\"\n[services.web]\nbuild = \".\"\nport = 8080\n";
    let (status, body) = call(
        &api_router(&h, None),
        "POST",
        "/v1/deploy",
        None,
        Some(deploy_body(manifest)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no build context was uploaded")
    );
    assert!(body["hint"].as_str().unwrap().contains("berth deploy"));
}

#[tokio::test]
async fn a_deploy_streams_its_steps_and_ends_with_its_outcome() {
    let h = Harness::new();
    let api = api_router(&h, None);
    let (status, body) = call(
        &api,
        "POST",
        "/v1/deploy",
        None,
        Some(deploy_body(&web_app("shop", ""))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let outcome = outcome(&body);
    assert_eq!(outcome["ok"], true, "{body}");
    assert_eq!(outcome["live_release"], 1);
    let (status, releases) = call(&api, "GET", "/v1/apps/shop/releases", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(releases[0]["number"], 1);
    assert_eq!(releases[0]["status"], "live");
}

#[tokio::test]
async fn rollback_and_its_plan_need_an_earlier_release() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let api = api_router(&h, None);
    let (status, body) = call(
        &api,
        "POST",
        "/v1/apps/shop/rollback",
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    h.deployed(&web_app("shop", "env = { A = \"1\" }"), "v2")
        .await;
    let (status, plan) = call(&api, "GET", "/v1/apps/shop/rollback/plan", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (plan["from"].clone(), plan["to"].clone()),
        (json!(2), json!(1))
    );
    assert!(plan["changes"].to_string().contains("env"), "{plan}");
}

#[tokio::test]
async fn renewing_a_certificate_without_acme_is_invalid() {
    let h = Harness::new();
    let (status, body) = call(
        &api_router(&h, None),
        "POST",
        "/v1/certificates/shop.example/renew",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("ACME is off"));
}

#[tokio::test]
async fn secrets_are_listed_by_name_and_never_by_value() {
    let h = Harness::new();
    let api = api_router(&h, None);
    let (status, _) = call(
        &api,
        "PUT",
        "/v1/apps/shop/secrets/API_KEY",
        None,
        Some(json!({ "value": "very-secret-value" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&api, "GET", "/v1/apps/shop/secrets", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["name"], "API_KEY");
    assert!(!body.to_string().contains("very-secret-value"));
}

#[tokio::test]
async fn an_empty_secret_or_a_bad_secret_name_is_invalid() {
    let h = Harness::new();
    let api = api_router(&h, None);
    let (status, _) = call(
        &api,
        "PUT",
        "/v1/apps/shop/secrets/API_KEY",
        None,
        Some(json!({ "value": "" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &api,
        "PUT",
        "/v1/apps/shop/secrets/not%20a%20name",
        None,
        Some(json!({ "value": "x" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_json_body_over_the_limit_is_refused_before_it_is_read() {
    let h = Harness::new();
    let huge = "x".repeat(5 << 20);
    let (status, _) = call(
        &api_router(&h, None),
        "PUT",
        "/v1/apps/shop/secrets/API_KEY",
        None,
        Some(json!({ "value": huge })),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_refused() {
    let h = Harness::new();
    let api = api_router(&h, None);
    let (status, _) = call(&api, "GET", "/v1/nothing", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&api, "DELETE", "/v1/status", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn workers_are_listed() {
    let h = Harness::new();
    h.engine
        .workers()
        .spawn("probe", |report, stop| async move {
            report.running("probing");
            stop.stopped().await;
        });
    tokio::task::yield_now().await;
    let (status, body) = call(&api_router(&h, None), "GET", "/v1/workers", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let listed = body.to_string();
    assert!(
        listed.contains("probe") && listed.contains("probing"),
        "{listed}"
    );
}

/// `GET /health` on the monitoring router: (status, content type, body).
async fn health(router: &axum::Router) -> (StatusCode, String, Value) {
    use tower::ServiceExt;
    let request = http::Request::get("/health")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, content_type, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn the_health_report_passes_each_healthy_service_and_fails_one_that_is_down() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let router = monitoring_router(&h, Arc::default());
    let (status, content_type, body) = health(&router).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/health+json");
    assert_eq!(body["status"], "pass", "{body}");
    assert_eq!(body["checks"]["shop/web:replicas"][0]["status"], "pass");
    assert_eq!(body["checks"]["docker:reachable"][0]["status"], "pass");

    // Asked again at once, it answers from the last report without asking Docker.
    tokio::time::pause();
    let web = h.container("-web-");
    h.fake
        .set_state(&web.id, berth_runtime::ContainerState::Exited, Some(1));
    let calls = h.fake.calls().len();
    let (status, _, _) = health(&router).await;
    assert_eq!(status, StatusCode::OK, "the report of a moment ago");
    assert_eq!(
        h.fake.calls().len(),
        calls,
        "no Docker call for a fresh report"
    );

    tokio::time::advance(std::time::Duration::from_secs(3)).await;
    let (status, _, body) = health(&router).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "fail");
    assert_eq!(body["checks"]["shop/web:replicas"][0]["status"], "fail");
    assert!(
        !body.to_string().contains(&web.id),
        "no container ids for the unauthenticated: {body}"
    );
}

#[tokio::test]
async fn the_health_report_fails_when_docker_is_out_of_reach() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    h.fake.set_down(true);
    let (status, _, body) = health(&monitoring_router(&h, Arc::default())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "fail");
}

#[tokio::test]
async fn a_nearly_full_data_disk_warns_then_fails_the_health_report() {
    let h = Harness::new();
    h.deployed(&web_app("shop", ""), "v1").await;
    let host = Arc::new(berth_monitor::HostMetrics::default());
    let disk = |free: u64| berth_monitor::HostSample {
        filesystems: vec![berth_monitor::FilesystemUse {
            mountpoint: "/var/lib/berth".into(),
            purpose: "berth".into(),
            size_bytes: 1000,
            avail_bytes: free,
            free_bytes: free,
        }],
        ..Default::default()
    };
    host.record(&disk(50));
    let (status, _, body) = health(&monitoring_router(&h, host.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["berth data:disk"][0]["status"], "warn");
    host.record(&disk(10));
    let (status, _, body) = health(&monitoring_router(&h, host)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["berth data:disk"][0]["status"], "fail");
    assert!(
        !body.to_string().contains("/var/lib/berth"),
        "no paths for the unauthenticated: {body}"
    );
}
