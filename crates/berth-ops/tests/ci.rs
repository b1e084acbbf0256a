//! The workflows `berth ci init` writes, validated against GitHub's and GitLab's published
//! JSON schemas by the `check-jsonschema` Python package (its built-in copies of them), for
//! both kinds of access. A broken file is refused by the same check, so the check can fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use berth_ops::ci::{Access, Provider, Workflow, deploy_script, detect_tests};
use std::path::Path;
use std::process::Command;

fn validate(schema: &str, file: &Path) -> (bool, String) {
    let output = Command::new("check-jsonschema")
        .args(["--builtin-schema", schema])
        .arg(file)
        .output()
        .expect("check-jsonschema is installed by scripts/install-test-peers (python3 -m pip install check-jsonschema)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn schema(provider: Provider) -> &'static str {
    match provider {
        Provider::GitHub => "vendor.github-workflows",
        Provider::GitLab => "vendor.gitlab-ci",
    }
}

#[test]
fn every_workflow_passes_its_published_schema() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("package-lock.json"), "{}").unwrap();
    let (test_command, test_from) = detect_tests(dir.path());
    assert_eq!(test_command, "npm ci && npm test");
    for provider in [Provider::GitHub, Provider::GitLab] {
        for access in [Access::Token, Access::Ssh] {
            let workflow = Workflow {
                provider,
                access,
                test_command: test_command.clone(),
                test_from: test_from.clone(),
                branch: "main".into(),
                environment: Some("production".into()),
                test_image: berth_ops::ci::detect_test_image(dir.path()).to_owned(),
            };
            let text = workflow.render();
            let file = dir.path().join(format!("{provider:?}-{access:?}.yml"));
            std::fs::write(&file, &text).unwrap();
            let (ok, report) = validate(schema(provider), &file);
            assert!(
                ok,
                "{provider:?}/{access:?} does not pass its schema:\n{report}\n{text}"
            );
            // The deploy job runs exactly the deploy script the integration test runs.
            let revision = match provider {
                Provider::GitHub => "GITHUB_SHA",
                Provider::GitLab => "CI_COMMIT_SHA",
            };
            for line in deploy_script(revision, Some("production")) {
                let shown = match provider {
                    Provider::GitHub => line.clone(),
                    Provider::GitLab => format!("\"{}\"", line.replace('"', "\\\"")),
                };
                assert!(text.contains(&shown), "`{shown}` is not in:\n{text}");
            }
            // Credentials are names of the CI system's secrets, never values.
            assert!(!text.contains("sha256:"), "{text}");
            match access {
                Access::Token => assert!(text.contains("BERTH_TOKEN"), "{text}"),
                Access::Ssh => assert!(text.contains("SSH_PRIVATE_KEY"), "{text}"),
            }
        }
    }
}

#[test]
fn the_schema_check_refuses_a_broken_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let github = dir.path().join("broken.yml");
    std::fs::write(
        &github,
        "name: broken\non: push\njobs:\n  test:\n    steps: nope\n",
    )
    .unwrap();
    assert!(!validate(schema(Provider::GitHub), &github).0);
    let gitlab = dir.path().join("broken-gitlab.yml");
    std::fs::write(&gitlab, "deploy:\n  script: 5\n  when: sometimes\n").unwrap();
    assert!(!validate(schema(Provider::GitLab), &gitlab).0);
}

#[test]
fn the_test_command_comes_from_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        detect_tests(dir.path()).0.contains("false"),
        "no tests: the job says so and fails"
    );
    std::fs::write(dir.path().join("go.mod"), "module x\n").unwrap();
    assert_eq!(detect_tests(dir.path()).0, "go test ./...");
    std::fs::write(dir.path().join("Cargo.toml"), "[package]\n").unwrap();
    assert_eq!(detect_tests(dir.path()).0, "cargo test --locked");
    assert_eq!(berth_ops::ci::detect_test_image(dir.path()), "rust:1");
}

#[test]
fn branches_are_names_not_globs_or_yaml() {
    assert!(berth_ops::ci::valid_branch("main"));
    assert!(berth_ops::ci::valid_branch("release/2.x"));
    assert!(!berth_ops::ci::valid_branch("feat/*"));
    assert!(!berth_ops::ci::valid_branch("ma\"in: x"));
    assert!(!berth_ops::ci::valid_branch(""));
}
