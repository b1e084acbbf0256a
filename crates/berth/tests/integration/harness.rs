//! Runs the real `berth` binary against the real Docker Engine: an agent per test (its own
//! data directory and proxy port), app directories holding the example app's build context,
//! and cleanup of everything the test created in Docker.

use berth_runtime::{ContainerRuntime, DockerRuntime};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// What a CLI run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn success(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn failure(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

pub struct Agent {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT` of the proxy.
    pub http: String,
    child: Option<Child>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    apps: Mutex<Vec<String>>,
}

impl Agent {
    pub fn start() -> Agent {
        Self::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Agent {
        Self::start_with(env, &[])
    }

    /// Starts an agent with extra environment and `berth agent` arguments (`{dir}` in an
    /// argument stands for its data directory).
    pub fn start_with(env: &[(&str, &str)], args: &[&str]) -> Agent {
        let mut agent = Self::unstarted();
        agent.http = "127.0.0.1:0".into();
        agent.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        agent.args = args.iter().map(|a| a.to_string()).collect();
        agent.spawn();
        agent
    }

    /// Starts an [`Agent::unstarted`] one with these `berth agent` arguments.
    pub fn spawn_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.spawn();
    }

    /// A data directory and a free proxy port for an agent the test starts itself (with
    /// `berth up`); dropping it stops that agent and cleans up like any other.
    pub fn unstarted() -> Agent {
        // Short paths: unix socket paths are limited to about 100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Agent {
            dir,
            http: format!("127.0.0.1:{port}"),
            child: None,
            env: Vec::new(),
            args: Vec::new(),
            apps: Mutex::new(Vec::new()),
        }
    }

    /// `127.0.0.1:PORT` of the HTTPS listener, when the agent has one.
    pub fn https(&self) -> String {
        self.agent_file()["https"]
            .as_str()
            .expect("the agent serves HTTPS")
            .to_owned()
    }

    /// What the running agent wrote about itself.
    pub fn agent_file(&self) -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("agent.json")).unwrap_or_default(),
        )
        .unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let _ = std::fs::remove_file(self.dir.path().join("agent.json"));
        let child = Command::new(BERTH)
            .args(["agent", "--data-dir"])
            .arg(self.dir.path())
            .args(["--http", &self.http])
            .args(
                self.args
                    .iter()
                    .map(|a| a.replace("{dir}", &self.dir.path().display().to_string())),
            )
            // Unless a test asks for them: no HTTPS listener (parallel agents would fight over
            // port 443) and no ACME (no real certificate authority in tests).
            .args(if self.args.iter().any(|a| a == "--https") {
                vec![]
            } else {
                vec!["--https", "off"]
            })
            .args(if self.args.iter().any(|a| a == "--acme-directory") {
                vec![]
            } else {
                vec!["--acme-directory", "off"]
            })
            // Parallel agents would share the console's default port.
            .args(if self.args.iter().any(|a| a == "--dashboard") {
                vec![]
            } else {
                vec!["--dashboard", "off"]
            })
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("BERTH_LOG", "info,berth_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join("agent.json"))
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(http) = json["http"].as_str()
            {
                // Restarts reuse the port, so clients can keep going.
                self.http = http.to_owned();
                break;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the agent exited at start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn agent_id(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent-id"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The pid of the agent serving now (after `berth agent upgrade`, not the one this
    /// harness started).
    pub fn pid(&self) -> Option<u32> {
        self.agent_file()["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
    }

    /// Waits up to `within` for the process this harness started to exit (as it does once a
    /// successor took over); its exit status.
    pub fn started_process_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let started = child.id();
            let _ = child.kill();
            let _ = child.wait();
            // A successor it handed over to is not its child to reap.
            if let Some(pid) = self.pid().filter(|p| *p != started) {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
                std::thread::sleep(Duration::from_millis(200));
            }
        } else if let Some(pid) = self.agent_file()["pid"].as_u64() {
            // An agent started by `berth up`, not by this harness.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, and wait for the agent to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("an agent this harness started");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().unwrap()
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs the CLI against this agent, in `dir`.
    pub fn berth_in(&self, dir: &Path, args: &[&str]) -> Run {
        self.berth_env(dir, &[], args)
    }

    /// Runs the CLI with extra environment variables.
    pub fn berth_env(&self, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
        let output = Command::new(BERTH)
            .args(args)
            .current_dir(dir)
            .envs(env.iter().copied())
            .env("BERTH_DATA_DIR", self.dir.path())
            .env_remove("BERTH_AGENT")
            .env("CI", "true")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `berth ARGS` in `dir` with `input` on its standard input (a piped secret).
    pub fn berth_input(&self, dir: &Path, input: &str, args: &[&str]) -> Run {
        use std::io::Write;
        let mut child = Command::new(BERTH)
            .args(args)
            .current_dir(dir)
            .env("BERTH_DATA_DIR", self.dir.path())
            .env_remove("BERTH_AGENT")
            .env("CI", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The agent's TCP API address (started with `--api 127.0.0.1:0`).
    pub fn tcp_api(&self) -> String {
        self.agent_file()["api"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| !a.starts_with("unix:"))
            .expect("the agent has a TCP API")
            .to_owned()
    }

    /// An agent whose API is also served over TLS: the agent, its `https://` address, its
    /// certificate's fingerprint and its token, as a remote client (a CI job) holds them.
    pub fn start_with_tls_api() -> (Agent, String, String, String) {
        let agent = Agent::start_with(
            &[],
            &[
                "--api",
                "unix:{dir}/berth.sock",
                "--api",
                "https://127.0.0.1:0",
            ],
        );
        let file = agent.agent_file();
        let address = file["api"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| a.starts_with("https://"))
            .expect("the agent serves its API over TLS")
            .to_owned();
        let fingerprint = file["api_fingerprint"].as_str().unwrap().to_owned();
        let token = std::fs::read_to_string(agent.dir.path().join("api-token")).unwrap();
        let token = token.trim().to_owned();
        (agent, address, fingerprint, token)
    }

