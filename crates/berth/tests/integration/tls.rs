//! HTTPS at the edge: certificate files, ACME certificates from a real ACME server (pebble)
//! over HTTP-01 and TLS-ALPN-01, renewal under load, redirects, HSTS and HTTP/2.

use crate::harness::{Agent, block_on, web};
use crate::pebble::{Pebble, free_port};
use berth_testkit::{TestCa, TlsClient};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn route_manifest(domain: &str, tls: &str) -> String {
    web("").replace(
        "route = { domains = [] }",
        &format!("route = {{ domains = [\"{domain}\"]{tls} }}"),
    )
}

/// Waits until the agent reports the domain's certificate as valid.
fn wait_for_certificate(agent: &Agent, domain: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let certs = agent.berth(&["certs", "--json"]).json();
        if let Some(cert) = certs
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["domain"] == domain)
        {
            if cert["state"] == "valid" {
                return cert.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no valid certificate for {domain}: {cert}\n{}",
                agent.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no certificate for {domain}: {certs}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn certificate_files_serve_https_with_http2_redirects_and_hsts() {
    let agent = Agent::start_with(&[], &["--https", "127.0.0.1:0"]);
    let app = agent.app("files");
    let ca = TestCa::new();
    let write_cert = |ca: &TestCa| {
        let (cert, key) = ca.leaf(&["files.test"]);
        std::fs::create_dir_all(app.path().join("certs")).unwrap();
        std::fs::write(app.path().join("certs/cert.pem"), cert).unwrap();
        std::fs::write(app.path().join("certs/key.pem"), key).unwrap();
    };
    write_cert(&ca);
    app.write(&route_manifest(
        "files.test",
        ", tls = { cert = \"./certs/cert.pem\", key = \"./certs/key.pem\" }",
    ));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let cert = wait_for_certificate(&agent, "files.test");
    assert_eq!(cert["source"], "files");

    let https = agent.https();
    let port = https.rsplit_once(':').unwrap().1.to_owned();
    let first_certificate = block_on(async {
        // HTTP/2 by ALPN, verified against the test CA only.
        let client = TlsClient::new(&ca.cert_pem, &[b"h2", b"http/1.1"]);
        let mut connection = client.connect(&https, "files.test").await.unwrap();
        assert_eq!(connection.alpn.as_deref(), Some(&b"h2"[..]));
        let (status, headers, body) = connection.get("files.test", "/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "hello v1\n"));
        assert_eq!(headers["strict-transport-security"], "max-age=31536000");

        // HTTP/1.1 clients too.
        let client = TlsClient::new(&ca.cert_pem, &[b"http/1.1"]);
        let mut connection = client.connect(&https, "files.test").await.unwrap();
        assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(connection.get("files.test", "/").await.unwrap().0, 200);

        // A name with no certificate gets no handshake.
        assert!(client.connect(&https, "other.test").await.is_err());
        connection.peer_certificate
    });

    // Plain HTTP is redirected to HTTPS, keeping the path.
    let (status, body) =
        berth_testkit::http_get(&agent.http, "/some/path?x=1", "files.test").unwrap();
    assert_eq!(status, 308, "{body}");
    let raw = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&agent.http).unwrap();
        write!(
            stream,
            "GET /some/path?x=1 HTTP/1.1\r\nhost: files.test\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    assert!(
        raw.to_lowercase().contains(&format!(
            "location: https://files.test:{port}/some/path?x=1"
        )),
        "{raw}"
    );

    // New files (renewed by another tool) are picked up with the next deploy or minute.
    write_cert(&ca);
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    let second_certificate = block_on(async {
        let client = TlsClient::new(&ca.cert_pem, &[b"h2"]);
        let mut connection = client.connect(&https, "files.test").await.unwrap();
        assert_eq!(
            connection.get("files.test", "/").await.unwrap().2,
            "hello v2\n"
        );
        connection.peer_certificate
    });
    assert_ne!(
        first_certificate, second_certificate,
        "the rewritten certificate is served"
    );
}

/// An agent whose HTTP and HTTPS ports are the ones pebble validates against (unless
/// `validate_elsewhere`, which points pebble's HTTP-01 checks at a port nobody serves).
fn acme_agent(challenge: &str, validate_elsewhere: bool) -> (Agent, Pebble) {
    acme_agent_with(challenge, validate_elsewhere, &[])
}

fn acme_agent_with(challenge: &str, validate_elsewhere: bool, extra: &[&str]) -> (Agent, Pebble) {
    let (http_port, https_port) = (free_port(), free_port());
    let validated_http = if validate_elsewhere {
        free_port()
    } else {
        http_port
    };
    let pebble = Pebble::start(validated_http, https_port);
    let https = format!("127.0.0.1:{https_port}");
    let ca_root = pebble.listener_ca_path.display().to_string();
    let mut agent = Agent::unstarted();
    agent.http = format!("127.0.0.1:{http_port}");
    let mut args = vec![
        "--https",
        &https,
        "--acme-directory",
        &pebble.directory,
        "--acme-ca-root",
        &ca_root,
        "--acme-challenge",
        challenge,
        "--acme-email",
        "ops@example.com",
    ];
    args.extend_from_slice(extra);
    agent.spawn_with(&args);
    (agent, pebble)
}

/// The console on a domain gets its certificate like an app's route, plain HTTP is sent to
/// HTTPS, and its cookies are `Secure` with the `__Host-` prefix.
#[test]
fn the_console_is_served_on_its_domain_with_an_acme_certificate() {
    let (agent, pebble) = acme_agent_with(
        "http-01",
        false,
        &[
            "--dashboard",
            "127.0.0.1:0",
            "--dashboard-domain",
            "console-acme.test",
        ],
    );
    let https = agent.https();
    let port = https.rsplit(':').next().unwrap().to_owned();
    assert_eq!(
        agent.agent_file()["dashboard"],
        format!("https://console-acme.test:{port}")
    );
    let cert = wait_for_certificate(&agent, "console-acme.test");
    assert_eq!(cert["source"], "acme");
    let (status, headers, body) = block_on(async {
        let client = TlsClient::new(&pebble.issuing_root, &[b"h2", b"http/1.1"]);
        let mut connection = client
            .connect(&https, "console-acme.test")
            .await
            .expect("the chain verifies against pebble's root");
        connection
            .get(&format!("console-acme.test:{port}"), "/login")
            .await
            .unwrap()
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Log in"), "{body}");
    let cookies: Vec<_> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("__Host-berth_login=") && c.contains("; Secure")),
        "{cookies:?}"
    );
    assert!(headers.get("strict-transport-security").is_some());
    // Plain HTTP goes to HTTPS.
    let plain =
        berth_testkit::http_request_to(&agent.http, "console-acme.test", "GET", "/login", &[], "")
            .unwrap();
    assert_eq!(plain.status, 308, "{plain:?}");
    assert_eq!(
        plain.header("location"),
        Some(format!("https://console-acme.test:{port}/login").as_str())
    );
}

#[test]
fn an_acme_certificate_is_obtained_over_http01_and_renewed_under_load() {
    let (agent, pebble) = acme_agent("http-01", false);
    let app = agent.app("acme");
    app.write(&route_manifest("acme-http.test", ""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let cert = wait_for_certificate(&agent, "acme-http.test");
    assert_eq!(cert["source"], "acme");
    assert!(
        cert["issuer"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("pebble"),
        "{cert}"
    );
    assert!(cert["not_after"].as_i64().unwrap() > 0);

    let https = agent.https();
    let client = TlsClient::new(&pebble.issuing_root, &[b"h2", b"http/1.1"]);
    let first = block_on(async {
        let mut connection = client
            .connect(&https, "acme-http.test")
            .await
            .expect("the chain verifies against pebble's root");
        let (status, _, body) = connection.get("acme-http.test", "/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "hello v1\n"));
        connection.peer_certificate
    });

    // Clients keep requesting (fresh handshakes and one long-lived HTTP/2 connection) while
    // the certificate is renewed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, client, https) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            client.clone(),
            https.clone(),
        );
        std::thread::spawn(move || {
            block_on(async move {
                let mut seen = std::collections::BTreeSet::new();
                let mut kept = client.connect(&https, "acme-http.test").await.unwrap();
                let deadline = Instant::now() + Duration::from_secs(90);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.connect(&https, "acme-http.test").await {
                        Ok(mut fresh) => {
                            seen.insert(fresh.peer_certificate.clone());
                            match fresh.get("acme-http.test", "/").await {
                                Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                                _ => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    match kept.get("acme-http.test", "/").await {
                        Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seen
            })
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    agent.berth(&["certs", "renew", "acme-http.test"]).success();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = block_on(async {
            client
                .connect(&https, "acme-http.test")
                .await
                .map(|c| c.peer_certificate)
        });
        if current.as_ref().is_ok_and(|c| *c != first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the certificate was not replaced\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the renewal",
        ok + failed
    );
    assert!(ok > 20, "the clients kept requesting ({ok})");
    assert!(
        seen.len() >= 2,
        "clients saw the old and the new certificate"
    );
    let audit = agent.berth(&["audit", "--json"]).json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "certificate.renew")
    );
}

#[test]
fn an_acme_certificate_is_obtained_over_tls_alpn01() {
    let (agent, pebble) = acme_agent("tls-alpn-01", false);
    let app = agent.app("alpn");
    app.write(&route_manifest("acme-alpn.test", ""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    wait_for_certificate(&agent, "acme-alpn.test");
    let https = agent.https();
    block_on(async {
        let client = TlsClient::new(&pebble.issuing_root, &[b"http/1.1"]);
        let mut connection = client
            .connect(&https, "acme-alpn.test")
            .await
            .expect("the chain verifies against pebble's root");
        assert_eq!(
            connection.get("acme-alpn.test", "/").await.unwrap().2,
            "hello v1\n"
        );
    });
}

#[test]
fn a_failing_issuance_is_visible_retried_and_keeps_plain_http_serving() {
    let (agent, _pebble) = acme_agent("http-01", true);
    let app = agent.app("failing");
    app.write(&(route_manifest("acme-fail.test", "") + "\n[services.other]\nbuild = \".\"\nport = 8080\nenv = { GREETING = \"other\" }\nroute = { domains = [] }\n"));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let deadline = Instant::now() + Duration::from_secs(60);
    let cert = loop {
        let certs = agent.berth(&["certs", "--json"]).json();
        if let Some(cert) = certs
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["domain"] == "acme-fail.test" && c["state"] == "failing")
        {
            break cert.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the failure never showed: {certs}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let error = cert["last_error"].as_str().unwrap();
    assert!(
        error.contains("validate acme-fail.test"),
        "the reason is named: {error}"
    );
    assert!(
        cert["next_attempt"].as_i64().unwrap() > berth_now() + 30,
        "the next attempt backs off: {cert}"
    );
    // No certificate: no redirect, plain HTTP keeps serving this route and the others.
    assert_eq!(
        berth_testkit::http_get(&agent.http, "/", "acme-fail.test").unwrap(),
        (200, "hello v1\n".into())
    );
    assert_eq!(
        berth_testkit::http_get(&agent.http, "/", "anything.test").unwrap(),
        (200, "other v1\n".into())
    );
    let status = agent.berth(&["status"]);
    status.failure(1);
    assert!(
        status.stdout.contains("acme-fail.test") && status.stdout.contains("failing"),
        "{}",
        status.stdout
    );
}

fn berth_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
