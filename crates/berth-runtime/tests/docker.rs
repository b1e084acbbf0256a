//! The Docker runtime against the real Docker Engine on this machine.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use berth_runtime::*;
use berth_testkit::{hello_context, http_get, tar_directory, unique_name};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

fn labels(test: &str) -> Labels {
    BTreeMap::from([("berth.test".to_owned(), test.to_owned())])
}

/// Removes everything a test created, even when it fails half-way.
struct Cleanup {
    runtime: DockerRuntime,
    containers: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
    volumes: Mutex<Vec<String>>,
}

impl Cleanup {
    fn new(runtime: &DockerRuntime) -> Self {
        Self {
            runtime: runtime.clone(),
            containers: Mutex::default(),
            images: Mutex::default(),
            networks: Mutex::default(),
            volumes: Mutex::default(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let runtime = self.runtime.clone();
        let containers = std::mem::take(&mut *self.containers.lock().unwrap());
        let images = std::mem::take(&mut *self.images.lock().unwrap());
        let networks = std::mem::take(&mut *self.networks.lock().unwrap());
        let volumes = std::mem::take(&mut *self.volumes.lock().unwrap());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                for c in containers {
                    let _ = runtime.remove_container(&c).await;
                }
                for i in images {
                    let _ = runtime.remove_image(&i).await;
                }
                for n in networks {
                    let _ = runtime.remove_network(&n).await;
                }
                for v in volumes {
                    let _ = runtime.remove_volume(&v).await;
                }
            })
        })
        .join();
    }
}