    pub fn berth(&self, args: &[&str]) -> Run {
        self.berth_in(self.dir.path(), args)
    }

    /// A new app directory (the example app's context), cleaned up with the agent.
    pub fn app(&self, prefix: &str) -> AppDir {
        let name = berth_testkit::unique_name(prefix);
        self.apps.lock().unwrap().push(name.clone());
        AppDir {
            dir: berth_testkit::hello_context(),
            name,
        }
    }

    /// Cleans up after an app instance this test creates besides its `AppDir`s
    /// (an environment's `APP-ENV` instance).
    pub fn track(&self, app: &str) {
        self.apps.lock().unwrap().push(app.to_owned());
    }

    /// GET through the proxy.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        berth_testkit::http_get(&self.http, path, "localhost")
    }

    /// Waits until `/` answers with a body containing `text`.
    #[track_caller]
    pub fn wait_serving(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = self.get("/")
                && body.contains(text)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the app never served `{text}`; last answer {:?}\n{}",
                self.get("/"),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Containers this agent created, as (name, labels).
    pub fn containers(&self) -> Vec<(String, std::collections::BTreeMap<String, String>)> {
        let id = self.agent_id();
        block_on(async {
            DockerRuntime::from_env()
                .list_containers(&[("berth.agent", &id)])
                .await
                .unwrap()
                .into_iter()
                .map(|c| (c.name, c.labels))
                .collect()
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        let id = self.agent_id();
        if !id.is_empty() {
            // Secret files live outside the data directory, on a tmpfs.
            for base in ["/run", "/dev/shm"] {
                let _ = std::fs::remove_dir_all(format!("{base}/berth-{id}"));
            }
        }
        let apps = self.apps.lock().map(|a| a.clone()).unwrap_or_default();
        block_on(async {
            let docker = DockerRuntime::from_env();
            if !id.is_empty() {
                for container in docker
                    .list_containers(&[("berth.agent", &id)])
                    .await
                    .unwrap_or_default()
                {
                    let _ = docker.remove_container(&container.id).await;
                }
            }
            for app in apps {
                for image in docker
                    .images_matching(&format!("berth/{app}/*"))
                    .await
                    .unwrap_or_default()
                {
                    for tag in image.tags {
                        let _ = docker.remove_image(&tag).await;
                    }
                }
                for volume in docker
                    .list_volumes(&[("berth.app", &app)])
                    .await
                    .unwrap_or_default()
                {
                    let _ = docker.remove_volume(&volume).await;
                }
                let _ = docker.remove_network(&format!("berth-{app}")).await;
            }
        });
    }
}

pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

pub struct AppDir {
    dir: tempfile::TempDir,
    pub name: String,
}

impl AppDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("berth.toml")
    }

    /// Writes the manifest; `{app}` stands for the app's unique name.
    pub fn write(&self, manifest: &str) {
        std::fs::write(self.manifest_path(), manifest.replace("{app}", &self.name)).unwrap();
    }
}

/// A web service built from the example app; `env` goes into its environment table.
pub fn web(env: &str) -> String {
    format!(
        r#"app = "{{app}}"

[services.web]
build = "."
port = 8080
env = {{ {env} }}
healthcheck = {{ path = "/health", interval = "1s", start_timeout = "20s" }}
route = {{ domains = [] }}
stop_timeout = "2s"
"#
    )
}
