//! `berth import compose` and `berth init` end to end: the manifest they write is deployed by
//! the real agent on the real Docker Engine, and serves.

use crate::harness::Agent;

#[test]
fn a_compose_file_is_imported_its_secrets_loaded_and_deployed() {
    let agent = Agent::start();
    let app = agent.app("compose");
    let compose = r#"
name: {app}
services:
  web:
    build: .
    ports: ["8080:8080"]
    environment:
      GREETING: hello from compose
      HELLO_DEBUG: "1"
      DATA_DIR: /data
      API_TOKEN: ${API_TOKEN}
    volumes: [data:/data]
    depends_on:
      migrate:
        condition: service_completed_successfully
    healthcheck:
      test: ["CMD-SHELL", "wget -qO- http://localhost:8080/health || exit 1"]
      interval: 2s
  migrate:
    build: .
    command: ["migrate"]
    environment:
      DATA_DIR: /data
    volumes: [data:/data]
  worker:
    build: .
    command: ["worker"]
    environment:
      DATA_DIR: /data
    volumes: [data:/data]
  adminer:
    image: adminer:4
    profiles: [debug]
volumes:
  data:
"#
    .replace("{app}", &app.name);
    std::fs::write(app.path().join("compose.yaml"), compose).unwrap();
    std::fs::write(
        app.path().join(".env"),
        "API_TOKEN=tok-from-dotenv\nUNUSED=x\n",
    )
    .unwrap();

    let imported = agent.berth_in(app.path(), &["import", "compose", "compose.yaml", "--json"]);
    imported.success();
    let report = imported.json();
    assert_eq!(report["services"], serde_json::json!(["web", "worker"]));
    let became: Vec<(String, String)> = report["converted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["compose"].as_str().unwrap().to_owned(),
                c["became"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        became.contains(&("migrate".into(), "release_command".into())),
        "{became:?}"
    );
    assert!(
        became.contains(&("adminer".into(), "left_out".into())),
        "{became:?}"
    );
    let manifest = std::fs::read_to_string(app.manifest_path()).unwrap();
    assert!(!manifest.contains("tok-from-dotenv"), "{manifest}");

    // A second import does not overwrite the manifest.
    let again = agent.berth_in(app.path(), &["import", "compose", "compose.yaml"]);
    again.failure(2);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);

    agent.berth_in(app.path(), &["check"]).success();
    let loaded = agent.berth_in(app.path(), &["secrets", "import", ".env", "--json"]);
    loaded.success();
    let loaded = loaded.json();
    assert_eq!(loaded["set"], serde_json::json!(["API_TOKEN"]));
    assert_eq!(loaded["skipped"][0]["name"], "UNUSED");

    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    agent.wait_serving("hello from compose");
    assert_eq!(
        agent.get("/env/API_TOKEN").unwrap(),
        (200, "tok-from-dotenv".to_owned())
    );
    let status = agent.berth_in(app.path(), &["status", "--json"]);
    status.success();
    let text = status.stdout;
    assert!(text.contains("worker"), "{text}");
}

#[test]
fn berth_init_writes_a_manifest_that_deploys() {
    let agent = Agent::start();
    let app = agent.app("init");
    let written = agent.berth_in(app.path(), &["init", "--app", &app.name]);
    written.success();
    assert!(written.stdout.contains("port 8080"), "{}", written.stdout);
    let manifest = std::fs::read_to_string(app.manifest_path()).unwrap();
    assert!(manifest.contains("port = 8080"), "{manifest}");
    agent.berth_in(app.path(), &["init"]).failure(2);
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    agent.wait_serving("hello");
}

#[test]
fn the_runbook_describes_the_live_app() {
    let agent = Agent::start();
    let app = agent.app("runbook");
    app.write(&(crate::harness::web("") + "secrets = [\"JWT_SECRET\"]\n"));
    agent
        .berth_in(
            app.path(),
            &["secrets", "set", "JWT_SECRET", "--value", "s3cret-value"],
        )
        .success();
    agent
        .berth_in(app.path(), &["deploy", "--version", "v7"])
        .success();
    let runbook = agent.berth_in(app.path(), &["runbook"]);
    runbook.success();
    let text = runbook.stdout;
    assert!(
        text.starts_with(&format!("# Runbook: {}", app.name)),
        "{text}"
    );
    assert!(text.contains("- Live release: 1 (version `v7`)"), "{text}");
    assert!(text.contains("`berth secrets rotate JWT_SECRET`"), "{text}");
    assert!(text.contains("No `[backups.*]` in the manifest"), "{text}");
    assert!(!text.contains("s3cret-value"), "{text}");
}

