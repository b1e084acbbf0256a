//! Images from a private registry: pulled with the credentials of `[registry]`, a re-pushed
//! tag deployed as what it names now, `pull = "missing"` to opt out, and a registry that
//! cannot be reached falling back to the server's copy out loud.

use crate::harness::Agent;
use crate::peers::{REGISTRY_PASSWORD, Registry};
use std::process::Command;

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Builds the example app with its greeting baked in, tagged `reference`; returns its id.
fn build_greeting(context: &std::path::Path, reference: &str, greeting: &str) -> String {
    std::fs::write(
        context.join("Dockerfile.registry"),
        format!(
            "FROM scratch\nCOPY hello /hello\nENV GREETING={greeting}\nENTRYPOINT [\"/hello\"]\n"
        ),
    )
    .unwrap();
    docker(&[
        "build",
        "-q",
        "-f",
        &context.join("Dockerfile.registry").display().to_string(),
        "-t",
        reference,
        &context.display().to_string(),
    ])
}

fn manifest(reference: &str, registry: Option<&str>, pull: &str) -> String {
    let mut text = format!(
        r#"app = "{{app}}"

[services.web]
image = "{reference}"
{pull}
port = 8080
healthcheck = {{ path = "/health", interval = "1s", start_timeout = "20s" }}
route = {{ domains = [] }}
stop_timeout = "1s"
"#
    );
    if let Some(server) = registry {
        text.push_str(&format!(
            "\n[registry]\nserver = \"{server}\"\nusername = \"{}\"\n",
            crate::peers::REGISTRY_USER
        ));
    }
    text
}

#[test]
fn private_images_are_pulled_with_credentials_and_a_repushed_tag_is_deployed_as_its_new_digest() {
    let mut registry = Registry::start();
    let agent = Agent::start();
    let app = agent.app("reg");
    let reference = format!("{}/{}:latest", registry.server, app.name);
    let first = build_greeting(app.path(), &reference, "one");
    registry.push(&reference);
    docker(&["rmi", &reference]);

    // Without credentials the registry refuses, and the error says what to add.
    app.write(&manifest(&reference, None, ""));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v1"]);
    run.failure(1);
    assert!(
        run.stderr.contains("wants credentials") && run.stderr.contains("[registry]"),
        "{}",
        run.stderr
    );

    // [registry] without its secret: refused before anything is pulled, naming the secret.
    app.write(&manifest(&reference, Some(&registry.server), ""));
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v1"]);
    run.failure(2);
    assert!(run.stderr.contains("REGISTRY_PASSWORD"), "{}", run.stderr);

    // A wrong password: the registry's refusal is named as such.
    agent
        .berth_in(
            app.path(),
            &["secrets", "set", "REGISTRY_PASSWORD", "--value", "wrong"],
        )
        .success();
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v1"]);
    run.failure(1);
    assert!(
        run.stderr.contains("refused the credentials"),
        "{}",
        run.stderr
    );

    agent
        .berth_in(
            app.path(),
            &[
                "secrets",
                "set",
                "REGISTRY_PASSWORD",
                "--value",
                REGISTRY_PASSWORD,
            ],
        )
        .success();
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    assert_eq!(agent.get("/").unwrap(), (200, "one v1\n".into()));

    // "Push :latest, then deploy": the registry has a new image under the same tag while
    // the server still holds the old one under that name.
    let second = build_greeting(app.path(), &reference, "two");
    assert_ne!(first, second);
    registry.push(&reference);
    docker(&["tag", &first, &reference]);
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    run.success();
    assert_eq!(
        agent.get("/").unwrap(),
        (200, "two v2\n".into()),
        "the re-pushed tag was not pulled:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("new: the server had"), "{}", run.stderr);

    // `pull = "missing"` keeps the server's copy.
    build_greeting(app.path(), &reference, "three");
    registry.push(&reference);
    docker(&["tag", &second, &reference]);
    app.write(&manifest(
        &reference,
        Some(&registry.server),
        "pull = \"missing\"",
    ));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v3"])
        .success();
    assert_eq!(agent.get("/").unwrap(), (200, "two v3\n".into()));

    // A registry that cannot be reached does not stop a deploy that has a local copy, and
    // the deploy says so.
    app.write(&manifest(&reference, Some(&registry.server), ""));
    registry.stop();
    let run = agent.berth_in(app.path(), &["deploy", "--version", "v4"]);
    run.success();
    assert!(
        run.stderr.contains("could not be pulled") && run.stderr.contains("may be older"),
        "{}",
        run.stderr
    );
    assert_eq!(agent.get("/").unwrap(), (200, "two v4\n".into()));
    docker(&["rmi", "-f", &reference]);
}
