//! The engine's secret operations: who uses a secret, what the audit log keeps, refusals.

use crate::testing::{Harness, web_app};
use berth_api::ErrorKind;

#[tokio::test]
async fn a_secret_lists_the_services_of_the_live_release_that_use_it() {
    let h = Harness::new();
    h.engine.store().ensure_app("shop").unwrap();
    h.engine
        .set_secret("shop", "API_KEY", "k1", "t", "secret.set")
        .unwrap();
    h.deployed(&web_app("shop", "secrets = [\"API_KEY\"]"), "v1")
        .await;
    let listed = h.engine.list_secrets("shop").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "API_KEY");
    assert_eq!(listed[0].used_by, ["web"]);
}

#[tokio::test]
async fn the_audit_log_records_each_secret_operation_by_name_and_never_the_value() {
    let h = Harness::new();
    h.engine.store().ensure_app("shop").unwrap();
    h.engine
        .set_secret("shop", "API_KEY", "plain-value-1", "alice", "secret.set")
        .unwrap();
    assert_eq!(
        h.engine.secret_value("shop", "API_KEY", "bob").unwrap(),
        "plain-value-1"
    );
    h.engine
        .generate_secret("shop", "API_KEY", true, "carol")
        .unwrap();
    h.engine.delete_secret("shop", "API_KEY", "dave").unwrap();
    let audit = h.engine.store().audit(10, Some("shop")).unwrap();
    let mut seen: Vec<(String, String)> = audit
        .iter()
        .map(|e| (e.actor.clone(), e.action.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("alice".into(), "secret.set".into()),
            ("bob".into(), "secret.get".into()),
            ("carol".into(), "secret.generate".into()),
            ("dave".into(), "secret.rm".into()),
        ]
    );
    assert!(
        !format!("{audit:?}").contains("plain-value-1"),
        "the value never reaches the audit log"
    );
}

#[tokio::test]
async fn generating_over_an_existing_secret_needs_force() {
    let h = Harness::new();
    h.engine.store().ensure_app("shop").unwrap();
    let first = h.engine.generate_secret("shop", "TOKEN", false, "t");
    assert!(first.is_ok(), "{first:?}");
    let value = h.engine.secret_value("shop", "TOKEN", "t").unwrap();
    assert_eq!(value.len(), 64);
    let again = h
        .engine
        .generate_secret("shop", "TOKEN", false, "t")
        .unwrap_err();
    assert_eq!(again.kind, ErrorKind::Conflict);
    assert_eq!(h.engine.secret_value("shop", "TOKEN", "t").unwrap(), value);
    h.engine
        .generate_secret("shop", "TOKEN", true, "t")
        .unwrap();
    assert_ne!(h.engine.secret_value("shop", "TOKEN", "t").unwrap(), value);
}

#[tokio::test]
async fn names_that_are_not_environment_variables_and_empty_values_are_invalid() {
    let h = Harness::new();
    for name in ["1ABC", "API-KEY", "", "A B"] {
        let error = h
            .engine
            .set_secret("shop", name, "v", "t", "secret.set")
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{name:?}");
    }
    let error = h
        .engine
        .set_secret("shop", "API_KEY", "", "t", "secret.set")
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Invalid);
    let missing = h.engine.secret_value("shop", "NOPE", "t").unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound);
    assert!(h.engine.delete_secret("shop", "NOPE", "t").is_err());
}
