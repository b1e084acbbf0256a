//! `berth init` on directories shaped like real apps: what it finds, and that what it writes
//! passes `berth check`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use berth_ops::init::{Init, InitError, init};
use std::path::Path;

fn write(dir: &Path, path: &str, text: &str) {
    let full = dir.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, text).unwrap();
}

fn manifest_of(result: Init) -> (toml::Table, String) {
    match result {
        Init::Dockerfiles { manifest, found } => {
            println!("{manifest}\n{}", found.join("\n"));
            (manifest.parse().unwrap(), manifest)
        }
        Init::Compose { .. } => panic!("expected the Dockerfile path"),
    }
}

#[test]
fn a_single_dockerfile_app_with_a_health_route_in_its_source() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "Dockerfile",
        "FROM golang:1.23 AS build\nEXPOSE 9999\nFROM gcr.io/distroless/static\nEXPOSE 8080\nCMD [\"/server\"]\n",
    );
    write(dir.path(), "go.mod", "module example.com/shop\n");
    write(
        dir.path(),
        "cmd/server/main.go",
        "mux.HandleFunc(\"/healthz\", health)\nmux.HandleFunc(\"/ping\", ping)\n",
    );
    write(dir.path(), "node_modules/x/index.js", "app.get('/health')");
    let (m, text) = manifest_of(init(dir.path(), Some("shop".into())).unwrap());
    assert_eq!(m["app"].as_str(), Some("shop"));
    let web = &m["services"]["web"];
    assert_eq!(web["build"].as_str(), Some("."));
    assert_eq!(web["port"].as_integer(), Some(8080));
    assert_eq!(web["healthcheck"]["path"].as_str(), Some("/healthz"));
    assert!(web["route"]["domains"].as_array().unwrap().is_empty());
    assert!(
        text.contains("port 8080 from the Dockerfile's EXPOSE"),
        "{text}"
    );
    assert!(text.contains("a route in cmd/server/main.go"), "{text}");
}

#[test]
fn a_monorepo_with_a_frontend_an_api_and_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "frontend/Dockerfile",
        "FROM node:22\nCMD [\"npm\", \"start\"]\n",
    );
    write(
        dir.path(),
        "frontend/package.json",
        "{\"dependencies\": {\"next\": \"15\"}}",
    );
    write(
        dir.path(),
        "api/Dockerfile",
        "FROM python:3.12\nCMD [\"uvicorn\", \"main:app\", \"--port\", \"8000\"]\n",
    );
    write(
        dir.path(),
        "api/requirements.txt",
        "fastapi\nasyncpg\nredis\n",
    );
    write(
        dir.path(),
        "api/main.py",
        "@app.get(\"/api/health\")\ndef health(): ...\n",
    );
    write(
        dir.path(),
        "worker/Dockerfile",
        "FROM python:3.12\nCMD [\"python\", \"-m\", \"worker\"]\n",
    );
    let (m, text) = manifest_of(init(dir.path(), None).unwrap());
    let s = &m["services"];
    assert_eq!(s["frontend"]["build"].as_str(), Some("./frontend"));
    assert_eq!(s["frontend"]["port"].as_integer(), Some(3000));
    assert!(
        s["frontend"]["route"]["domains"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(s["api"]["port"].as_integer(), Some(8000));
    assert_eq!(
        s["api"]["healthcheck"]["path"].as_str(),
        Some("/api/health")
    );
    assert_eq!(
        s["api"]["route"]["domains"][0].as_str(),
        Some("api.localhost")
    );
    assert!(s["worker"].get("port").is_none());
    assert!(s["worker"].get("route").is_none());
    assert!(text.contains("# [accessories.postgres]"), "{text}");
    assert!(text.contains("# [accessories.redis]"), "{text}");
}

#[test]
fn a_compose_file_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Dockerfile", "FROM scratch\n");
    write(
        dir.path(),
        "docker-compose.yml",
        "services:\n  web:\n    build: .\n    ports: [\"8080:8080\"]\n",
    );
    match init(dir.path(), Some("composed".into())).unwrap() {
        Init::Compose { file, import } => {
            assert_eq!(file, "docker-compose.yml");
            assert!(import.manifest.contains("app = \"composed\""));
        }
        Init::Dockerfiles { .. } => panic!("the Compose file was not used"),
    }
}

#[test]
fn an_empty_directory_says_what_berth_needs() {
    let dir = tempfile::tempdir().unwrap();
    let error = init(dir.path(), None).unwrap_err();
    assert!(matches!(error, InitError::NothingToDeploy { .. }));
    assert!(
        error.to_string().contains("no Dockerfile or Compose file"),
        "{error}"
    );
}
