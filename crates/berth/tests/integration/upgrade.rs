//! A restart or an upgrade of berth itself is a deploy too: `berth agent upgrade` hands the
//! listening sockets to a new process, and clients on HTTP/1.1 keep-alive, HTTP/2 and an open
//! WebSocket notice nothing but a proper close of the WebSocket.

use crate::harness::{Agent, web};
use berth_testkit::{KeepAliveClient, TestCa, TlsClient};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Outcomes = (u64, Vec<String>, std::collections::BTreeSet<String>);

/// HTTP/1.1 keep-alive clients that never retry: every failure is counted.
fn http1_clients(
    addr: &str,
    stop: &Arc<AtomicBool>,
    deadline: Instant,
) -> Vec<std::thread::JoinHandle<Outcomes>> {
    (0..2)
        .map(|_| {
            let (addr, stop) = (addr.to_owned(), stop.clone());
            std::thread::spawn(move || {
                let mut client = KeepAliveClient::new(&addr, "plain.test");
                let (mut ok, mut failures, mut seen) =
                    (0, Vec::new(), std::collections::BTreeSet::new());
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.get("/") {
                        Ok((200, body)) => {
                            ok += 1;
                            seen.insert(body);
                        }
                        Ok((status, body)) => failures.push(format!("HTTP/1.1 {status}: {body}")),
                        Err(error) => failures.push(format!("HTTP/1.1: {error}")),
                    }
                }
                (ok, failures, seen)
            })
        })
        .collect()
}

/// HTTP/2 clients over TLS: a new connection once the server said GOAWAY; a request the
/// server never took (RFC 9113 §8.7) is sent again, any other failure counts.
fn http2_clients(
    https: &str,
    ca: &TestCa,
    stop: &Arc<AtomicBool>,
    deadline: Instant,
) -> Vec<std::thread::JoinHandle<Outcomes>> {
    (0..2)
        .map(|_| {
            let (https, stop) = (https.to_owned(), stop.clone());
            let client = TlsClient::new(&ca.cert_pem, &[b"h2"]);
            std::thread::spawn(move || {
                crate::harness::block_on(async move {
                    let mut connection = client.connect(&https, "tls.test").await.unwrap();
                    let (mut ok, mut failures, mut seen) =
                        (0, Vec::new(), std::collections::BTreeSet::new());
                    let mut reconnects = 0;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        if connection.is_closed() {
                            connection = client.connect(&https, "tls.test").await.unwrap();
                            reconnects += 1;
                        }
                        match connection.get("tls.test", "/").await {
                            Ok((200, _, body)) => {
                                ok += 1;
                                seen.insert(body);
                            }
                            Ok((status, _, body)) => {
                                failures.push(format!("HTTP/2 {status}: {body}"))
                            }
                            Err(error) if error.kind() == std::io::ErrorKind::NotConnected => {
                                connection = client.connect(&https, "tls.test").await.unwrap();
                                reconnects += 1;
                            }
                            Err(error) => failures.push(format!("HTTP/2: {error}")),
                        }
                    }
                    eprintln!("an HTTP/2 client opened {reconnects} new connections");
                    (ok, failures, seen)
                })
            })
        })
        .collect()
}