#[tokio::test]
async fn builds_runs_inspects_execs_and_removes_a_container() {
    let runtime = DockerRuntime::from_env();
    let cleanup = Cleanup::new(&runtime);
    let info = runtime.info().await.unwrap();
    assert!(!info.version.is_empty());
    let data_root = info.data_root.expect("Docker names its data root");
    assert!(
        std::path::Path::new(&data_root).is_absolute(),
        "{data_root}"
    );

    let name = unique_name("rt");
    let test_labels = labels(&name);

    // Build from a context archive; the .dockerignore keeps a stray file out of the image.
    let context = hello_context();
    std::fs::write(context.path().join("junk.bin"), vec![0u8; 1024]).unwrap();
    let archive = tar_directory(context.path());
    let tag = format!("berth-test/{name}:v1");
    cleanup.images.lock().unwrap().push(tag.clone());
    let lines = Mutex::new(Vec::new());
    let image = runtime
        .build_image(
            &BuildRequest {
                context_tar: archive.path().to_owned(),
                dockerfile: "Dockerfile".into(),
                tag: tag.clone(),
                args: BTreeMap::new(),
                target: None,
                labels: test_labels.clone(),
            },
            &|line| lines.lock().unwrap().push(line.to_owned()),
        )
        .await
        .unwrap();
    assert!(image.id.starts_with("sha256:"));
    assert!(image.tags.contains(&tag));
    assert_eq!(image.labels.get("berth.test"), Some(&name));
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("COPY hello")),
        "build output is streamed"
    );

    // Re-tag, then remove the tag: the image stays under its other name.
    runtime
        .tag_image(&image.id, &format!("berth-test/{name}"), "keep")
        .await
        .unwrap();
    cleanup
        .images
        .lock()
        .unwrap()
        .push(format!("berth-test/{name}:keep"));
    runtime.remove_image(&tag).await.unwrap();
    let kept = runtime
        .inspect_image(&format!("berth-test/{name}:keep"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.id, image.id);
    assert!(runtime.inspect_image(&tag).await.unwrap().is_none());

    // A subnet of berth's own choosing, and idempotent.
    let subnet = "10.254.77.0/24";
    assert!(
        runtime
            .ensure_network(&name, &test_labels, Some(subnet))
            .await
            .unwrap()
    );
    cleanup.networks.lock().unwrap().push(name.clone());
    assert!(
        !runtime
            .ensure_network(&name, &test_labels, Some(subnet))
            .await
            .unwrap()
    );
    assert!(runtime.network_exists(&name).await.unwrap());
    assert!(
        runtime
            .network_subnets()
            .await
            .unwrap()
            .contains(&subnet.to_owned())
    );
    runtime.ensure_volume(&name, &test_labels).await.unwrap();
    cleanup.volumes.lock().unwrap().push(name.clone());

    let spec = ContainerSpec {
        name: name.clone(),
        image: image.id.clone(),
        command: None,
        env: vec!["VERSION=v1".into(), "DATA_DIR=/data".into()],
        labels: test_labels.clone(),
        network: Some(NetworkAttachment {
            network: name.clone(),
            aliases: vec!["web".into()],
        }),
        mounts: vec![MountSpec {
            kind: MountKind::Volume,
            source: name.clone(),
            target: "/data".into(),
            read_only: false,
        }],
        restart: Some("unless-stopped".into()),
        memory: Some(64 << 20),
        cpus: Some(0.5),
        log: LogSpec {
            driver: "json-file".into(),
            options: BTreeMap::from([
                ("max-size".into(), "10m".into()),
                ("max-file".into(), "3".into()),
            ]),
        },
        gpus: None,
        init: true,
        stop_timeout: Some(Duration::from_secs(2)),
        publish: vec![],
    };
    let id = runtime.create_container(&spec).await.unwrap();
    cleanup.containers.lock().unwrap().push(id.clone());
    runtime.start_container(&id).await.unwrap();

    let info = runtime.inspect_container(&id).await.unwrap().unwrap();
    assert_eq!(info.name, name);
    assert_eq!(info.state, ContainerState::Running);
    assert_eq!(info.image_id, image.id);
    let ip = info.addresses[&name];

    // The agent reaches containers on their private network address.
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(r) = http_get(&format!("{ip}:8080"), "/", "x") {
            answer = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = answer.expect("the container answers HTTP");
    assert_eq!(status, 200);
    assert!(body.contains("v1"), "{body}");

    let listed = runtime
        .list_containers(&[("berth.test", &name)])
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    let exec = runtime
        .exec_collect(
            &id,
            &["/hello".into(), "migrate".into()],
            4096,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(exec.exit_code, 0, "{}", exec.output);
    assert!(exec.output.contains("migrations done"));
    let failing = runtime
        .exec_collect(
            &id,
            &["/hello".into(), "nonsense".into()],
            4096,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(failing.exit_code, 2);

    let tail = runtime.log_tail(&id, 5).await;
    assert!(
        tail.iter().any(|l| l.contains("listening on port 8080")),
        "{tail:?}"
    );

    runtime
        .restart_container(&id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        runtime.inspect_container(&id).await.unwrap().unwrap().state,
        ContainerState::Running
    );

    runtime
        .stop_container(&id, Duration::from_secs(2))
        .await
        .unwrap();
    runtime
        .stop_container(&id, Duration::from_secs(2))
        .await
        .unwrap(); // already stopped: fine
    assert_eq!(
        runtime.inspect_container(&id).await.unwrap().unwrap().state,
        ContainerState::Exited
    );
    runtime.remove_container(&id).await.unwrap();
    runtime.remove_container(&id).await.unwrap(); // already gone: fine
    assert!(runtime.inspect_container(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_one_off_container_reports_its_exit_code() {
    let runtime = DockerRuntime::from_env();
    let context = hello_context();
    let archive = tar_directory(context.path());
    let cleanup = Cleanup::new(&runtime);
    let name = unique_name("rt-oneoff");
    let tag = format!("berth-test/{name}:v1");
    cleanup.images.lock().unwrap().push(tag.clone());
    let image = runtime
        .build_image(
            &BuildRequest {
                context_tar: archive.path().to_owned(),
                dockerfile: "Dockerfile".into(),
                tag: tag.clone(),
                args: BTreeMap::new(),
                target: None,
                labels: labels(&name),
            },
            &|_| {},
        )
        .await
        .unwrap();
    let spec = ContainerSpec {
        name: name.clone(),
        image: image.id.clone(),
        command: Some(vec!["migrate".into()]),
        env: vec!["MIGRATE_FAIL=1".into()],
        labels: labels(&name),
        init: true,
        ..ContainerSpec::default()
    };
    let id = runtime.create_container(&spec).await.unwrap();
    cleanup.containers.lock().unwrap().push(id.clone());
    runtime.start_container(&id).await.unwrap();
    assert_eq!(runtime.wait_container(&id).await.unwrap(), 1);
    let tail = runtime.log_tail(&id, 10).await;
    assert!(
        tail.iter().any(|l| l.contains("migration failed")),
        "{tail:?}"
    );
}

#[tokio::test]
async fn a_missing_image_and_a_failing_build_are_named() {
    let runtime = DockerRuntime::from_env();
    let spec = ContainerSpec {
        name: unique_name("rt-missing"),
        image: "berth-test/does-not-exist:1".into(),
        ..ContainerSpec::default()
    };
    let error = runtime.create_container(&spec).await.unwrap_err();
    assert!(
        matches!(error, RuntimeError::ImageUnavailable { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("berth-test/does-not-exist:1"),
        "{error}"
    );

    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY missing-file /x\n",
    )
    .unwrap();
    let archive = tar_directory(context.path());
    let error = runtime
        .build_image(
            &BuildRequest {
                context_tar: archive.path().to_owned(),
                dockerfile: "Dockerfile".into(),
                tag: format!("berth-test/{}:v1", unique_name("rt-broken")),
                args: BTreeMap::new(),
                target: None,
                labels: Labels::new(),
            },
            &|_| {},
        )
        .await
        .unwrap_err();
    match error {
        RuntimeError::BuildFailed { message, .. } => {
            assert!(message.contains("missing-file"), "{message}")
        }
        other => panic!("expected a build failure, got {other}"),
    }
}

#[tokio::test]
async fn an_unreachable_docker_is_one_clear_line() {
    let runtime = DockerRuntime::new("unix:///tmp/berth-no-such-docker.sock");
    let error = runtime.info().await.unwrap_err();
    assert!(error.is_unreachable());
    let message = error.to_string();
    assert_eq!(
        message,
        "cannot reach Docker at unix:///tmp/berth-no-such-docker.sock: the socket /tmp/berth-no-such-docker.sock does not exist; is Docker installed and running? (`sudo systemctl start docker`)"
    );

    // A socket file nobody listens on: connection refused.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let runtime = DockerRuntime::new(&format!("unix://{}", path.display()));
    let error = runtime.info().await.unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    assert!(error.to_string().contains("connection refused"), "{error}");
}
