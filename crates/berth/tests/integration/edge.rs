//! The edge end to end: WebSockets across a deploy, maintenance mode, per-route limits,
//! metrics and the access log.

use crate::harness::{Agent, web};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[test]
fn a_deploy_returns_while_an_open_websocket_drains_and_ends_with_a_close_frame() {
    let agent = Agent::start();
    let app = agent.app("ws");
    app.write(&(web("") + "\n[deploy]\ndrain_timeout = \"30s\"\nwebsocket_drain = \"4s\"\n"));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();

    let url = format!("ws://{}/ws", agent.http);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut socket, _) = runtime
        .block_on(tokio_tungstenite::connect_async(url.as_str()))
        .expect("the WebSocket upgrade goes through the proxy");
    let ask = |socket: &mut tokio_tungstenite::WebSocketStream<_>, text: &str| -> String {
        runtime.block_on(async {
            socket.send(Message::text(text)).await.unwrap();
            match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
                Ok(Some(Ok(Message::Text(reply)))) => reply.to_string(),
                other => panic!("no echo: {other:?}"),
            }
        })
    };
    assert_eq!(ask(&mut socket, "version"), "v1");

    // Deploy v2 with the WebSocket open: the deploy returns as soon as v2 is live, well
    // before the 30 s drain timeout, and the socket still talks to v1.
    let started = Instant::now();
    let deploy = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    deploy.success();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the deploy waited for the open WebSocket ({took:?})"
    );
    assert_eq!(agent.get("/").unwrap().1, "hello v2\n");
    assert_eq!(
        ask(&mut socket, "version"),
        "v1",
        "the open socket still reaches the old release"
    );
    // `status` shows the old release draining, with its WebSocket.
    let status = agent
        .berth_in(app.path(), &["status", "--json", "--app", &app.name])
        .json();
    let draining = &status["apps"][0]["draining"][0];
    assert_eq!(draining["release"], 1, "{status}");
    assert_eq!(draining["long_lived"], 1, "{status}");

    // At the WebSocket drain limit (4 s) berth closes it properly: a close frame saying the
    // service restarts (1012), not a reset.
    let closed = runtime.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame, but {other:?}"),
            }
        }
    });
    let frame = closed.expect("the close frame has a code");
    assert_eq!(u16::from(frame.code), 1012, "{frame:?}");
    drop(socket);
    // The old release is gone from status once drained, and a new socket reaches v2.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = agent
            .berth_in(app.path(), &["status", "--json", "--app", &app.name])
            .json();
        if status["apps"][0]["draining"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "still draining: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut socket, _) = runtime
        .block_on(tokio_tungstenite::connect_async(url.as_str()))
        .unwrap();
    assert_eq!(ask(&mut socket, "version"), "v2");

    // With --wait-drain the deploy returns only once the old release has drained.
    let started = Instant::now();
    agent
        .berth_in(app.path(), &["deploy", "--version", "v3", "--wait-drain"])
        .success();
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "waited for the WebSocket's drain limit"
    );
    let closed = runtime.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame, but {other:?}"),
            }
        }
    });
    assert!(closed.is_some(), "closed before the deploy returned");
}

