//! Secrets: stored encrypted, injected as environment variables or files, never shown in
//! status, release records, the audit log or the agent's log.

use crate::harness::{Agent, web};
use std::io::Write;
use std::process::Stdio;

fn set_from_stdin(agent: &Agent, app: &str, name: &str, value: &str) {
    let mut child = std::process::Command::new(crate::harness::BERTH)
        // Before the app's first deploy, named only by --app: said to be meant.
        .args(["secrets", "set", name, "--app", app, "--yes"])
        .env("BERTH_DATA_DIR", agent.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn secrets_reach_containers_and_nothing_else() {
    let agent = Agent::start();
    let app = agent.app("secrets");
    let api_key = "sk-live-0123456789abcdef";
    let password = "correct horse battery staple";
    set_from_stdin(&agent, &app.name, "API_KEY", api_key);
    set_from_stdin(&agent, &app.name, "DB_PASSWORD", password);
    agent
        .berth(&[
            "secrets",
            "generate",
            "JWT_SECRET",
            "--app",
            &app.name,
            "--yes",
        ])
        .success();
    let jwt = agent
        .berth(&["secrets", "get", "JWT_SECRET", "--app", &app.name])
        .success()
        .stdout
        .trim()
        .to_owned();
    assert_eq!(jwt.len(), 64);
    // Generating it again is a conflict, said so to scripts too, and keeps the value.
    let again = agent.berth(&[
        "--json",
        "secrets",
        "generate",
        "JWT_SECRET",
        "--app",
        &app.name,
        "--yes",
    ]);
    again.failure(1);
    assert_eq!(
        again.json()["error"]["kind"],
        "conflict",
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("--force"), "{}", again.stdout);

    app.write(
        &(web("HELLO_DEBUG = \"1\"")
            + "secrets = [\"API_KEY\", \"JWT_SECRET\"]\nsecret_files = [\"DB_PASSWORD\"]\n"),
    );
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    assert_eq!(
        agent.get("/env/API_KEY").unwrap(),
        (200, api_key.to_owned())
    );
    assert_eq!(agent.get("/env/JWT_SECRET").unwrap(), (200, jwt.clone()));
    assert_eq!(
        agent.get("/file/run/secrets/DB_PASSWORD").unwrap(),
        (200, password.to_owned())
    );
    assert_eq!(
        agent.get("/env/DB_PASSWORD").unwrap().0,
        404,
        "a file secret is not also an environment variable"
    );

    let list = agent
        .berth(&["secrets", "list", "--app", &app.name, "--json"])
        .success()
        .json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["API_KEY", "DB_PASSWORD", "JWT_SECRET"]);
    assert_eq!(list[0]["used_by"][0], "web");

    // Rotation: the new value reaches the app with the next deploy.
    set_from_stdin(&agent, &app.name, "API_KEY", "sk-rotated");
    let run = agent.berth(&[
        "secrets",
        "set",
        "API_KEY",
        "--app",
        &app.name,
        "--value",
        "sk-rotated-2",
    ]);
    run.success();
    assert!(run.stderr.contains("run `berth deploy`"), "{}", run.stderr);
    assert_eq!(
        agent.get("/env/API_KEY").unwrap().1,
        api_key,
        "running containers keep the value they started with"
    );
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    assert_eq!(agent.get("/env/API_KEY").unwrap().1, "sk-rotated-2");

    // No value anywhere it should not be.
    let places = [
        agent.berth(&["status", "--json"]).stdout.clone(),
        agent
            .berth(&["releases", "--app", &app.name, "--json"])
            .stdout
            .clone(),
        agent
            .berth(&["audit", "--json", "-n", "1000"])
            .stdout
            .clone(),
        agent.log(),
        String::from_utf8_lossy(&std::fs::read(agent.dir.path().join("state.db")).unwrap())
            .into_owned(),
        String::from_utf8_lossy(
            &std::fs::read(agent.dir.path().join("state.db-wal")).unwrap_or_default(),
        )
        .into_owned(),
    ];
    for value in [api_key, password, jwt.as_str(), "sk-rotated-2"] {
        for (index, place) in places.iter().enumerate() {
            assert!(
                !place.contains(value),
                "a secret value leaked into place #{index}"
            );
        }
    }
    let audit = agent.berth(&["audit", "--json", "-n", "1000"]).json();
    let secret_actions: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("secret."))
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        secret_actions.contains(&format!("secret.set {}/API_KEY", app.name)),
        "{secret_actions:?}"
    );
    assert!(
        secret_actions.contains(&format!("secret.generate {}/JWT_SECRET", app.name)),
        "{secret_actions:?}"
    );
    assert!(
        secret_actions.contains(&format!("secret.get {}/JWT_SECRET", app.name)),
        "{secret_actions:?}"
    );

    agent
        .berth(&["secrets", "rm", "JWT_SECRET", "--app", &app.name])
        .success();
    agent
        .berth(&["secrets", "get", "JWT_SECRET", "--app", &app.name])
        .failure(2);
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(agent.dir.path().join("secrets.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
}

#[test]
fn a_missing_secret_stops_the_deploy_before_it_starts() {
    let agent = Agent::start();
    let app = agent.app("nosecret");
    app.write(&(web("") + "secrets = [\"STRIPE_KEY\", \"OTHER_KEY\"]\n"));
    let run = agent.berth_in(app.path(), &["deploy"]);
    run.failure(2);
    assert!(
        run.stderr
            .contains("secrets OTHER_KEY, STRIPE_KEY not set for app"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("berth secrets set OTHER_KEY --app {}", app.name)),
        "{}",
        run.stderr
    );
    assert!(agent.containers().is_empty());
}

#[test]
fn a_secret_for_an_app_berth_never_saw_needs_a_yes() {
    let agent = Agent::start();
    let app = agent.app("known");
    app.write(&web(""));
    let elsewhere = tempfile::tempdir().unwrap();
    // A typo'd --app, with no manifest naming it: refused, saying what berth knows.
    let refused = agent.berth_in(
        elsewhere.path(),
        &["secrets", "set", "TOKEN", "--value", "x", "--app", "shpo"],
    );
    refused.failure(2);
    assert!(
        refused.stderr.contains("knows no app `shpo`"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    // Where its berth.toml is, or once it exists, no question.
    agent
        .berth_in(app.path(), &["secrets", "set", "TOKEN", "--value", "x"])
        .success();
    agent
        .berth_in(
            elsewhere.path(),
            &[
                "secrets", "set", "OTHER", "--value", "y", "--app", &app.name,
            ],
        )
        .success();
    agent
        .berth_in(
            elsewhere.path(),
            &[
                "secrets",
                "set",
                "TOKEN",
                "--value",
                "x",
                "--app",
                "brand-new",
                "--yes",
            ],
        )
        .success();
}

fn mount_source(container: &str, target: &str) -> String {
    let output = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            &format!("{{{{range .Mounts}}}}{{{{if eq .Destination \"{target}\"}}}}{{{{.Source}}}}{{{{end}}}}{{{{end}}}}"),
            container,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn secret_files_are_in_memory_readable_only_by_the_images_user_and_survive_a_reboot() {
    crate::peers::require_db_image();
    let mut agent = Agent::start();
    let app = agent.app("secfile");
    // The image runs as `postgres` (a name, resolved through the image's /etc/passwd).
    std::fs::write(
        app.path().join("Dockerfile"),
        format!(
            "FROM {}\nCOPY hello /hello\nUSER postgres\nENTRYPOINT [\"/hello\"]\n",
            crate::peers::DB_IMAGE
        ),
    )
    .unwrap();
    app.write(&(web("GREETING = \"s\"") + "secret_files = [\"DB_PASSWORD\"]\n"));
    set_from_stdin(&agent, &app.name, "DB_PASSWORD", "pa55-in-a-file");
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    let stat = agent.berth_in(
        app.path(),
        &[
            "exec",
            "web",
            "--",
            "stat",
            "-c",
            "%a %U",
            "/run/secrets/DB_PASSWORD",
        ],
    );
    stat.success();
    assert_eq!(stat.stdout.trim(), "400 postgres");
    let read = agent.berth_in(
        app.path(),
        &["exec", "web", "--", "cat", "/run/secrets/DB_PASSWORD"],
    );
    read.success();
    assert_eq!(read.stdout, "pa55-in-a-file");

    let container = agent
        .containers()
        .into_iter()
        .find(|(_, labels)| labels.get("berth.app") == Some(&app.name))
        .map(|(name, _)| name)
        .unwrap();
    let source = mount_source(&container, "/run/secrets/DB_PASSWORD");
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&source)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fs.stdout).trim(),
        "tmpfs",
        "{source} is not in memory"
    );
    assert!(
        !source.starts_with(&agent.dir.path().display().to_string()),
        "{source} is in the data directory"
    );

    // A reboot empties the tmpfs and stops the containers; the agent writes the files again
    // before it starts them.
    agent.kill();
    let scope = std::path::Path::new(&source).parent().unwrap().to_owned();
    std::fs::remove_dir_all(&scope).unwrap();
    let stopped = std::process::Command::new("docker")
        .args(["stop", "-t", "1", &container])
        .output()
        .unwrap();
    assert!(stopped.status.success());
    agent.restart();
    agent.wait_serving("s v1");
    let read = agent.berth_in(
        app.path(),
        &["exec", "web", "--", "cat", "/run/secrets/DB_PASSWORD"],
    );
    read.success();
    assert_eq!(read.stdout, "pa55-in-a-file");

    // The files go with the containers that used them.
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2", "--wait-drain"])
        .success();
    assert!(
        !scope.exists(),
        "release 1's secret files outlived its containers"
    );
}

#[test]
fn rotate_gives_a_new_value_and_restarts_its_users_but_not_an_accessory_that_uses_it() {
    let agent = Agent::start();
    let app = agent.app("rotate");
    app.write(&(web("HELLO_DEBUG = \"1\"") + "replicas = 2\nsecrets = [\"API_TOKEN\"]\n"));
    agent
        .berth_in(
            app.path(),
            &["secrets", "set", "API_TOKEN", "--value", "first-value"],
        )
        .success();
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    assert_eq!(
        agent.get("/env/API_TOKEN").unwrap(),
        (200, "first-value".to_owned())
    );

    let rotated = agent.berth_in(app.path(), &["secrets", "rotate", "API_TOKEN", "--json"]);
    rotated.success();
    assert_eq!(rotated.json()["restarted"], serde_json::json!(["web"]));
    // Both replicas read the new value: a generated 64-hex-character one.
    for _ in 0..4 {
        let (status, value) = agent.get("/env/API_TOKEN").unwrap();
        assert_eq!(status, 200);
        assert_eq!(value.len(), 64, "{value}");
        assert!(value.chars().all(|c| c.is_ascii_hexdigit()), "{value}");
    }
    let audit = agent.berth_in(app.path(), &["audit", "--json"]).stdout;
    assert!(audit.contains("restart"), "{audit}");

    // An accessory that uses the secret: refused, unless forced.
    app.write(
        &(web("HELLO_DEBUG = \"1\"")
            + "secrets = [\"API_TOKEN\"]\n\n[accessories.store]\nbuild = \".\"\nsecrets = [\"API_TOKEN\"]\n"),
    );
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    let refused = agent.berth_in(app.path(), &["secrets", "rotate", "API_TOKEN"]);
    refused.failure(2);
    assert!(
        refused.stderr.contains("accessory store"),
        "{}",
        refused.stderr
    );
    let missing = agent.berth_in(app.path(), &["secrets", "rotate", "NOPE"]);
    missing.failure(2);
    assert!(
        missing.stderr.contains("nothing to rotate"),
        "{}",
        missing.stderr
    );
}
