//! Deploys that go well: first deploy, redeploy, rollback, workers, accessories, restart,
//! logs and exec.

use crate::harness::{Agent, web};
use std::time::Duration;

fn names_of(agent: &Agent, app: &str, service: &str) -> Vec<String> {
    let mut names: Vec<String> = agent
        .containers()
        .into_iter()
        .filter(|(_, labels)| {
            labels.get("berth.app").map(String::as_str) == Some(app)
                && labels.get("berth.service").map(String::as_str) == Some(service)
        })
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

/// The containers of a service once the old release has drained in the background (a
/// deploy returns as soon as the new one serves): waits until there are `count`.
#[track_caller]
fn settled_names(agent: &Agent, app: &str, service: &str, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let names = names_of(agent, app, service);
        if names.len() == count {
            return names;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{service} still has {names:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn first_deploy_then_redeploy_replaces_the_release() {
    let agent = Agent::start();
    let app = agent.app("first");
    app.write(&web("GREETING = \"hi\""));

    let run = agent.berth_in(app.path(), &["deploy", "--version", "v1", "--json"]);
    let outcome = run.success().json();
    assert_eq!(outcome["ok"], true);
    assert_eq!(outcome["release"], 1);
    assert_eq!(outcome["version"], "v1");
    assert_eq!(outcome["urls"][0], format!("http://{}/", agent.http));
    assert_eq!(agent.get("/").unwrap(), (200, "hi v1\n".into()));
    let first = names_of(&agent, &app.name, "web");
    assert_eq!(first.len(), 1);
    assert!(first[0].starts_with(&format!("{}-web-r1-", app.name)));

    let run = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    run.success();
    assert!(
        run.stdout.contains("release 2 (v2) is live"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("✓ health check web"),
        "progress is shown step by step: {}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("the old containers drain in the background"),
        "{}",
        run.stderr
    );
    assert_eq!(agent.get("/").unwrap(), (200, "hi v2\n".into()));
    let second = settled_names(&agent, &app.name, "web", 1);
    assert!(second[0].starts_with(&format!("{}-web-r2-", app.name)));

    let releases = agent.berth_in(app.path(), &["releases", "--json"]).json();
    let statuses: Vec<(i64, String)> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["number"].as_i64().unwrap(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [(2, "live".to_owned()), (1, "retired".to_owned())]
    );

    let status = agent
        .berth(&["status", "--json", "--app", &app.name])
        .json();
    let service = &status["apps"][0]["services"][0];
    assert_eq!(service["name"], "web");
    assert_eq!(service["release"], 2);
    assert_eq!(service["replicas"][0]["health"], "healthy");
    assert_eq!(service["replicas"][0]["state"], "running");
    assert!(service["replicas"][0]["uptime_seconds"].is_u64());
}

#[test]
fn replicas_share_traffic_and_rollback_returns_to_the_previous_release() {
    let agent = Agent::start();
    let app = agent.app("rollback");
    app.write(&(web("") + "replicas = 2\n"));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    settled_names(&agent, &app.name, "web", 2);
    agent.wait_serving("v2");

    let outcome = agent
        .berth_in(app.path(), &["rollback", "--json"])
        .success()
        .json();
    assert_eq!(outcome["release"], 3);
    assert_eq!(outcome["version"], "v1");
    assert_eq!(agent.get("/").unwrap().1, "hello v1\n");
    let releases = agent
        .berth(&["releases", "--app", &app.name, "--json"])
        .json();
    assert_eq!(releases[0]["kind"], "rollback");
    assert_eq!(releases[0]["rollback_of"], 1);
    assert_eq!(releases[0]["status"], "live");

    // Rolling back to a named release.
    let outcome = agent
        .berth(&["rollback", "2", "--app", &app.name, "--json"])
        .success()
        .json();
    assert_eq!(outcome["version"], "v2");
    assert_eq!(agent.get("/").unwrap().1, "hello v2\n");

    // A release that never went live is refused, as is an unknown one.
    let run = agent.berth(&["rollback", "99", "--app", &app.name]);
    run.failure(2);
    assert!(run.stderr.contains("has no release 99"), "{}", run.stderr);
}

#[test]
fn workers_are_replaced_after_the_web_service_is_live() {
    let agent = Agent::start();
    let app = agent.app("workers");
    let manifest = web("")
        + "\n[services.worker]\nbuild = \".\"\ncommand = [\"worker\"]\nstop_timeout = \"1s\"\n";
    app.write(&manifest);
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let first = names_of(&agent, &app.name, "worker");
    assert_eq!(first.len(), 1);

    let run = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    run.success();
    let switch = run.stderr.find("switch traffic").unwrap();
    let worker = run.stderr.find("start worker").unwrap();
    assert!(
        switch < worker,
        "workers start after the switch:\n{}",
        run.stderr
    );
    let second = settled_names(&agent, &app.name, "worker", 1);
    assert_ne!(first, second);

    let logs = agent
        .berth_in(app.path(), &["logs", "worker", "-n", "5"])
        .success()
        .stdout
        .clone();
    assert!(logs.contains("hello worker v2: tick"), "{logs}");
    assert!(!logs.contains("v1"), "only the new worker's log: {logs}");
}

#[test]
fn accessories_keep_their_container_and_data_across_deploys() {
    let agent = Agent::start();
    let app = agent.app("accessory");
    let manifest = |web_env: &str, store_env: &str| {
        web(web_env)
            + &format!(
                "depends_on = [\"store\"]\n\n[accessories.store]\nbuild = \".\"\nenv = {{ DATA_DIR = \"/data\", {store_env} }}\nvolumes = [\"storedata:/data\"]\nport = 8080\n"
            )
    };
    app.write(&manifest("GREETING = \"a\"", "MODE = \"1\""));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v1"]);
    run.success();
    assert!(
        run.stderr.contains("start accessory store"),
        "{}",
        run.stderr
    );
    let count = |agent: &Agent| {
        agent
            .berth_in(app.path(), &["exec", "store", "--", "/hello", "count"])
            .success()
            .stdout
            .trim()
            .to_owned()
    };
    assert_eq!(count(&agent), "1");
    let store = names_of(&agent, &app.name, "store");

    // A deploy that changes only the web service leaves the accessory alone.
    app.write(&manifest("GREETING = \"b\"", "MODE = \"1\""));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    run.success();
    assert!(
        run.stderr.contains("accessory store is unchanged"),
        "{}",
        run.stderr
    );
    assert_eq!(names_of(&agent, &app.name, "store"), store);
    assert_eq!(count(&agent), "2");

    // Changing the accessory's own configuration recreates it, on the same volume.
    app.write(&manifest("GREETING = \"b\"", "MODE = \"2\""));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v3"]);
    run.success();
    assert!(
        run.stderr.contains("recreate accessory store"),
        "{}",
        run.stderr
    );
    assert_eq!(count(&agent), "3", "the data survived the recreation");
    let store_after_recreate = names_of(&agent, &app.name, "store");

    let status = agent
        .berth(&["status", "--json", "--app", &app.name])
        .json();
    let services = status["apps"][0]["services"].as_array().unwrap();
    let store_status = services.iter().find(|s| s["name"] == "store").unwrap();
    assert_eq!(store_status["role"], "accessory");
    assert_eq!(store_status["replicas"][0]["health"], "healthy");

    // Dropped from the manifest: kept with its data, and the deploy says so.
    app.write(&web("GREETING = \"c\""));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v4"]);
    run.success();
    assert!(
        run.stderr
            .contains("accessory store is no longer in the manifest"),
        "{}",
        run.stderr
    );
    assert_eq!(names_of(&agent, &app.name, "store"), store_after_recreate);
}

#[test]
fn restart_exec_and_logs_work_on_the_live_release() {
    let agent = Agent::start();
    let app = agent.app("ops");
    app.write(&web("GREETING = \"ops\""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let before = names_of(&agent, &app.name, "web");

    let outcome = agent
        .berth_in(app.path(), &["restart", "web", "--json"])
        .success()
        .json();
    assert_eq!(outcome["operation"], "restart");
    assert_eq!(outcome["release"], 1);
    let after = settled_names(&agent, &app.name, "web", 1);
    assert_ne!(before, after, "restart replaces the container");
    assert_eq!(agent.get("/").unwrap(), (200, "ops v1\n".into()));

    let run = agent.berth_in(app.path(), &["exec", "web", "--", "/hello", "migrate"]);
    run.success();
    assert!(run.stdout.contains("migrations done"), "{}", run.stdout);
    agent
        .berth_in(app.path(), &["exec", "web", "--", "/hello", "nonsense"])
        .failure(2);

    let logs = agent
        .berth_in(app.path(), &["logs", "web", "-n", "10", "--json"])
        .success()
        .stdout
        .clone();
    let first: serde_json::Value = serde_json::from_str(logs.lines().next().unwrap()).unwrap();
    assert_eq!(first["container"], after[0]);
    assert!(logs.contains("listening on port 8080"), "{logs}");

    let run = agent.berth_in(app.path(), &["logs", "nope"]);
    run.failure(2);
    assert!(
        run.stderr.contains("has no service nope") && run.stderr.contains("its services: web"),
        "{}",
        run.stderr
    );

    let audit = agent.berth(&["audit", "--json"]).json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"restart") && actions.contains(&"deploy") && actions.contains(&"exec"),
        "{actions:?}"
    );
}

#[test]
fn environments_deploy_as_separate_app_instances() {
    let agent = Agent::start();
    let app = agent.app("envs");
    agent.track(&format!("{}-staging", app.name));
    app.write(&(web("GREETING = \"prod\"") + "\n[environments.staging]\nservices.web.env = { GREETING = \"staging\" }\nservices.web.route.domains = [\"staging.local\"]\n"));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let outcome = agent
        .berth_in(
            app.path(),
            &["deploy", "--env", "staging", "--version", "v1", "--json"],
        )
        .success()
        .json();
    assert_eq!(outcome["app"], format!("{}-staging", app.name));
    assert_eq!(agent.get("/").unwrap().1, "prod v1\n");
    assert_eq!(
        berth_testkit::http_get(&agent.http, "/", "staging.local")
            .unwrap()
            .1,
        "staging v1\n"
    );
}

/// A stock Docker Engine's address pools hold 31 networks; berth gives each app a /24 of
/// its own range instead, so a server runs more apps than that.
#[test]
fn forty_apps_run_side_by_side_on_one_stock_engine() {
    let agent = Agent::start();
    let first = agent.app("many");
    first.write(&web("").replace(
        "route = { domains = [] }",
        "route = { domains = [\"app0.test\"] }",
    ));
    agent
        .berth_in(first.path(), &["deploy", "--version", "v"])
        .success();
    let image = format!("berth/{}/web:r1", first.name);
    let mut apps = vec![first];
    for n in 1..40 {
        let app = agent.app("many");
        app.write(&format!(
            r#"app = "{{app}}"

[services.web]
image = "{image}"
port = 8080
healthcheck = {{ path = "/health", interval = "1s", start_timeout = "20s" }}
route = {{ domains = ["app{n}.test"] }}
stop_timeout = "1s"
"#
        ));
        let run = agent.berth_in(app.path(), &["deploy", "--version", "v"]);
        assert_eq!(run.code, 0, "app {n} of 40: {}", run.stderr);
        apps.push(app);
    }
    // Every app answers on its own name, through its own network.
    for (n, _) in apps.iter().enumerate() {
        let mut stream = std::net::TcpStream::connect(&agent.http).unwrap();
        use std::io::{Read, Write};
        stream
            .write_all(
                format!("GET / HTTP/1.1\r\nhost: app{n}.test\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "app {n}: {answer}");
    }
    let networks = std::process::Command::new("docker")
        .args(["network", "ls", "--format", "{{.Name}}"])
        .output()
        .unwrap();
    let ours: Vec<String> = String::from_utf8_lossy(&networks.stdout)
        .lines()
        .filter(|name| apps.iter().any(|a| *name == format!("berth-{}", a.name)))
        .map(str::to_owned)
        .collect();
    assert_eq!(ours.len(), 40, "{ours:?}");
    // Each on a /24 of berth's range, none from Docker's own pools.
    let inspect = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        ])
        .args(&ours)
        .output()
        .unwrap();
    let subnets = String::from_utf8_lossy(&inspect.stdout).into_owned();
    assert_eq!(
        subnets
            .lines()
            .filter(|s| s.starts_with("10.213.") && s.ends_with(".0/24"))
            .count(),
        40,
        "{subnets}"
    );
    drop(apps);
}

/// The states of an app's containers, by docker's own report.
fn states_of(agent: &Agent, app: &str) -> Vec<String> {
    let id = agent.agent_id();
    crate::harness::block_on(async {
        use berth_runtime::ContainerRuntime;
        berth_runtime::DockerRuntime::from_env()
            .list_containers(&[("berth.agent", &id), ("berth.app", app)])
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.state.as_str().to_owned())
            .collect()
    })
}

#[test]
fn stop_keeps_the_app_stopped_across_agent_restarts_and_start_brings_it_back() {
    let mut agent = Agent::start();
    let app = agent.app("pause");
    app.write(
        &(web("GREETING = \"up\"")
            + "\n[services.worker]\nbuild = \".\"\ncommand = [\"worker\"]\n"),
    );
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    assert_eq!(agent.get("/").unwrap(), (200, "up v1\n".into()));

    let run = agent.berth_in(app.path(), &["start"]);
    run.failure(2);
    assert!(run.stderr.contains("is not stopped"), "{}", run.stderr);

    let outcome = agent
        .berth_in(app.path(), &["stop", "--json"])
        .success()
        .json();
    assert_eq!(outcome["operation"], "stop");
    assert_eq!(outcome["ok"], true);
    let (code, body) = agent.get("/").unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains(&format!("{} is stopped.", app.name)),
        "{body}"
    );
    let states = states_of(&agent, &app.name);
    assert!(
        states.len() == 2 && states.iter().all(|s| s == "exited"),
        "{states:?}"
    );
    let status = agent
        .berth_in(app.path(), &["status", "--json"])
        .success()
        .json();
    assert_eq!(status["apps"][0]["stopped"], true, "{status}");
    assert_eq!(
        status["apps"][0]["services"][0]["replicas"][0]["health"], "stopped",
        "{status}"
    );
    // Stopped on purpose is not a failure: `berth status` exits 0 and says how to start it.
    let text = agent
        .berth_in(app.path(), &["status"])
        .success()
        .stdout
        .clone();
    assert!(
        text.contains("stopped") && text.contains("berth start"),
        "{text}"
    );
    let apps = agent.berth(&["apps"]).success().stdout.clone();
    assert!(apps.contains("stopped"), "{apps}");

    // An agent restart (or a reboot) reconciles: a stopped app is left stopped.
    agent.restart();
    let (code, body) = agent.get("/").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("is stopped."), "{body}");
    assert!(
        states_of(&agent, &app.name).iter().all(|s| s == "exited"),
        "restart woke a stopped app"
    );

    // A deploy to a stopped app is refused with the way out, not silently started.
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    run.failure(2);
    assert!(run.stderr.contains("berth start"), "{}", run.stderr);

    let outcome = agent
        .berth_in(app.path(), &["start", "--json"])
        .success()
        .json();
    assert_eq!(outcome["operation"], "start");
    assert_eq!(outcome["release"], 1);
    assert_eq!(agent.get("/").unwrap(), (200, "up v1\n".into()));
    let states = states_of(&agent, &app.name);
    assert!(
        states.len() == 2 && states.iter().all(|s| s == "running"),
        "{states:?}"
    );
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    assert_eq!(agent.get("/").unwrap(), (200, "up v2\n".into()));

    let audit = agent.berth(&["audit", "--json"]).json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"stop") && actions.contains(&"start"),
        "{actions:?}"
    );
}

