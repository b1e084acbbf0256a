//! What berth asks of Docker for each container, image housekeeping, loading images without
//! a registry, the TCP API, the local quickstart, and stopping the agent.

use crate::harness::{Agent, block_on, web};
use berth_runtime::ContainerRuntime;
use std::process::Command;
use std::time::Duration;

fn inspect(container: &str) -> serde_json::Value {
    let output = Command::new("docker")
        .args(["inspect", container])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()[0].clone()
}

fn container_of(agent: &Agent, app: &str, service: &str) -> String {
    agent
        .containers()
        .into_iter()
        .find(|(_, l)| {
            l.get("berth.app").map(String::as_str) == Some(app)
                && l.get("berth.service").map(String::as_str) == Some(service)
        })
        .map(|(name, _)| name)
        .unwrap_or_else(|| panic!("no container for {app}/{service}"))
}

#[test]
fn containers_get_log_rotation_limits_restart_policy_and_labels() {
    let agent = Agent::start();
    let app = agent.app("settings");
    app.write(&(web("") + "memory = \"64m\"\ncpus = 0.5\nlogging = { max_size = \"5m\", max_files = 2 }\n\n[services.worker]\nbuild = \".\"\ncommand = [\"worker\"]\n"));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();

    let web = inspect(&container_of(&agent, &app.name, "web"));
    let host = &web["HostConfig"];
    assert_eq!(host["LogConfig"]["Type"], "json-file");
    assert_eq!(
        host["LogConfig"]["Config"]["max-size"],
        (5u64 << 20).to_string()
    );
    assert_eq!(host["LogConfig"]["Config"]["max-file"], "2");
    assert_eq!(host["Memory"], 64u64 << 20);
    assert_eq!(host["NanoCpus"], 500_000_000u64);
    assert_eq!(host["RestartPolicy"]["Name"], "unless-stopped");
    assert_eq!(host["Init"], true);
    let labels = &web["Config"]["Labels"];
    assert_eq!(labels["berth.app"], app.name.as_str());
    assert_eq!(labels["berth.role"], "web");
    assert_eq!(labels["berth.release"], "1");
    let network = format!("berth-{}", app.name);
    assert!(
        web["NetworkSettings"]["Networks"][&network]["Aliases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "web"),
        "services find each other by name"
    );
    let env: Vec<&str> = web["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"BERTH_VERSION=v1") && env.contains(&"BERTH_RELEASE=1"),
        "{env:?}"
    );

    // The default rotation applies to every container, workers included.
    let worker = inspect(&container_of(&agent, &app.name, "worker"));
    assert_eq!(
        worker["HostConfig"]["LogConfig"]["Config"]["max-size"],
        (10u64 << 20).to_string()
    );
    assert_eq!(worker["HostConfig"]["LogConfig"]["Config"]["max-file"], "3");
}

#[test]
fn only_the_last_releases_keep_their_images_for_rollback() {
    let agent = Agent::start();
    let app = agent.app("prune");
    // A build argument makes each release's image distinct.
    std::fs::write(
        app.path().join("Dockerfile"),
        "FROM scratch\nARG V\nLABEL version=$V\nCOPY hello /hello\nENTRYPOINT [\"/hello\"]\n",
    )
    .unwrap();
    let manifest = |v: &str| {
        web("").replace(
            "build = \".\"",
            &format!("build = {{ context = \".\", args = {{ V = \"{v}\" }} }}"),
        ) + "\n[deploy]\nkeep_releases = 2\n"
    };
    for v in ["1", "2", "3", "4"] {
        app.write(&manifest(v));
        agent
            .berth_in(app.path(), &["deploy", "--version", &format!("v{v}")])
            .success();
    }
    let tags: Vec<String> = block_on(async {
        berth_runtime::DockerRuntime::from_env()
            .images_matching(&format!("berth/{}/web", app.name))
            .await
            .unwrap()
            .into_iter()
            .flat_map(|i| i.tags)
            .collect()
    });
    let mut tags: Vec<&str> = tags
        .iter()
        .filter_map(|t| t.rsplit_once(':').map(|(_, tag)| tag))
        .collect();
    tags.sort();
    assert_eq!(tags, ["r3", "r4"], "releases 1 and 2 were pruned");

    let run = agent.berth_in(app.path(), &["rollback", "1"]);
    run.failure(1);
    assert!(
        run.stderr.contains("is no longer on this host"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("only the images of the last `deploy.keep_releases` releases are kept"),
        "{}",
        run.stderr
    );
    assert_eq!(agent.get("/").unwrap().1, "hello v4\n");
    agent.berth_in(app.path(), &["rollback", "3"]).success();
    assert_eq!(agent.get("/").unwrap().1, "hello v3\n");
}

#[test]
fn an_image_archive_is_loaded_when_no_registry_can_be_reached() {
    let agent = Agent::start();
    let app = agent.app("load");
    let reference = format!("berth-test/{}:1.0", app.name);
    // An image built elsewhere, saved to a file, and absent from this host.
    block_on(async {
        let docker = berth_runtime::DockerRuntime::from_env();
        let archive = berth_testkit::tar_directory(app.path());
        let request = berth_runtime::BuildRequest {
            context_tar: archive.path().to_owned(),
            dockerfile: "Dockerfile".into(),
            tag: reference.clone(),
            args: Default::default(),
            target: None,
            labels: Default::default(),
        };
        docker.build_image(&request, &|_| {}).await.unwrap();
    });
    let saved = app.path().join("image.tar");
    assert!(
        Command::new("docker")
            .args(["save", "-o"])
            .arg(&saved)
            .arg(&reference)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("docker")
            .args(["rmi", &reference])
            .output()
            .unwrap()
            .status
            .success()
    );

    app.write(&web("").replace("build = \".\"", &format!("image = \"{reference}\"")));
    let run = agent.berth_in(
        app.path(),
        &["deploy", "--version", "loaded", "--load", "image.tar"],
    );
    run.success();
    assert!(
        run.stderr
            .contains(&format!("load 1 image archive(s): {reference}")),
        "{}",
        run.stderr
    );
    assert_eq!(agent.get("/").unwrap().1, "hello loaded\n");
    let _ = Command::new("docker").args(["rmi", &reference]).output();

    let run = agent.berth_in(app.path(), &["deploy", "--load", "missing.tar"]);
    run.failure(2);
    assert!(
        run.stderr
            .contains("there is no image archive at missing.tar"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_image_that_cannot_be_pulled_is_named() {
    let agent = Agent::start();
    let app = agent.app("nopull");
    app.write(&web("").replace(
        "build = \".\"",
        "image = \"registry.invalid/berth/nothing:1\"",
    ));
    let run = agent.berth_in(app.path(), &["deploy"]);
    run.failure(1);
    assert!(
        run.stderr
            .contains("image `registry.invalid/berth/nothing:1` could not be pulled"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("docker load"),
        "the fix is named: {}",
        run.stderr
    );
    // Scripts get the classified cause, not only the words.
    let run = agent.berth_in(app.path(), &["deploy", "--json"]);
    run.failure(1);
    assert_eq!(
        run.json()["error"]["cause"],
        "image-unavailable",
        "{}",
        run.stdout
    );
}

#[test]
fn the_tcp_api_requires_the_token() {
    // `{dir}` is the agent's data directory: keep the local socket, add a TCP listener.
    let agent = Agent::start_with(
        &[],
        &["--api", "unix:{dir}/berth.sock", "--api", "127.0.0.1:0"],
    );
    let api = agent.tcp_api();
    let token = std::fs::read_to_string(agent.dir.path().join("api-token")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(agent.dir.path().join("api-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let ok = agent.berth_env(
        agent.dir.path(),
        &[("BERTH_TOKEN", token.trim())],
        &["status", "--json", "--agent", &api],
    );
    ok.success();
    assert_eq!(ok.json()["agent"]["pid"], agent.agent_file()["pid"]);
    let wrong = agent.berth_env(
        agent.dir.path(),
        &[("BERTH_TOKEN", "not-the-token")],
        &["status", "--agent", &api],
    );
    wrong.failure(2);
    assert!(
        wrong.stderr.contains("missing or wrong API token"),
        "{}",
        wrong.stderr
    );
}

#[test]
fn up_starts_an_agent_in_the_background_and_deploys() {
    let agent = Agent::unstarted();
    let app = agent.app("up");
    app.write(&web("GREETING = \"up\""));
    let run = agent.berth_in(
        app.path(),
        &["up", "--http", &agent.http, "--version", "v1"],
    );
    run.success();
    assert!(
        run.stderr.contains("started an agent in the background"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains(&format!("http://{}/", agent.http)),
        "the URL is printed: {}",
        run.stdout
    );
    assert_eq!(agent.get("/").unwrap(), (200, "up v1\n".into()));

    let again = agent.berth_in(
        app.path(),
        &["up", "--http", &agent.http, "--version", "v2"],
    );
    again.success();
    assert!(
        !again.stderr.contains("started an agent"),
        "the running agent is reused: {}",
        again.stderr
    );
    assert_eq!(agent.get("/").unwrap().1, "up v2\n");
}

#[test]
fn sigterm_lets_open_requests_finish_and_cleans_up() {
    let mut agent = Agent::start();
    let app = agent.app("sigterm");
    app.write(&web(""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let http = agent.http.clone();
    let slow =
        std::thread::spawn(move || berth_testkit::http_get(&http, "/slow?ms=1500", "localhost"));
    std::thread::sleep(Duration::from_millis(300));
    let status = agent.terminate();
    assert!(status.success(), "the agent exits cleanly: {status}");
    assert_eq!(
        slow.join().unwrap().unwrap().0,
        200,
        "the request in flight finished"
    );
    assert!(
        !agent.dir.path().join("berth.sock").exists(),
        "the socket is removed"
    );
    assert!(!agent.dir.path().join("agent.json").exists());
    // The app's containers keep running; a new agent picks them up.
    agent.restart();
    agent.wait_serving("hello v1");
}

#[test]
fn the_agents_log_has_no_colour_codes_or_debug_wrappers_when_it_is_a_file() {
    let agent = Agent::start();
    let log = agent.log();
    assert!(log.contains("agent started"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escapes in a log file:\n{log}"
    );
    assert!(!log.contains("Some("), "no Rust debug output:\n{log}");
}

#[test]
fn the_which_app_hint_names_a_flag_the_command_takes() {
    let agent = Agent::start();
    let app = agent.app("hint");
    app.write(&web(""));
    let empty = tempfile::tempdir().unwrap();
    for command in [&["releases"][..], &["backup", "list"], &["logs", "web"]] {
        let run = agent.berth_in(empty.path(), command);
        run.failure(2);
        assert!(
            run.stderr.contains("--file FILE"),
            "{command:?}: {}",
            run.stderr
        );
        // And the flag it names works there.
        let mut with_file = command.to_vec();
        let manifest = app.manifest_path();
        with_file.extend(["--file", manifest.to_str().unwrap()]);
        let run = agent.berth_in(empty.path(), &with_file);
        assert!(
            !run.stderr.contains("unexpected argument"),
            "{with_file:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("which app?"), "{}", run.stderr);
    }
}

/// Runs `berth ARGS` in `dir` inside a real terminal (a detached tmux session) and returns
/// the screen once it exits, wrapped lines joined.
fn in_terminal(agent: &Agent, dir: &std::path::Path, args: &str) -> String {
    let socket = berth_testkit::unique_name("tmux");
    let command = format!(
        "cd {} && env -u CI BERTH_DATA_DIR={} {} {args}; echo BERTH-EXIT=$?; sleep 120",
        dir.display(),
        agent.dir.path().display(),
        crate::harness::BERTH
    );
    let status = Command::new("tmux")
        .args([
            "-L",
            &socket,
            "new-session",
            "-d",
            "-x",
            "220",
            "-y",
            "60",
            &command,
        ])
        .status()
        .expect("tmux is missing: scripts/install-test-peers installs it");
    assert!(status.success());
    let capture = || {
        let output = Command::new("tmux")
            .args(["-L", &socket, "capture-pane", "-p", "-J"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let screen = loop {
        let screen = capture();
        if screen.contains("BERTH-EXIT=") {
            break screen;
        }
        assert!(std::time::Instant::now() < deadline, "no exit:\n{screen}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = Command::new("tmux")
        .args(["-L", &socket, "kill-server"])
        .status();
    screen
}

#[test]
fn in_a_terminal_each_step_and_warning_shows_once_and_stays() {
    let agent = Agent::start();
    let app = agent.app("tty");
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), b"a").unwrap();
    app.write(&format!(
        "{}\n[backups.one]\nsource = {{ directory = {{ path = \"{dir}\" }} }}\nkeep = {{ last = 3 }}\n\n[backups.two]\nsource = {{ directory = {{ path = \"{dir}\" }} }}\nkeep = {{ last = 3 }}\n",
        web(""),
        dir = data.path().display()
    ));
    let screen = in_terminal(&agent, app.path(), "backup run");
    assert!(screen.contains("BERTH-EXIT=0"), "{screen}");
    let count = |needle: &str| screen.matches(needle).count();
    assert_eq!(
        count("✓ back up one"),
        1,
        "the finished step stays:\n{screen}"
    );
    assert_eq!(count("✓ back up two"), 1, "{screen}");
    assert_eq!(
        count("encrypted only to this server's key"),
        1,
        "one warning, once:\n{screen}"
    );
    assert_eq!(
        count(&format!("{} one ", app.name)),
        1,
        "one summary line per backup:\n{screen}"
    );
}

#[test]
fn a_second_agent_on_the_same_address_refuses_and_names_the_first() {
    let first = Agent::start();
    let pid = first.agent_file()["pid"].as_u64().unwrap();
    let other = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let second = first.berth(&[
        "agent",
        "--data-dir",
        other.path().to_str().unwrap(),
        "--http",
        &first.http,
        "--https",
        "off",
        "--acme-directory",
        "off",
    ]);
    assert_ne!(second.code, 0, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains(&format!("already served by berth (pid {pid})")),
        "{}",
        second.stderr
    );
    // The first keeps every connection: nothing else joined its address.
    let app = first.app("solo");
    app.write(&web(""));
    first.berth_in(app.path(), &["deploy"]).success();
    for _ in 0..20 {
        assert_eq!(first.get("/").unwrap().0, 200);
    }
}

#[test]
fn a_manifest_that_is_not_utf8_is_invalid_input_like_any_other() {
    let agent = Agent::unstarted();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("berth.toml"), b"app = \"\xff\"\n").unwrap();
    let run = agent.berth_in(dir.path(), &["check"]);
    run.failure(2);
    assert!(run.stderr.contains("not UTF-8"), "{}", run.stderr);
}

#[test]
fn version_names_the_cli_and_the_agent_and_completions_cover_the_commands() {
    let agent = Agent::start();
    let json = agent.berth(&["--json", "version"]).success().json();
    assert_eq!(json["cli"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["agent"], env!("CARGO_PKG_VERSION"), "{json}");
    for shell in ["bash", "zsh", "fish"] {
        let script = agent
            .berth(&["completions", shell])
            .success()
            .stdout
            .clone();
        for command in ["deploy", "rollback", "restore", "completions"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    agent.berth(&["completions", "nope"]).failure(2);
}

#[test]
fn logs_follow_the_service_across_a_restart_and_a_deploy() {
    let agent = Agent::start();
    let app = agent.app("follow");
    app.write(&web(""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let log_file = tempfile::NamedTempFile::new().unwrap();
    let mut follower = Command::new(crate::harness::BERTH)
        .args(["logs", "web", "-f", "-n", "1"])
        .current_dir(app.path())
        .env("BERTH_DATA_DIR", agent.dir.path())
        .env("CI", "true")
        .stdout(log_file.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    agent.berth_in(app.path(), &["restart", "web"]).success();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let followed = loop {
        let text = std::fs::read_to_string(log_file.path()).unwrap_or_default();
        if text.contains("following the new container")
            && text.matches("listening on port").count() >= 1
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new container was not followed:\n{text}"
        );
        assert!(
            follower.try_wait().unwrap().is_none(),
            "`logs -f` ended when the container was replaced:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // A deploy replaces the containers too: the follower goes on with the new release's.
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log_file.path()).unwrap_or_default();
        if text.matches("following the new container").count() >= 2
            && text.contains("hello v2: listening on port")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new release's container was not followed:\n{text}"
        );
        assert!(
            follower.try_wait().unwrap().is_none(),
            "`logs -f` ended at the deploy:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(followed.contains("listening on port 8080"), "{followed}");
}

#[test]
fn apps_lists_every_app_with_its_release_and_state() {
    let agent = Agent::start();
    let empty = agent.berth(&["apps"]).success().stdout.clone();
    assert!(empty.contains("no apps yet"), "{empty}");
    let one = agent.app("list");
    one.write(&web("").replace(
        "route = { domains = [] }",
        "route = { domains = [\"one.test\"] }",
    ));
    agent
        .berth_in(one.path(), &["deploy", "--version", "v1"])
        .success();
    let two = agent.app("list");
    two.write(&web("").replace(
        "route = { domains = [] }",
        "route = { domains = [\"two.test\"] }",
    ));
    agent
        .berth_in(two.path(), &["deploy", "--version", "v7"])
        .success();
    agent.berth_in(two.path(), &["maintenance", "on"]).success();
    let table = agent.berth(&["apps"]).success().stdout.clone();
    assert!(
        table.contains(&one.name) && table.contains("1 (v1)"),
        "{table}"
    );
    assert!(
        table.contains(&two.name) && table.contains("maintenance"),
        "{table}"
    );
    let json = agent.berth(&["--json", "apps"]).success().json();
    let states: Vec<(String, String)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["app"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(one.name.clone(), "live".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&(two.name.clone(), "maintenance".into())),
        "{states:?}"
    );
}

#[test]
fn status_workers_lists_the_background_work_with_its_state_and_next_run() {
    let agent = Agent::start();
    let app = agent.app("wrk");
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), b"a").unwrap();
    app.write(&format!(
        "{}\n[backups.files]\nsource = {{ directory = {{ path = \"{}\" }} }}\nschedule = \"0 3 * * *\"\n",
        web(""),
        data.path().display()
    ));
    agent.berth_in(app.path(), &["deploy"]).success();
    let find = |workers: &serde_json::Value, name: &str| -> serde_json::Value {
        workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no worker {name}: {workers}"))
    };
    // The schedule picks up the deploy within its minute; wait for it to say so.
    let deadline = std::time::Instant::now() + Duration::from_secs(70);
    let workers = loop {
        let workers = agent
            .berth(&["status", "--workers", "--json"])
            .success()
            .json();
        if find(&workers, "backup schedule")["detail"] == "1 schedule" {
            break workers;
        }
        assert!(std::time::Instant::now() < deadline, "{workers}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let schedule = find(&workers, "backup schedule");
    assert_eq!(schedule["state"], "idle", "{workers}");
    assert!(
        schedule["next_run"].as_i64().unwrap()
            > std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        "{workers}"
    );
    let reconcile = find(&workers, "reconcile");
    assert_eq!(reconcile["state"], "finished", "{workers}");
    assert_eq!(reconcile["detail"], "reconciled", "{workers}");
    assert_eq!(find(&workers, "certificate files")["state"], "idle");

    let text = agent
        .berth(&["status", "--workers"])
        .success()
        .stdout
        .clone();
    for expected in ["WORKER", "backup schedule", "1 schedule", "reconcile"] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
}
