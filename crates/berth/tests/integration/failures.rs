//! Deploys that fail: the old release keeps serving, the command exits non-zero and says
//! why, and nothing of the failed release is left running.

use crate::harness::{Agent, web};
use std::time::Duration;

fn release_containers(agent: &Agent, app: &str, release: &str) -> Vec<String> {
    agent
        .containers()
        .into_iter()
        .filter(|(_, l)| {
            l.get("berth.app").map(String::as_str) == Some(app)
                && l.get("berth.release").map(String::as_str) == Some(release)
        })
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn a_failed_health_gate_keeps_the_old_release_serving() {
    let agent = Agent::start();
    let app = agent.app("gate");
    app.write(&web(""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "good"])
        .success();

    app.write(
        &web("FAIL_HEALTH = \"1\"").replace("start_timeout = \"20s\"", "start_timeout = \"3s\""),
    );
    let run = agent.berth_in(app.path(), &["deploy", "--version", "bad"]);
    run.failure(1);
    assert!(run.stderr.contains("service web failed its health check: not healthy after 3s: GET /health returned 500, expected status 2xx"), "{}", run.stderr);
    assert!(
        run.stderr.contains("last lines of"),
        "the failing container's log is shown: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("listening on port 8080"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("release 1 (good) keeps serving"),
        "{}",
        run.stderr
    );
    assert_eq!(agent.get("/").unwrap(), (200, "hello good\n".into()));
    assert!(
        release_containers(&agent, &app.name, "2").is_empty(),
        "the failed release's containers are removed"
    );

    let releases = agent.berth_in(app.path(), &["releases", "--json"]).json();
    assert_eq!(releases[0]["status"], "failed");
    assert!(
        releases[0]["error"]
            .as_str()
            .unwrap()
            .contains("failed its health check")
    );
    assert_eq!(releases[1]["status"], "live");
    // The table cuts a long error with an ellipsis, never silently.
    let table = agent.berth_in(app.path(), &["releases"]);
    table.success();
    assert!(table.stdout.contains('…'), "{}", table.stdout);
    // `status` says the last deploy failed, and why, while release 1 serves.
    let status = agent.berth_in(app.path(), &["status", "--app", &app.name]);
    assert!(
        status
            .stdout
            .contains("the last deploy failed: release 2 (bad)")
            && status.stdout.contains("failed its health check"),
        "{}",
        status.stdout
    );
    let status = agent
        .berth_in(app.path(), &["status", "--json", "--app", &app.name])
        .json();
    assert_eq!(status["apps"][0]["last_failed"]["number"], 2, "{status}");
    assert_eq!(status["apps"][0]["live_release"]["number"], 1);

    let json = agent.berth_in(app.path(), &["deploy", "--version", "bad2", "--json"]);
    json.failure(1);
    let outcome = json.json();
    assert_eq!(outcome["ok"], false);
    assert_eq!(outcome["live_release"], 1);
    assert!(!outcome["error"]["log_tail"].as_array().unwrap().is_empty());
}

#[test]
fn a_container_that_crashes_at_start_fails_at_once() {
    let agent = Agent::start();
    let app = agent.app("crash");
    app.write(&web(""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "good"])
        .success();
    app.write(&web("CRASH = \"1\"").replace("healthcheck", "restart = \"no\"\nhealthcheck"));
    let started = std::time::Instant::now();
    let run = agent.berth_in(app.path(), &["deploy", "--version", "bad"]);
    run.failure(1);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no waiting for the start timeout"
    );
    assert!(
        run.stderr
            .contains("the container exited with status 3 while starting"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("CRASH is set"), "{}", run.stderr);
    assert_eq!(agent.get("/").unwrap().1, "hello good\n");
}

#[test]
fn a_failed_release_command_stops_the_deploy_before_any_container_starts() {
    let agent = Agent::start();
    let app = agent.app("migrate");
    app.write(&(web("") + "release_command = [\"migrate\"]\n"));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v1"]);
    run.success();
    assert!(
        run.stderr.contains("release command (web): migrate"),
        "{}",
        run.stderr
    );

    app.write(&(web("MIGRATE_FAIL = \"1\"") + "release_command = [\"migrate\"]\n"));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    run.failure(1);
    assert!(
        run.stderr
            .contains("the release command `migrate` of service web exited with status 1"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("migration failed: MIGRATE_FAIL is set"),
        "its output is shown: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("start web"),
        "no new container was started: {}",
        run.stderr
    );
    assert_eq!(agent.get("/").unwrap().1, "hello v1\n");
    assert!(release_containers(&agent, &app.name, "2").is_empty());
}

#[test]
fn a_failing_worker_puts_the_web_traffic_back() {
    let agent = Agent::start();
    let app = agent.app("badworker");
    let manifest = |env: &str| {
        web("")
            + &format!(
                "\n[services.worker]\nbuild = \".\"\ncommand = [\"worker\"]\nrestart = \"no\"\nenv = {{ {env} }}\n"
            )
    };
    app.write(&manifest(""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();

    app.write(&manifest("WORKER_FAIL = \"1\""));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    run.failure(1);
    assert!(
        run.stderr
            .contains("service worker failed its health check: the container exited with status 1"),
        "{}",
        run.stderr
    );
    assert_eq!(
        agent.get("/").unwrap().1,
        "hello v1\n",
        "traffic went back to the old release"
    );
    assert!(release_containers(&agent, &app.name, "2").is_empty());
    assert_eq!(release_containers(&agent, &app.name, "1").len(), 2);
}

#[test]
fn one_deploy_at_a_time_per_app() {
    let agent = Agent::start();
    let app = agent.app("lock");
    app.write(&web(""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();

    app.write(&web("STARTUP_DELAY_MS = \"3000\""));
    let first = std::thread::scope(|scope| {
        let slow = scope.spawn(|| agent.berth_in(app.path(), &["deploy", "--version", "v2"]));
        // Wait until the slow deploy holds the lock.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = agent
                .berth(&["status", "--json", "--app", &app.name])
                .json();
            if !status["apps"][0]["operation"].is_null() {
                assert_eq!(status["apps"][0]["operation"]["operation"], "deploy");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the first deploy never took the lock"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let second = agent.berth_in(app.path(), &["deploy", "--version", "v3"]);
        second.failure(1);
        assert!(second.stderr.contains("a deploy of"), "{}", second.stderr);
        assert!(
            second.stderr.contains("is already in progress, started by"),
            "{}",
            second.stderr
        );
        assert!(second.stderr.contains("--wait"), "{}", second.stderr);

        let waiting =
            scope.spawn(|| agent.berth_in(app.path(), &["deploy", "--version", "v4", "--wait"]));
        let first = slow.join().unwrap();
        let waited = waiting.join().unwrap();
        waited.success();
        assert!(
            waited.stderr.contains("waiting for the deploy of"),
            "{}",
            waited.stderr
        );
        first
    });
    first.success();
    assert_eq!(agent.get("/").unwrap().1, "hello v4\n");
}

#[test]
fn docker_unreachable_is_one_clear_line() {
    let agent = Agent::start_with_env(&[("DOCKER_HOST", "unix:///tmp/berth-test-no-docker.sock")]);
    let app = agent.app("nodocker");
    app.write(&web(""));
    let run = agent.berth_in(app.path(), &["deploy"]);
    run.failure(1);
    assert!(
        run.stderr.contains("cannot reach Docker at unix:///tmp/berth-test-no-docker.sock: the socket /tmp/berth-test-no-docker.sock does not exist; is Docker installed and running?"),
        "{}",
        run.stderr
    );
    let status = agent.berth(&["status", "--json"]).json();
    assert!(
        status["agent"]["docker"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach Docker")
    );
    assert!(
        agent.log().contains("cannot reconcile with Docker yet"),
        "the agent keeps trying"
    );
}

#[test]
fn a_broken_manifest_never_reaches_docker() {
    let agent = Agent::start();
    let app = agent.app("broken");
    app.write("app = \"{app}\"\n[services.web]\nbuild = \".\"\nport = 8080\nhealthcheck = { path = \"/health\", interval = \"fast\" }\n");
    let run = agent.berth_in(app.path(), &["check"]);
    run.failure(2);
    assert!(run.stderr.contains("berth.toml:5:"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("`healthcheck.interval` is not a duration"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("help: durations look like"),
        "{}",
        run.stderr
    );

    let run = agent.berth_in(app.path(), &["deploy"]);
    run.failure(2);
    assert!(run.stderr.contains("berth.toml:5:"), "{}", run.stderr);
    let checked = agent.berth_in(app.path(), &["check", "--json"]);
    checked.failure(2);
    assert_eq!(checked.json()["errors"][0]["line"], 5);
    assert!(agent.containers().is_empty(), "nothing was created");
    let releases = agent.berth(&["releases", "--app", &app.name]);
    releases.failure(2);
    assert!(
        releases.stderr.contains("no app named"),
        "{}",
        releases.stderr
    );
}

#[test]
fn a_missing_build_context_or_dockerfile_is_named_before_anything_runs() {
    let agent = Agent::start();
    let app = agent.app("nodockerfile");
    app.write(&web("").replace(
        "build = \".\"",
        "build = { context = \".\", dockerfile = \"Dockerfile.prod\" }",
    ));
    let run = agent.berth_in(app.path(), &["deploy"]);
    run.failure(2);
    assert!(
        run.stderr
            .contains("service web: the Dockerfile Dockerfile.prod is not in the build context"),
        "{}",
        run.stderr
    );
    assert!(agent.containers().is_empty());
}

#[test]
fn no_agent_is_a_clear_error_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(crate::harness::BERTH)
        .args(["status"])
        .env("BERTH_DATA_DIR", dir.path())
        .env_remove("BERTH_AGENT")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the berth agent at unix:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("start the agent with `berth agent`"),
        "{stderr}"
    );
}