fn docker_object_exists(kind: &str, name: &str) -> bool {
    std::process::Command::new("docker")
        .args([kind, "inspect", name])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn destroy_asks_first_keeps_volumes_secrets_and_backups_unless_told_and_can_take_a_final_backup() {
    let agent = Agent::start();
    let app = agent.app("gone");
    app.write(
        &(web("GREETING = \"here\"")
            .replace("stop_timeout", "volumes = [\"data:/data\"]\nstop_timeout")
            + "\n[backups.data]\nsource = { volume = { name = \"data\" } }\n"),
    );
    agent
        .berth_in(app.path(), &["secrets", "set", "TOKEN", "--value", "t0k3n"])
        .success();
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    assert_eq!(agent.get("/").unwrap(), (200, "here v1\n".into()));
    let volume = format!("{}_data", app.name);
    let network = format!("berth-{}", app.name);
    assert!(docker_object_exists("volume", &volume));

    // Without a terminal, nothing happens without --yes, and the reason names it.
    let run = agent.berth_in(app.path(), &["destroy"]);
    run.failure(2);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert_eq!(
        agent.get("/").unwrap().0,
        200,
        "a refused destroy left it up"
    );

    let outcome = agent
        .berth_in(app.path(), &["destroy", "--yes", "--backup", "--json"])
        .success()
        .json();
    assert_eq!(outcome["operation"], "destroy");
    assert_eq!(outcome["ok"], true, "{outcome}");
    let (code, _) = agent.get("/").unwrap();
    assert_eq!(code, 404, "a destroyed app is no longer routed");
    assert!(states_of(&agent, &app.name).is_empty(), "containers left");
    assert!(!docker_object_exists("network", &network), "network left");
    assert!(
        docker_object_exists("volume", &volume),
        "the volume was kept"
    );
    let apps = agent.berth(&["apps", "--json"]).success().json();
    assert_eq!(apps.as_array().map(Vec::len), Some(0), "{apps}");
    let secrets = agent
        .berth_in(app.path(), &["secrets", "list", "--json"])
        .success()
        .json();
    assert_eq!(
        secrets.as_array().map(Vec::len),
        Some(1),
        "secrets kept: {secrets}"
    );
    // The final backup was taken and outlives the app.
    let list = agent
        .berth_in(app.path(), &["backup", "list", "--json"])
        .success()
        .json();
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(1), "{list}");
    let audit = agent.berth(&["audit", "--json", "--app", &app.name]).json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "destroy" && e["detail"] == "volumes kept, secrets kept"),
        "{audit}"
    );

    // The name is free again: a new deploy starts at release 1 on the kept volume.
    let outcome = agent
        .berth_in(app.path(), &["deploy", "--version", "v2", "--json"])
        .success()
        .json();
    assert_eq!(outcome["release"], 1, "{outcome}");
    assert_eq!(agent.get("/").unwrap(), (200, "here v2\n".into()));
    // The logs berth kept went with the old app: release 1 is the new one's alone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let run = agent.berth_in(app.path(), &["logs", "web", "--release", "1"]);
        if run.stdout.contains("hello v2: listening") {
            break run.stdout.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line of the new release 1: {}{}",
            run.stdout,
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!logs.contains("hello v1"), "{logs}");

    agent
        .berth_in(
            app.path(),
            &[
                "destroy",
                app.name.as_str(),
                "--yes",
                "--volumes",
                "--secrets",
                "--no-backup",
            ],
        )
        .success();
    assert!(
        !docker_object_exists("volume", &volume),
        "--volumes removes it"
    );
    let secrets = agent
        .berth_in(app.path(), &["secrets", "list", "--json"])
        .success()
        .json();
    assert_eq!(secrets.as_array().map(Vec::len), Some(0), "{secrets}");
    let run = agent.berth(&["destroy", &app.name, "--yes"]);
    run.failure(2);
    assert!(run.stderr.contains("no app named"), "{}", run.stderr);
}

