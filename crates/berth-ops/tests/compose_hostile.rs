//! Compose files a stranger wrote: files that lead out of the project, devices, YAML bombs,
//! secrets hidden in commands and keys, and what Compose has that berth does not follow. Each
//! is reported with its line; nothing of a file outside the project reaches the output.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use berth_ops::compose::{self, Import, ImportError, ImportOptions};
use std::path::Path;

fn import_in(dir: &Path, text: &str) -> Result<Import, ImportError> {
    let options = ImportOptions {
        file_name: "compose.yaml".into(),
        compose_dir: dir.to_path_buf(),
        output_dir: dir.to_path_buf(),
        app: Some("hostile".into()),
        profiles: Vec::new(),
    };
    compose::import(text, &options)
}

fn said(import: &Import, text: &str) -> Option<u64> {
    import
        .findings
        .iter()
        .find(|f| f.message.contains(text))
        .map(|f| f.line.unwrap_or(0))
}

#[test]
fn env_files_outside_the_project_are_never_read() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("stolen.env"),
        "SECRET_TOKEN=do-not-print-me\n",
    )
    .unwrap();
    let project = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("stolen.env"),
        project.path().join("app.env"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", project.path().join("passwd.env")).unwrap();
    let text = format!(
        "services:\n  web:\n    image: app:1\n    env_file:\n      - app.env\n      - passwd.env\n      - {}/stolen.env\n      - /dev/zero\n",
        outside.path().display()
    );
    let import = import_in(project.path(), &text).unwrap();
    for line in [5, 6, 7, 8] {
        assert!(
            import
                .findings
                .iter()
                .any(|f| f.line == Some(line) && f.message.contains("leads outside the project")),
            "line {line}: {:#?}",
            import.findings
        );
    }
    let everything = format!(
        "{}{:?}{:?}",
        import.manifest, import.findings, import.secrets
    );
    assert!(
        !everything.contains("do-not-print-me") && !everything.contains("SECRET_TOKEN"),
        "{everything}"
    );
    assert!(!everything.contains("root:"), "{everything}");
}

#[test]
fn a_broken_env_file_is_named_without_its_content() {
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("app.env"), "hunter2-is-my-password\n").unwrap();
    let error = import_in(
        project.path(),
        "services:\n  web:\n    image: app:1\n    env_file: app.env\n",
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("app.env") && text.contains("line 1"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn a_yaml_bomb_is_refused_quickly() {
    let project = tempfile::tempdir().unwrap();
    let mut bomb =
        String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
        let previous = if i == 0 {
            "a".to_owned()
        } else {
            ["b", "c", "d", "e", "f", "g", "h"][i - 1].to_owned()
        };
        bomb.push_str(&format!("{name}: &{name} [*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous}]\n"));
    }
    bomb.push_str("services:\n  web:\n    image: app:1\n    command: *i\n");
    let started = std::time::Instant::now();
    let error = import_in(project.path(), &bomb).unwrap_err();
    assert!(error.to_string().contains("too many aliases"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn secrets_hidden_in_commands_values_and_names_are_caught() {
    let project = tempfile::tempdir().unwrap();
    let text = "services:\n  cache:\n    image: redis:7\n    command: redis-server --requirepass redispw123\n  api:\n    image: api:1\n    environment:\n      DB_PASSWORD: api-pass-111\n      PGPASS: hunter3\n      OPENAI: sk-proj-abcdefghijklmnopqrstuvwxyz\n      MYSQL_RANDOM_ROOT_PASSWORD: \"1\"\n  worker:\n    image: api:1\n    environment:\n      DB_PASSWORD: worker-pass-222\n";
    let import = import_in(project.path(), text).unwrap();
    assert_eq!(said(&import, "looks like a password"), Some(4));
    assert_eq!(said(&import, "another value here than in `api`"), Some(15));
    let m: toml::Table = import.manifest.parse().unwrap();
    let api_secrets = m["services"]["api"]["secrets"].as_array().unwrap();
    for name in ["DB_PASSWORD", "PGPASS", "OPENAI"] {
        assert!(
            api_secrets.iter().any(|s| s.as_str() == Some(name)),
            "{name}: {api_secrets:?}"
        );
    }
    assert_eq!(
        m["services"]["api"]["env"]["MYSQL_RANDOM_ROOT_PASSWORD"].as_str(),
        Some("1")
    );
    for value in ["api-pass-111", "hunter3", "sk-proj", "worker-pass-222"] {
        assert!(
            !import.manifest.contains(value),
            "{value} leaked:\n{}",
            import.manifest
        );
    }
}

#[test]
fn what_berth_does_not_follow_is_said_with_its_line() {
    let project = tempfile::tempdir().unwrap();
    let text = "x-app: &app\n  image: app:1\n  cap_add: [NET_ADMIN]\nservices:\n  web:\n    <<: *app\n  child:\n    extends: web\n  shared:\n    image: app:1\n    volumes_from: [web]\n";
    let import = import_in(project.path(), text).unwrap();
    // A merged key is reported where it is written, not at the `<<:` line.
    assert_eq!(said(&import, "`cap_add`"), Some(3));
    assert_eq!(said(&import, "`extends` another service"), Some(7));
    assert_eq!(said(&import, "`volumes_from`"), Some(11));
}

#[test]
fn nothing_convertible_says_why() {
    let project = tempfile::tempdir().unwrap();
    let error = import_in(
        project.path(),
        "services:\n  web:\n    image: app:1\n    profiles: [dev]\n",
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("profile dev") && text.contains("--profile dev"),
        "{text}"
    );
    let empty = import_in(project.path(), "services: {}\n").unwrap_err();
    assert!(empty.to_string().contains("defines no service"), "{empty}");
}
