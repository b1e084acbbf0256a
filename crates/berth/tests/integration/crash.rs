//! SIGKILL of the agent in the middle of a deploy, then a restart: the agent reconciles and
//! the app is served by exactly one healthy release.

use crate::harness::{Agent, AppDir, web};
use std::time::{Duration, Instant};

/// After a restart: waits until every web and worker container belongs to the live release
/// (and there are as many as it wants), then checks the app serves that release's version.
#[track_caller]
fn assert_one_live_release(agent: &Agent, app: &AppDir, web_replicas: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let status = agent.berth(&["status", "--json", "--app", &app.name]);
        if status.code == 0 || status.code == 1 {
            let json = status.json();
            let live = &json["apps"][0]["live_release"];
            if let (Some(number), Some(version)) =
                (live["number"].as_i64(), live["version"].as_str())
            {
                let containers: Vec<_> = agent
                    .containers()
                    .into_iter()
                    .filter(|(_, l)| l.get("berth.app") == Some(&app.name))
                    .collect();
                let stray = containers
                    .iter()
                    .filter(|(_, l)| l.get("berth.release") != Some(&number.to_string()))
                    .count();
                let web = containers
                    .iter()
                    .filter(|(_, l)| l.get("berth.service").map(String::as_str) == Some("web"))
                    .count();
                let serving = agent.get("/").ok();
                if stray == 0
                    && web == web_replicas
                    && serving.as_ref().map(|(_, b)| b.trim().ends_with(version)) == Some(true)
                {
                    assert_eq!(serving.unwrap().0, 200);
                    return version.to_owned();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not settle on one live release:\nstatus: {}\ncontainers: {:?}\nlog:\n{}",
            agent
                .berth(&["status", "--json", "--app", &app.name])
                .stdout,
            agent.containers(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the agent while a deploy is in progress at points spread over it: during the
/// build and release command, while the new container starts and is gated, around the
/// switch, during the worker's settle time and the drain.
#[test]
fn sigkill_at_any_point_of_a_deploy_leaves_one_live_release() {
    let mut agent = Agent::start();
    let app = agent.app("midkill");
    let manifest = |env: &str| {
        web(env)
            + "release_command = [\"migrate\"]\n\n[services.worker]\nbuild = \".\"\ncommand = [\"worker\"]\nstop_timeout = \"1s\"\n"
    };
    app.write(&manifest(""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v0"])
        .success();
    app.write(&manifest("STARTUP_DELAY_MS = \"1000\""));

    let mut outcomes = Vec::new();
    for (round, delay_ms) in [100u64, 500, 1000, 1500, 2000, 2600, 3200, 4000, 5500]
        .into_iter()
        .enumerate()
    {
        let version = format!("k{round}");
        let mut child = std::process::Command::new(crate::harness::BERTH)
            .args(["deploy", "--version", &version])
            .current_dir(app.path())
            .env("BERTH_DATA_DIR", agent.dir.path())
            .env("CI", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.kill();
        let _ = child.wait();
        agent.restart();
        let live = assert_one_live_release(&agent, &app, 1);
        outcomes.push((delay_ms, version.clone(), live.clone()));
        let releases = agent.berth_in(app.path(), &["releases", "--json"]).json();
        let this = releases
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == version.as_str());
        if let Some(this) = this {
            // Either it finished (live) or it was undone and recorded as interrupted.
            match this["status"].as_str().unwrap() {
                "live" => assert_eq!(live, version),
                "failed" => assert!(
                    this["error"].as_str().unwrap().contains("interrupted"),
                    "{this}"
                ),
                other => panic!("release {version} left as {other} after the restart"),
            }
        }
    }
    eprintln!(
        "kill point (ms after the deploy started), deploy's version, version live after the restart: {outcomes:?}"
    );
    // Early kills undo the deploy; a kill after the gate may land either side of the commit.
    assert_ne!(
        outcomes[0].2, outcomes[0].1,
        "a kill before the new container started undoes the deploy: {outcomes:?}"
    );
    assert!(agent.log().contains("reconciled with Docker"));
    // After all that the app still deploys normally.
    app.write(&manifest(""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "after"])
        .success();
    assert_eq!(agent.get("/").unwrap().1, "hello after\n");
}

#[test]
fn sigkill_after_the_switch_finishes_the_deploy() {
    let mut agent = Agent::start();
    let app = agent.app("drainkill");
    app.write(&web("").replace(
        "stop_timeout = \"2s\"",
        "stop_timeout = \"2s\"\n[deploy]\ndrain_timeout = \"60s\"",
    ));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();

    // A long request keeps the old release draining; kill the agent while it does.
    let http = agent.http.clone();
    let slow =
        std::thread::spawn(move || berth_testkit::http_get(&http, "/slow?ms=20000", "localhost"));
    std::thread::sleep(Duration::from_millis(300));
    let mut child = std::process::Command::new(crate::harness::BERTH)
        .args(["deploy", "--version", "v2"])
        .current_dir(app.path())
        .env("BERTH_DATA_DIR", agent.dir.path())
        .env("CI", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let releases = agent.berth_in(app.path(), &["releases", "--json"]).json();
        if releases[0]["version"] == "v2" && releases[0]["status"] == "live" {
            break; // committed; now draining the slow request
        }
        assert!(Instant::now() < deadline, "the deploy never committed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let old_release: Vec<_> = agent
        .containers()
        .into_iter()
        .filter(|(_, l)| l.get("berth.release").map(String::as_str) == Some("1"))
        .collect();
    assert_eq!(
        old_release.len(),
        1,
        "the old release is still draining when the agent dies"
    );
    agent.kill();
    let _ = child.wait();
    let _ = slow.join();
    agent.restart();
    assert_eq!(assert_one_live_release(&agent, &app, 1), "v2");
}

/// A restarted agent binds its ports at once but accepts nothing until its routes are back:
/// a client hammering it through the restart sees refused connections (while no process
/// listens), then answers from the app, never "no app is routed".
#[test]
fn a_restarted_agent_never_answers_before_its_routes_are_back() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut agent = Agent::start();
    let app = agent.app("ready");
    app.write(&web(""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "one"])
        .success();
    let addr = agent.http.clone();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answers: Vec<String> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = std::net::TcpStream::connect(&addr) else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(40)));
                if stream
                    .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .is_err()
                {
                    continue;
                }
                let mut response = Vec::new();
                let _ = stream.read_to_end(&mut response);
                let text = String::from_utf8_lossy(&response);
                if let Some(status) = text.split_whitespace().nth(1) {
                    answers.push(status.to_owned());
                }
            }
            answers
        })
    };
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        agent.restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let answers = client.join().unwrap();
    assert!(answers.len() > 20, "{answers:?}");
    assert!(
        answers.iter().all(|status| status == "200"),
        "only the app answers: {:?}",
        answers.iter().filter(|s| *s != "200").collect::<Vec<_>>()
    );
}