#[test]
fn a_dockerfile_that_needs_buildkit_builds_and_deploys() {
    crate::peers::require_db_image();
    let agent = Agent::start();
    let app = agent.app("bkit");
    // Cache mounts, `COPY --chmod` and a build step's output: the classic builder refuses
    // the first two ("the --mount option requires BuildKit").
    std::fs::write(
        app.path().join("Dockerfile"),
        format!(
            "FROM {image}\n\
             RUN --mount=type=cache,target=/root/.cache/berth echo warm >> /root/.cache/berth/runs && cp /root/.cache/berth/runs /cache-runs && echo built-in-step\n\
             COPY --chmod=0700 hello /hello\n\
             ENTRYPOINT [\"/hello\"]\n",
            image = crate::peers::DB_IMAGE
        ),
    )
    .unwrap();
    app.write(&web("GREETING = \"kit\""));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v1"]);
    run.success();
    assert!(run.stderr.contains("build web"), "{}", run.stderr);
    assert_eq!(agent.get("/").unwrap(), (200, "kit v1\n".into()));
    let mode = agent.berth_in(
        app.path(),
        &["exec", "web", "--", "stat", "-c", "%a", "/hello"],
    );
    mode.success();
    assert_eq!(mode.stdout.trim(), "700", "COPY --chmod was applied");
    let runs = agent.berth_in(app.path(), &["exec", "web", "--", "cat", "/cache-runs"]);
    runs.success();
    assert!(runs.stdout.contains("warm"), "{}", runs.stdout);

    // A failing step names itself and shows its output.
    std::fs::write(
        app.path().join("Dockerfile"),
        format!(
            "FROM {image}\nRUN --mount=type=cache,target=/c echo the-step-says-no && exit 3\n",
            image = crate::peers::DB_IMAGE
        ),
    )
    .unwrap();
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    run.failure(1);
    assert!(
        run.stderr.contains("building service web failed") && run.stderr.contains("exit code: 3"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("the-step-says-no"), "{}", run.stderr);
    assert_eq!(agent.get("/").unwrap(), (200, "kit v1\n".into()));
}

#[test]
fn a_rollback_that_brings_old_configuration_back_says_what_and_wants_yes() {
    let agent = Agent::start();
    let app = agent.app("rbdiff");
    app.write(&web("GREETING = \"one\""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    // Same configuration, new code: a rollback needs no confirmation.
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    agent.berth_in(app.path(), &["rollback"]).success();
    assert_eq!(agent.get("/").unwrap(), (200, "one v1\n".into()));

    app.write(
        &(web("GREETING = \"two\", FEATURE = \"on\"")
            .replace("stop_timeout = \"2s\"", "stop_timeout = \"3s\"")),
    );
    agent
        .berth_in(app.path(), &["deploy", "--version", "v3"])
        .success();
    let run = agent.berth_in(app.path(), &["rollback", "1"]);
    run.failure(2);
    for expected in [
        "also brings back its configuration",
        "- services.web.env.FEATURE",
        "~ services.web.env.GREETING",
        "~ services.web.stop_timeout: 3000 → 2000",
        "--yes",
    ] {
        assert!(run.stderr.contains(expected), "{expected}: {}", run.stderr);
    }
    assert!(!run.stderr.contains("\"two\""), "env values stay hidden");
    assert_eq!(
        agent.get("/").unwrap(),
        (200, "two v3\n".into()),
        "nothing rolled back"
    );

    agent
        .berth_in(app.path(), &["rollback", "1", "--yes"])
        .success();
    assert_eq!(agent.get("/").unwrap(), (200, "one v1\n".into()));
}