#[test]
fn the_agent_restarts_and_upgrades_without_failing_a_request() {
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let notify = notify_path.to_str().unwrap().to_owned();
    let mut agent = Agent::start_with(
        &[("NOTIFY_SOCKET", notify.as_str())],
        &["--https", "127.0.0.1:0"],
    );
    let heard = |systemd: &std::os::unix::net::UnixDatagram| {
        let mut buffer = [0u8; 256];
        let n = systemd.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    assert_eq!(heard(&systemd), "READY=1", "ready once the proxy accepts");

    let plain = agent.app("plain");
    plain.write(&web("GREETING = \"plain\"").replace("domains = []", "domains = [\"plain.test\"]"));
    agent
        .berth_in(plain.path(), &["deploy", "--version", "v1"])
        .success();
    let secure = agent.app("secure");
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(&["tls.test"]);
    std::fs::write(secure.path().join("cert.pem"), cert).unwrap();
    std::fs::write(secure.path().join("key.pem"), key).unwrap();
    secure.write(&web("GREETING = \"secure\"").replace(
        "route = { domains = [] }",
        "route = { domains = [\"tls.test\"], tls = { cert = \"./cert.pem\", key = \"./key.pem\" } }",
    ));
    agent
        .berth_in(secure.path(), &["deploy", "--version", "v1"])
        .success();
    let https = agent.https();
    let first_pid = agent.pid().unwrap();

    // A WebSocket through the agent that will be replaced.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let request = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/ws", agent.http)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("host", "plain.test".parse().unwrap());
        request
    };
    let (mut socket, _) = runtime
        .block_on(tokio_tungstenite::connect_async(request.clone()))
        .expect("the WebSocket upgrade goes through the proxy");
    runtime
        .block_on(socket.send(Message::text("version")))
        .unwrap();
    let reply = runtime.block_on(socket.next());
    assert!(
        matches!(&reply, Some(Ok(Message::Text(t))) if t.as_str() == "v1"),
        "{reply:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut clients = http1_clients(&agent.http, &stop, deadline);
    clients.extend(http2_clients(&https, &ca, &stop, deadline));
    std::thread::sleep(Duration::from_millis(500));

    // A restart: the same binary, a new process.
    let run = agent.berth(&["agent", "upgrade"]);
    run.success();
    assert!(
        run.stdout.contains("the agent runs berth"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let second_pid = agent.pid().unwrap();
    assert_ne!(second_pid, first_pid, "a new process serves");
    let mut notes = vec![heard(&systemd), heard(&systemd)];
    notes.sort();
    assert_eq!(
        notes,
        [format!("MAINPID={second_pid}"), "READY=1".to_owned()]
    );

    // The WebSocket on the old process ends properly before it exits: 1012, not a reset.
    let closed = runtime.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame, but {other:?}"),
            }
        }
    });
    assert_eq!(u16::from(closed.expect("a close code").code), 1012);
    let status = agent
        .started_process_exit(Duration::from_secs(20))
        .expect("the old agent exits after draining");
    assert!(status.success(), "{status}");

    // An upgrade: another binary.
    let next = tempfile::tempdir().unwrap();
    let binary = next.path().join("berth-next");
    std::fs::copy(env!("CARGO_BIN_EXE_berth"), &binary).unwrap();
    agent
        .berth(&["agent", "upgrade", binary.to_str().unwrap()])
        .success();
    let third_pid = agent.pid().unwrap();
    assert_ne!(third_pid, second_pid);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);

    let (mut total, mut failures) = (0, Vec::new());
    for client in clients {
        let (ok, failed, seen) = client.join().unwrap();
        total += ok;
        failures.extend(failed);
        assert!(
            seen.iter()
                .all(|body| body == "plain v1\n" || body == "secure v1\n"),
            "{seen:?}"
        );
    }
    eprintln!(
        "{total} requests across a restart and an upgrade, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(total > 200, "the clients kept requesting ({total})");

    // The new agent owns everything: the API, the lock, the address.
    let (mut socket, _) = runtime
        .block_on(tokio_tungstenite::connect_async(request))
        .unwrap();
    runtime
        .block_on(socket.send(Message::text("version")))
        .unwrap();
    assert!(matches!(
        runtime.block_on(socket.next()),
        Some(Ok(Message::Text(t))) if t.as_str() == "v1"
    ));
    agent
        .berth_in(plain.path(), &["deploy", "--version", "v2"])
        .success();
    let status = agent.berth(&["status", "--json"]).json();
    assert_eq!(status["agent"]["pid"], third_pid, "{status}");
    let other = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let intruder = agent.berth(&[
        "agent",
        "--data-dir",
        other.path().to_str().unwrap(),
        "--http",
        &agent.http,
        "--https",
        "off",
        "--acme-directory",
        "off",
    ]);
    assert_ne!(intruder.code, 0, "{}", intruder.stderr);
    assert!(
        intruder.stderr.contains("already served by"),
        "{}",
        intruder.stderr
    );
    let audit = agent.berth(&["audit", "--json"]).json();
    let upgrades = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "upgrade" && e["result"] == "ok")
        .count();
    assert_eq!(upgrades, 2, "{audit}");
}

