//! The promise: a deploy never drops a request. Keep-alive clients run through three
//! deploys and a rollback and see no failure while the served version changes.

use crate::harness::{Agent, web};
use berth_testkit::KeepAliveClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[test]
fn three_deploys_and_a_rollback_drop_no_request() {
    let agent = Agent::start();
    let app = agent.app("zdt");
    // Slow starts make the overlap real: the new release takes a while to pass its gate.
    app.write(&(web("STARTUP_DELAY_MS = \"500\"") + "replicas = 2\n"));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    agent.wait_serving("v1");

    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut clients = Vec::new();
    for client in 0..4 {
        let (http, stop) = (agent.http.clone(), stop.clone());
        clients.push(std::thread::spawn(move || {
            let mut connection = KeepAliveClient::new(&http, "localhost");
            let (mut ok, mut failures, mut versions) = (0u64, Vec::new(), Vec::<String>::new());
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                // One client also sends slow requests, which must finish across the drain.
                let path = if client == 0 && ok % 10 == 0 {
                    "/slow?ms=300"
                } else {
                    "/"
                };
                match connection.get(path) {
                    Ok((200, body)) => {
                        ok += 1;
                        let version = body.split_whitespace().last().unwrap_or("").to_owned();
                        if versions.last() != Some(&version) {
                            versions.push(version);
                        }
                    }
                    Ok((status, body)) => failures.push(format!("{status}: {body}")),
                    Err(error) => failures.push(error.to_string()),
                }
            }
            (ok, failures, versions)
        }));
    }

    for version in ["v2", "v3", "v4"] {
        agent
            .berth_in(app.path(), &["deploy", "--version", version])
            .success();
    }
    agent
        .berth_in(app.path(), &["rollback", "--json"])
        .success();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    let mut all_failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for client in clients {
        let (ok, failures, versions) = client.join().unwrap();
        total += ok;
        all_failures.extend(failures);
        seen.extend(versions);
    }
    eprintln!(
        "{total} requests, {} failed, versions seen: {seen:?}",
        all_failures.len()
    );
    assert!(
        Instant::now() < deadline,
        "the test ran out of time before the deploys finished"
    );
    assert!(
        all_failures.is_empty(),
        "{} of {} requests failed: {:?}",
        all_failures.len(),
        total + all_failures.len() as u64,
        all_failures
    );
    assert!(
        total > 200,
        "the clients kept requesting ({total} requests)"
    );
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["v1", "v2", "v3", "v4"],
        "the served version changed with each deploy"
    );
    assert_eq!(
        agent.get("/").unwrap().1,
        "hello v3\n",
        "the rollback went back to v3"
    );
}

#[test]
fn deploys_over_https_drop_no_http2_request() {
    use berth_testkit::{TestCa, TlsClient};
    let agent = Agent::start_with(&[], &["--https", "127.0.0.1:0"]);
    let app = agent.app("zdt-tls");
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(&["zdt.test"]);
    std::fs::write(app.path().join("cert.pem"), cert).unwrap();
    std::fs::write(app.path().join("key.pem"), key).unwrap();
    let manifest = (web("STARTUP_DELAY_MS = \"500\"") + "replicas = 2\n")
        .replace("route = { domains = [] }", "route = { domains = [\"zdt.test\"], tls = { cert = \"./cert.pem\", key = \"./key.pem\" } }");
    app.write(&manifest);
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let https = agent.https();

    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (https, stop, client) = (
            https.clone(),
            stop.clone(),
            TlsClient::new(&ca.cert_pem, &[b"h2"]),
        );
        clients.push(std::thread::spawn(move || {
            crate::harness::block_on(async move {
                // One HTTP/2 connection per client, kept across every deploy.
                let mut connection = client.connect(&https, "zdt.test").await.unwrap();
                assert_eq!(connection.alpn.as_deref(), Some(&b"h2"[..]));
                let (mut ok, mut failures, mut versions) = (0u64, Vec::new(), Vec::<String>::new());
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match connection.get("zdt.test", "/").await {
                        Ok((200, _, body)) => {
                            ok += 1;
                            let version = body.split_whitespace().last().unwrap_or("").to_owned();
                            if versions.last() != Some(&version) {
                                versions.push(version);
                            }
                        }
                        Ok((status, _, body)) => failures.push(format!("{status}: {body}")),
                        Err(error) => failures.push(error.to_string()),
                    }
                }
                (ok, failures, versions)
            })
        }));
    }
    for version in ["v2", "v3", "v4"] {
        agent
            .berth_in(app.path(), &["deploy", "--version", version])
            .success();
    }
    agent
        .berth_in(app.path(), &["rollback", "--json"])
        .success();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    let (mut total, mut all_failures, mut seen) =
        (0, Vec::new(), std::collections::BTreeSet::new());
    for client in clients {
        let (ok, failures, versions) = client.join().unwrap();
        total += ok;
        all_failures.extend(failures);
        seen.extend(versions);
    }
    eprintln!(
        "{total} HTTP/2 requests over TLS, {} failed, versions seen: {seen:?}",
        all_failures.len()
    );
    assert!(
        all_failures.is_empty(),
        "{} of {} requests failed: {:?}",
        all_failures.len(),
        total + all_failures.len() as u64,
        all_failures
    );
    assert!(total > 200, "the clients kept requesting ({total})");
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["v1", "v2", "v3", "v4"]
    );
}