#[test]
fn maintenance_mode_limits_metrics_and_the_access_log() {
    let agent = Agent::start_with(&[], &["--metrics", "127.0.0.1:0"]);
    let app = agent.app("edge");
    app.write(&web("").replace(
        "route = { domains = [] }",
        "route = { domains = [], rate_limit = \"20/min\", max_body = \"1k\" }",
    ));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();

    // Maintenance mode: a 503 page with the message, then back.
    let run = agent.berth_in(
        app.path(),
        &[
            "maintenance",
            "on",
            "--message",
            "Upgrading the database, back at noon.",
        ],
    );
    run.success();
    let (status, page) = agent.get("/").unwrap();
    assert_eq!(status, 503);
    assert!(
        page.contains("Upgrading the database, back at noon."),
        "{page}"
    );
    let shown = agent.berth(&["status"]);
    assert!(
        shown
            .stdout
            .contains("maintenance mode is on: Upgrading the database"),
        "{}",
        shown.stdout
    );
    agent
        .berth_in(app.path(), &["maintenance", "off"])
        .success();
    assert_eq!(agent.get("/").unwrap().0, 200);
    // It survives a deploy.
    agent.berth_in(app.path(), &["maintenance", "on"]).success();
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    assert_eq!(
        agent.get("/").unwrap().0,
        503,
        "maintenance mode stays on across deploys"
    );
    agent
        .berth_in(app.path(), &["maintenance", "off"])
        .success();

    // A request body over the route's limit.
    let oversized = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&agent.http).unwrap();
        write!(
            stream,
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    };
    assert!(oversized.starts_with("HTTP/1.1 413"), "{oversized}");

    // The per-client rate limit.
    let statuses: Vec<u16> = (0..30).map(|_| agent.get("/").unwrap().0).collect();
    assert!(statuses.contains(&429), "{statuses:?}");

    // Metrics, on their own listener.
    let metrics = agent.agent_file()["metrics"].as_str().unwrap().to_owned();
    let (status, text) = berth_testkit::http_get(&metrics, "/metrics", "localhost").unwrap();
    assert_eq!(status, 200);
    let app_label = format!("app=\"{}\"", app.name);
    assert!(
        text.contains(&format!(
            "berth_http_requests_total{{{app_label},status_class=\"2xx\"}}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "berth_http_requests_total{{{app_label},status_class=\"5xx\"}}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "berth_http_requests_total{{{app_label},status_class=\"4xx\"}}"
        )),
        "{text}"
    );
    assert!(
        text.contains("berth_http_request_duration_seconds_bucket{le="),
        "{text}"
    );
    assert!(text.contains("berth_http_requests_in_flight"), "{text}");
    // The host, sampled by a worker, under node_exporter's names.
    assert!(text.contains("\nnode_load1 "), "{text}");
    assert!(text.contains("\nnode_memory_MemAvailable_bytes "), "{text}");
    assert!(
        text.contains("node_filesystem_avail_bytes{mountpoint=")
            && text.contains("purpose=\"berth\""),
        "{text}"
    );

    // Prometheus' own text-format parser reads every family.
    let families = prometheus_families(&text);
    for family in [
        "berth_http_requests",
        "berth_http_request_duration_seconds",
        "node_load1",
        "node_cpu_seconds",
        "node_filesystem_avail_bytes",
    ] {
        assert!(
            families.contains(&family.to_owned()),
            "{family} in {families:?}"
        );
    }

    // The health report for outside monitors, on the same listener, without a token.
    let (status, text) = berth_testkit::http_get(&metrics, "/health", "localhost").unwrap();
    assert_eq!(status, 200, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["status"], "pass", "{report}");
    // The IETF health+json shape: a status, and checks as arrays of objects with a status.
    for (name, entries) in report["checks"].as_object().unwrap() {
        for entry in entries.as_array().unwrap() {
            let verdict = entry["status"].as_str().unwrap_or_default();
            assert!(
                ["pass", "warn", "fail"].contains(&verdict),
                "{name}: {entry}"
            );
            assert!(entry["componentType"].is_string(), "{name}: {entry}");
        }
    }
    assert_eq!(
        report["checks"][format!("{}/web:replicas", app.name)][0]["status"],
        "pass",
        "{report}"
    );

    // The access log, one JSON line per request.
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(agent.dir.path().join("logs/access.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 30, "{} lines", lines.len());
    let ok = lines.iter().find(|l| l["status"] == 200).unwrap();
    assert_eq!(ok["app"], app.name.as_str());
    assert_eq!(ok["service"], "web");
    assert_eq!(ok["method"], "GET");
    assert!(
        ok["upstream"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}-web-r", app.name))
    );
    assert!(lines.iter().any(|l| l["status"] == 429));
}

/// The metric families Prometheus' Python client (Debian's python3-prometheus-client) parses
/// out of a scrape; the parser fails on anything malformed.
fn prometheus_families(scrape: &str) -> Vec<String> {
    use std::io::Write;
    let mut parser = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\nfor f in parse(sys.stdin.read()):\n    print(f.name)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("Debian's python3-prometheus-client (scripts/install-test-peers installs it)");
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let output = parser.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the scrape does not parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sends one raw request and returns the status line of the answer.
fn status_line(addr: &str, request: &[u8]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

#[test]
fn the_agent_takes_its_header_size_limit_from_the_command_line() {
    let agent = Agent::start_with(&[], &["--max-header-size", "8KiB"]);
    let small = status_line(&agent.http, b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n");
    assert!(small.contains(" 404 "), "no route, but read: {small}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: nowhere.test\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    // Under the default limit (32KiB) this head would be accepted.
    let refused = status_line(&agent.http, big.as_bytes());
    assert!(refused.contains(" 431 "), "{refused}");

    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(crate::harness::BERTH)
        .args(["agent", "--data-dir"])
        .arg(dir.path())
        .args(["--http", "127.0.0.1:0", "--max-header-size", "lots"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-header-size `lots`"), "{stderr}");
}

/// `[status_page]`: the proxy serves each listed service's state and 90 days of uptime from
/// the probes' history, on the domain asked for, and says nothing else of the app.
#[test]
fn a_public_status_page_shows_the_services_and_their_uptime_and_nothing_else() {
    let agent = crate::harness::Agent::start();
    let app = agent.app("status");
    app.write(&format!(
        "{}\n[status_page]\ndomains = [\"status.test\"]\ntitle = \"Shop <Inc>\"\n",
        crate::harness::web("GREETING = \"secret-greeting\"")
    ));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v-hidden-1"])
        .success();
    let get = |method: &str, path: &str| {
        berth_testkit::http_request_to(&agent.http, "status.test", method, path, &[], "").unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let page = loop {
        let page = get("GET", "/");
        assert_eq!(page.status, 200, "{page:?}");
        if page.body.contains("Operational") {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the probes never showed web up: {}",
            page.body
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(page.body.contains("Shop &#60;Inc&#62;"), "{}", page.body);
    assert!(
        page.body.contains("All systems operational"),
        "{}",
        page.body
    );
    assert!(page.body.contains(">web "), "{}", page.body);
    assert_eq!(page.body.matches("<rect").count(), 90, "{}", page.body);
    assert!(
        page.body.contains("% up</title>"),
        "today has checks: {}",
        page.body
    );
    for hidden in ["v-hidden-1", "secret-greeting", "berth/", "172.", "<script"] {
        assert!(!page.body.contains(hidden), "{hidden} shown: {}", page.body);
    }
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(page.header("set-cookie").is_none());
    // Only the page itself, and only read.
    assert_eq!(get("POST", "/").status, 405);
    assert_eq!(get("GET", "/admin").status, 404);
    // The app itself is still served where it was.
    agent.wait_serving("secret-greeting");
}