#[test]
fn a_failed_upgrade_leaves_the_running_agent_serving() {
    let agent = Agent::start();
    let app = agent.app("stays");
    app.write(&web("GREETING = \"stays\""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let pid = agent.pid().unwrap();

    let run = agent.berth(&["agent", "upgrade", "/bin/true"]);
    run.failure(2);
    assert!(
        run.stderr.contains("/bin/true is not a berth binary"),
        "{}",
        run.stderr
    );
    let run = agent.berth(&["agent", "upgrade", "bin/berth"]);
    run.failure(2);
    assert!(run.stderr.contains("absolute path"), "{}", run.stderr);

    // A new agent that cannot reach Docker gives up after it took the data directory: the
    // running one takes it back and carries on.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("berth-broken");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {berth} --version; fi\nDOCKER_HOST=unix:///nonexistent/docker.sock exec {berth} \"$@\"\n",
            berth = env!("CARGO_BIN_EXE_berth")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let run = agent.berth(&["agent", "upgrade", wrapper.to_str().unwrap()]);
    run.failure(1);
    assert!(
        run.stderr.contains("cannot rebuild the routes") && run.stderr.contains("keeps serving"),
        "{}",
        run.stderr
    );
    eprintln!("the failed upgrade took {:?}", started.elapsed());
    assert_eq!(
        agent.pid(),
        Some(pid),
        "agent.json names the running agent again"
    );
    assert_eq!(agent.get("/").unwrap(), (200, "stays v1\n".into()));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    assert_eq!(agent.get("/").unwrap(), (200, "stays v2\n".into()));

    // While an operation runs, an upgrade is refused and says which.
    app.write(&web("GREETING = \"stays\", STARTUP_DELAY_MS = \"3000\""));
    let slow = {
        let (dir, data_dir) = (app.path().to_owned(), agent.dir.path().to_owned());
        std::thread::spawn(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["deploy", "--version", "v3"])
                .env("BERTH_DATA_DIR", data_dir)
                .env_remove("BERTH_AGENT")
                .current_dir(dir)
                .output()
                .unwrap()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = agent.berth(&["status", "--json"]).json();
        if !status["apps"][0]["operation"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "the deploy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = agent.berth(&["agent", "upgrade"]);
    run.failure(1);
    assert!(
        run.stderr.contains("the agent is busy: a deploy of"),
        "{}",
        run.stderr
    );
    assert!(slow.join().unwrap().status.success());
    assert_eq!(agent.pid(), Some(pid));
    agent.berth(&["agent", "upgrade"]).success();
    assert_ne!(agent.pid(), Some(pid));
    assert_eq!(agent.get("/").unwrap(), (200, "stays v3\n".into()));
}

/// The shipped unit passes systemd's own checks (pointed at the binary just built) and wires
/// `systemctl reload` to the hand-over.
#[test]
fn the_shipped_systemd_unit_is_valid_and_reloads_by_handing_over() {
    let unit = std::fs::read_to_string(berth_testkit::workspace_root().join("dist/berth.service"))
        .unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecStart=/usr/local/bin/berth agent",
        "ExecReload=/usr/local/bin/berth agent upgrade",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/berth", env!("CARGO_BIN_EXE_berth")),
    )
    .unwrap();
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/install-test-peers installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        verified.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// A client that connected just before a restart, and starts its TLS handshake only after the
/// old process was told to go, is still served: the process that accepted the connection
/// finishes the handshake and answers (a shutdown used to drop it mid-handshake).
#[test]
fn a_connection_accepted_before_a_restart_is_served_after_it() {
    let agent = Agent::start_with(&[], &["--https", "127.0.0.1:0"]);
    let secure = agent.app("secure");
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(&["tls.test"]);
    std::fs::write(secure.path().join("cert.pem"), cert).unwrap();
    std::fs::write(secure.path().join("key.pem"), key).unwrap();
    secure.write(&web("GREETING = \"secure\"").replace(
        "route = { domains = [] }",
        "route = { domains = [\"tls.test\"], tls = { cert = \"./cert.pem\", key = \"./key.pem\" } }",
    ));
    agent
        .berth_in(secure.path(), &["deploy", "--version", "v1"])
        .success();
    let https = agent.https();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let tcp = runtime
            .block_on(tokio::net::TcpStream::connect(&https))
            .unwrap();
        // The old process accepts it and waits for the client's hello.
        std::thread::sleep(Duration::from_millis(300));
        let old_pid = agent.pid().unwrap();
        agent.berth(&["agent", "upgrade"]).success();
        assert_ne!(agent.pid().unwrap(), old_pid);
        let client = TlsClient::new(&ca.cert_pem, &[alpn]);
        let answer = runtime.block_on(async {
            let mut connection = client.handshake(tcp, "tls.test").await?;
            connection.get("tls.test", "/").await
        });
        match answer {
            Ok((200, _, body)) => assert!(body.contains("secure"), "{body}"),
            other => panic!(
                "{} after a restart: {other:?}",
                String::from_utf8_lossy(alpn)
            ),
        }
    }
}