/// The deploy step `berth ci init` writes, run as the CI job runs it: against the agent's TLS
/// API with the token and the pinned fingerprint from the CI system's secrets.
#[test]
fn the_ci_deploy_step_deploys_over_tls_with_the_token_and_fails_on_a_refused_release() {
    let (agent, api, fingerprint, token) = Agent::start_with_tls_api();
    let app = agent.app("ci");
    app.write(&crate::harness::web("GREETING = \"deployed by ci\""));
    let written = agent.berth_in(
        app.path(),
        &["ci", "init", "github", "--test-command", "true"],
    );
    written.success();
    let workflow = std::fs::read_to_string(app.path().join(".github/workflows/berth.yml")).unwrap();

    let berth_dir = std::path::Path::new(env!("CARGO_BIN_EXE_berth"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        berth_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run_step = |token: &str| {
        let script = berth_ops::ci::deploy_script("GITHUB_SHA", None).join("\n");
        assert!(
            workflow.contains(&script.replace('\n', "\n          ")),
            "{workflow}"
        );
        std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(app.path())
            .env_clear()
            .env("PATH", &path)
            .env("HOME", app.path())
            .env("CI", "true")
            .env("GITHUB_SHA", "0123abcd")
            .env("BERTH_AGENT", &api)
            .env("BERTH_TOKEN", token.trim())
            .env("BERTH_AGENT_FINGERPRINT", &fingerprint)
            .output()
            .unwrap()
    };
    // The CI system's secret: a deploy token for this app, made on the server.
    let add_token = |name: &str, scope: &str, app_name: Option<&str>| {
        let mut args = vec!["tokens", "add", name, "--scope", scope];
        if let Some(app_name) = app_name {
            args.extend(["--app", app_name]);
        }
        let out = agent.berth_in(app.path(), &args);
        out.success();
        out.stdout.trim().to_owned()
    };
    let deploy_token = add_token("github-ci", "deploy", Some(&app.name));
    assert!(deploy_token.starts_with("berth_"), "{deploy_token}");
    let deployed = run_step(&deploy_token);
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    agent.wait_serving("deployed by ci");
    let releases = agent.berth_in(app.path(), &["releases", "--json"]).json();
    assert!(releases.to_string().contains("0123abcd"), "{releases}");
    // The image was built on the runner and streamed: the server took it as built, and only
    // the release's tag remains on it, so pruning can remove it later.
    let log = String::from_utf8_lossy(&deployed.stderr);
    assert!(
        log.contains("images built here") && log.contains("take web as built"),
        "{log}"
    );
    // The build's own output is in the job's log (standard error), step by step.
    assert!(log.contains("COPY hello /hello"), "{log}");
    let tags = std::process::Command::new("docker")
        .args(["images", "--format", "{{.Tag}}"])
        .arg(format!("berth/{}/web", app.name))
        .output()
        .unwrap();
    let tags = String::from_utf8_lossy(&tags.stdout).into_owned();
    assert_eq!(tags.trim(), "r1", "{tags}");
    let audit = agent
        .berth_in(app.path(), &["audit", "--json"])
        .json()
        .to_string();
    assert!(audit.contains("token github-ci via tls"), "{audit}");

    // A token of another scope is refused, and the refusal is audited.
    let read_token = add_token("dashboard", "read", None);
    let refused = run_step(&read_token);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("read scope") && stderr.contains("needs deploy"),
        "{stderr}"
    );
    // So is a deploy token of another app.
    let other_token = add_token("other-ci", "deploy", Some("other-app"));
    let refused = run_step(&other_token);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("for the app other-app only"), "{stderr}");
    let audit = agent
        .berth_in(app.path(), &["audit", "-n", "100", "--json"])
        .json()
        .to_string();
    assert!(
        audit.contains("token dashboard via tls") && audit.contains("refused"),
        "{audit}"
    );

    // berth as the token's holder runs it, over TLS.
    let as_token = |token: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .current_dir(app.path())
            .env("CI", "true")
            .env("BERTH_AGENT", &api)
            .env("BERTH_TOKEN", token)
            .env("BERTH_AGENT_FINGERPRINT", &fingerprint)
            .output()
            .unwrap()
    };
    // A deploy token cannot deploy what reaches the host (the agent would mount it).
    let manifest = std::fs::read_to_string(app.manifest_path()).unwrap();
    app.write(&manifest.replace(
        "[services.web]",
        "[services.web]\nvolumes = [\"/var/run/docker.sock:/var/run/docker.sock\"]",
    ));
    let refused = run_step(&deploy_token);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("only what stays inside its containers"),
        "{stderr}"
    );
    app.write(&manifest);
    // Nor load an image archive naming anything but this app's uploaded images: loading it
    // would re-tag another app's image, a base image or a release's image.
    let archive = app.path().join("image.tar");
    let saved = std::process::Command::new("docker")
        .args(["save", "--output"])
        .arg(&archive)
        .arg(format!("berth/{}/web:r1", app.name))
        .output()
        .unwrap();
    assert!(saved.status.success(), "{saved:?}");
    let out = as_token(
        &deploy_token,
        &["deploy", "--load", archive.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("the archive names berth/{}/web:r1", app.name)),
        "{stderr}"
    );
    std::fs::write(&archive, [0u8; 1024]).unwrap();
    let out = as_token(
        &deploy_token,
        &["deploy", "--load", archive.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not an uncompressed tar file"), "{stderr}");
    std::fs::remove_file(&archive).unwrap();
    // An admin token limited to the app reaches neither tokens nor the agent.
    let app_admin = add_token("shop-admin", "admin", Some(&app.name));
    let out = as_token(&app_admin, &["tokens", "list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("for the app"), "{stderr}");
    // A read token reads.
    let out = as_token(&read_token, &["releases", "--app", &app.name, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A revoked token stops working at once.
    agent
        .berth_in(app.path(), &["tokens", "revoke", "github-ci"])
        .success();
    let refused = run_step(&deploy_token);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("`github-ci` was revoked"), "{stderr}");
    let list = agent
        .berth_in(app.path(), &["tokens", "list", "--json"])
        .json();
    let revoked = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "github-ci")
        .unwrap();
    assert!(
        revoked["revoked_at"].is_i64() && revoked["last_used_at"].is_i64(),
        "{list}"
    );
    assert!(
        !list.to_string().contains(&deploy_token[18..]),
        "a token is never listed"
    );

    // A token that is not the agent's is refused: the job fails, nothing is deployed.
    let refused = run_step("not-the-token");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.to_lowercase().contains("token"), "{stderr}");

    // A release its health gate refuses fails the job with the reason; the old one serves.
    app.write(&crate::harness::web(
        "GREETING = \"broken\", FAIL_HEALTH = \"1\"",
    ));
    let failed = run_step(&token);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("health"), "the reason is named: {stderr}");
    agent.wait_serving("deployed by ci");
}
