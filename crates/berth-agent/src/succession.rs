//! Restarting or upgrading the agent without refusing a connection (`berth agent upgrade`,
//! and `systemctl reload berth`).
//!
//! The running agent freezes its operation locks (refusing the upgrade while a deploy,
//! restart or backup runs), starts its successor (the same command line, the new binary) and
//! hands it every listening socket through `berth-handover`. Then it releases the data
//! directory's lock; the successor takes it, rebuilds its routes from the state and Docker
//! (nothing is started or removed: the containers run) and starts accepting on the very same
//! sockets, so no connection is ever refused. Only then does the old agent stop accepting and
//! drain its open connections (HTTP/1 clients are told `Connection: close`, HTTP/2 gets
//! GOAWAY, WebSockets end properly near the end of the grace period) and exit. If the
//! successor fails at any point, the old agent takes its lock back and carries on.

use crate::engine::Engine;
use crate::error::OpError;
use crate::progress::Progress;
use berth_api::{LockInfo, Outcome};
use berth_handover::{Channel, HandoverError, Message, Offer, Offered};
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tells a starting agent where its predecessor offers its sockets.
pub(crate) const HANDOVER_ENV: &str = "BERTH_HANDOVER";
/// The operation locks say this while they are frozen for a hand-over.
pub(crate) const UPGRADE_LOCK: &str = "agent upgrade";
const HANDOVER_SOCKET: &str = "handover.sock";
/// How long the successor may take to start and reach the hand-over socket.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long each step of the exchange may take.
const STEP_WAIT: Duration = Duration::from_secs(30);
/// How long the successor may take to rebuild its routes once it holds the data directory.
const READY_WAIT: Duration = Duration::from_secs(120);

/// A listener as it can be handed over: what it is, its configured address, its sockets.
pub(crate) struct HandoverListener {
    pub kind: &'static str,
    pub name: String,
    pub fds: Vec<OwnedFd>,
}

/// What the running agent needs to hand itself over, and to retire afterwards.
pub struct Succession {
    data_dir: PathBuf,
    /// The command line this agent was started with; the successor gets the same.
    args: Vec<OsString>,
    listeners: Mutex<Vec<HandoverListener>>,
    /// The data directory's lock: released for the successor, taken back if it fails.
    lock: Mutex<Option<std::fs::File>>,
    lock_path: PathBuf,
    /// `agent.json` as this agent wrote it, to write again if a successor failed.
    agent_file: Mutex<String>,
    /// Turned true once a successor serves: this agent then stops and leaves what the
    /// successor now owns (the API socket, `agent.json`) in place.
    retired: tokio::sync::watch::Sender<bool>,
    /// `berth agent stop`.
    stop: tokio::sync::watch::Sender<bool>,
    busy: AtomicBool,
    /// How long open requests may take to finish when this agent stops.
    pub(crate) grace: Duration,
}

impl Succession {
    pub(crate) fn new(
        data_dir: &Path,
        lock: std::fs::File,
        lock_path: PathBuf,
        grace: Duration,
    ) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            args: std::env::args_os().collect(),
            listeners: Mutex::new(Vec::new()),
            lock: Mutex::new(Some(lock)),
            lock_path,
            agent_file: Mutex::new(String::new()),
            retired: tokio::sync::watch::Sender::new(false),
            stop: tokio::sync::watch::Sender::new(false),
            busy: AtomicBool::new(false),
            grace,
        }
    }

    pub(crate) fn add_listener(&self, listener: HandoverListener) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    pub(crate) fn set_agent_file(&self, text: String) {
        *self.agent_file.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }

    /// Resolves once a successor serves in this agent's place.
    pub(crate) fn retired(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut retired = self.retired.subscribe();
        async move {
            let _ = retired.wait_for(|r| *r).await.map(|_| ());
        }
    }

    /// `berth agent stop`: the agent stops as on SIGTERM.
    pub(crate) fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once `berth agent stop` asked.
    pub(crate) fn stop_requested(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|s| *s).await.map(|_| ());
        }
    }

    /// Releases the data directory's lock at the end of a plain stop.
    pub(crate) fn release_lock(&self) {
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// `berth agent upgrade [BINARY]`: hands this agent over to a new process of `binary`
    /// (default: this agent's own binary, as it is on disk now). On success the caller
    /// retires this agent once the outcome is delivered ([`Succession::retire`]).
    pub(crate) async fn upgrade(
        self: Arc<Self>,
        engine: Arc<Engine>,
        binary: Option<String>,
        actor: String,
        progress: Progress,
    ) -> (Outcome, bool) {
        let started = Instant::now();
        let result = if self.busy.swap(true, Ordering::AcqRel) {
            Err(OpError::new(
                crate::ErrorKind::Locked,
                "an upgrade of the agent is already in progress",
            ))
        } else {
            let result = self.upgrade_steps(&engine, binary, &actor, &progress).await;
            self.busy.store(false, Ordering::Release);
            result
        };
        engine.audit(
            &actor,
            "upgrade",
            "agent",
            if result.is_ok() { "ok" } else { "failed" },
            &match &result {
                Ok(successor) => format!(
                    "pid {} ({}) took over from pid {}",
                    successor.pid,
                    successor.version,
                    std::process::id()
                ),
                Err(error) => error.message.clone(),
            },
        );
        let ok = result.is_ok();
        let version = result.as_ref().ok().map(|s| s.version.clone());
        let outcome = Outcome {
            ok,
            app: "agent".into(),
            operation: "upgrade".into(),
            release: None,
            version,
            live_release: None,
            elapsed_ms: started.elapsed().as_millis() as u64,
            urls: Vec::new(),
            error: result.err().map(|e| e.to_operation()),
            backups: None,
        };
        (outcome, ok)
    }

    /// Stops this agent in favour of the successor that now serves.
    pub(crate) fn retire(&self) {
        self.retired.send_replace(true);
    }

    async fn upgrade_steps(
        &self,
        engine: &Arc<Engine>,
        binary: Option<String>,
        actor: &str,
        progress: &Progress,
    ) -> Result<Successor, OpError> {
        let binary = resolve_binary(binary)?;
        let step = progress.step(format!("check {}", binary.display()));
        let version = step.finish(binary_version(&binary).await)?;
        progress.log(format!(
            "from berth {} (pid {}) to berth {version}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        ));

        // No operation may be running or start: the successor takes over a quiet agent.
        let step = progress.step("pause operations");
        let why = LockInfo {
            operation: UPGRADE_LOCK.into(),
            holder: actor.to_owned(),
            since: berth_state::now_ms(),
        };
        let frozen = engine.locks().freeze(why.clone()).and_then(|()| {
            engine
                .backups()
                .locks()
                .freeze(why)
                .inspect_err(|_| engine.locks().thaw())
        });
        if let Err(holders) = frozen {
            let list = holders
                .iter()
                .map(|(app, holder)| {
                    format!(
                        "a {} of {app} (by {}, since {})",
                        holder.operation,
                        holder.holder,
                        crate::locks::format_time(holder.since)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let error = OpError::new(
                crate::ErrorKind::Locked,
                format!("the agent is busy: {list} is in progress"),
            )
            .hint("wait for it to finish, then upgrade (the apps keep serving meanwhile)");
            step.fail(&error.message);
            return Err(error);
        }
        step.done(None);
        let result = self.hand_over(&binary, progress).await;
        if result.is_err() {
            engine.locks().thaw();
            engine.backups().locks().thaw();
        }
        result
    }

    async fn hand_over(&self, binary: &Path, progress: &Progress) -> Result<Successor, OpError> {
        let socket_path = self.data_dir.join(HANDOVER_SOCKET);
        let offer = Arc::new(Offer::bind(&socket_path).map_err(handover_error)?);
        let step = progress.step("start the new agent");
        let mut command = tokio::process::Command::new(binary);
        command
            .args(self.args.iter().skip(1))
            .env(HANDOVER_ENV, &socket_path)
            .stdin(std::process::Stdio::null());
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let error = OpError::failed(format!("cannot start {}: {error}", binary.display()));
                step.fail(&error.message);
                return Err(error);
            }
        };
        let pid = child.id().unwrap_or_default();
        step.done(Some(format!("pid {pid}")));

        let mut released = false;
        let result = self
            .exchange(&offer, &mut child, pid, progress, &mut released)
            .await;
        if let Err(error) = &result {
            // Whatever happened, the successor does not take over: this agent carries on.
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            if released {
                self.take_lock_back().await;
            }
            tracing::error!(error = %error.message, "the upgrade failed; this agent keeps serving");
        }
        result
    }

    async fn exchange(
        &self,
        offer: &Arc<Offer>,
        child: &mut tokio::process::Child,
        pid: u32,
        progress: &Progress,
        released: &mut bool,
    ) -> Result<Successor, OpError> {
        let step = progress.step("hand over the listening sockets");
        let (channel, _) = step_result(
            step,
            self.offer_listeners(offer, child, pid).await,
            |(_, count)| format!("{count} listeners"),
        )?;

        let step = progress.step("the new agent takes the data directory and rebuilds its routes");
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        *released = true;
        let ready = async {
            blocking(&channel, |c| c.send(&Message::Released)).await?;
            let waiting = Arc::clone(&channel);
            let ready = tokio::task::spawn_blocking(move || {
                waiting.expect(
                    &Message::Ready {
                        pid: 0,
                        version: String::new(),
                    },
                    READY_WAIT,
                )
            })
            .await
            .map_err(|e| OpError::failed(e.to_string()))?;
            match ready {
                Ok(Message::Ready { pid, version }) => Ok(Successor { pid, version }),
                Ok(other) => Err(OpError::failed(format!("the new agent said {other:?}"))),
                // A successor that gave up says why, and usually exits right after: its
                // reason is the news, not its exit status.
                Err(error @ HandoverError::Failed(_)) => Err(handover_error(error)),
                // A successor that died says nothing: its exit status does.
                Err(error) => Err(match child.try_wait() {
                    Ok(Some(status)) => exited_early(status),
                    _ => handover_error(error),
                }),
            }
        }
        .await;
        let successor = step_result(step, ready, |s| format!("pid {} serves", s.pid))?;
        progress.log(format!(
            "this agent (pid {}) stops accepting and drains its open connections",
            std::process::id()
        ));
        // Under systemd (Type=notify, NotifyAccess=all) the service's main process is now
        // the successor.
        if let Err(error) = berth_handover::notify_systemd(&format!("MAINPID={}", successor.pid)) {
            tracing::warn!(%error, "cannot tell systemd about the new main process");
        }
        Ok(successor)
    }

    /// Waits for the successor to connect, sends it every listener and waits until it has
    /// them.
    async fn offer_listeners(
        &self,
        offer: &Arc<Offer>,
        child: &mut tokio::process::Child,
        pid: u32,
    ) -> Result<(Arc<Channel>, usize), OpError> {
        let deadline = Instant::now() + CONNECT_WAIT;
        let channel = loop {
            let waiting = Arc::clone(offer);
            let accepted = tokio::task::spawn_blocking(move || {
                waiting.accept(pid, Duration::from_millis(250))
            })
            .await
            .map_err(|e| OpError::failed(e.to_string()))?;
            match accepted {
                Ok(channel) => break Arc::new(channel),
                Err(HandoverError::Timeout(_)) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(exited_early(status));
                    }
                }
                Err(error) => return Err(handover_error(error)),
            }
        };
        let count = {
            let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            let offered: Vec<Offered<'_>> = listeners
                .iter()
                .map(|l| Offered {
                    kind: l.kind,
                    name: &l.name,
                    fds: l.fds.iter().map(|fd| fd.as_fd()).collect(),
                })
                .collect();
            channel.offer(&offered).map_err(handover_error)?;
            offered.len()
        };
        blocking(&channel, |c| c.expect(&Message::Received, STEP_WAIT)).await?;
        Ok((channel, count))
    }

    /// After a failed hand-over: the lock again, and `agent.json` naming this agent.
    async fn take_lock_back(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.lock_path);
            match file {
                Ok(file) if file.try_lock().is_ok() => {
                    *self.lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
                    break;
                }
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    tracing::error!(
                        lock = %self.lock_path.display(),
                        "cannot take the data directory's lock back after a failed upgrade; another agent may hold it"
                    );
                    return;
                }
            }
        }
        let text = self
            .agent_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Err(error) = berth_fs::write_replacing(
            &self.data_dir.join(crate::AGENT_FILE),
            text.as_bytes(),
            0o600,
        ) {
            tracing::warn!(%error, "cannot rewrite agent.json after a failed upgrade");
        }
    }
}

/// The agent that took over.
struct Successor {
    pid: u32,
    version: String,
}

/// Runs a blocking exchange step off the event loop.
async fn blocking<T: Send + 'static>(
    channel: &Arc<Channel>,
    step: impl FnOnce(&Channel) -> Result<T, HandoverError> + Send + 'static,
) -> Result<T, OpError> {
    let channel = Arc::clone(channel);
    tokio::task::spawn_blocking(move || step(&channel))
        .await
        .map_err(|e| OpError::failed(e.to_string()))?
        .map_err(handover_error)
}

fn handover_error(error: HandoverError) -> OpError {
    OpError::failed(format!("the hand-over to the new agent failed: {error}")).hint(
        "this agent keeps serving; the new agent's own log lines (in the agent's log) say more",
    )
}

fn exited_early(status: std::process::ExitStatus) -> OpError {
    OpError::failed(format!(
        "the new agent exited ({status}) before it took over"
    ))
    .hint("this agent keeps serving; the new agent's error is in the agent's log")
}

/// Ends `step` as `result` says, with `detail` on success.
fn step_result<T>(
    step: crate::progress::Step,
    result: Result<T, OpError>,
    detail: impl FnOnce(&T) -> String,
) -> Result<T, OpError> {
    match &result {
        Ok(value) => step.done(Some(detail(value))),
        Err(error) => step.fail(&error.message),
    }
    result
}

/// The binary to start: the one given (an absolute path on the server), else this agent's
/// own, as it is on disk now (a package upgrade replaces the file under a running agent).
fn resolve_binary(binary: Option<String>) -> Result<PathBuf, OpError> {
    let path = match binary {
        Some(text) => PathBuf::from(text),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| OpError::failed(format!("cannot find the agent's binary: {e}")))?;
            // The running file was replaced: its name now holds the new one.
            match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
                Some(name) => PathBuf::from(name),
                None => exe,
            }
        }
    };
    if !path.is_absolute() {
        return Err(
            OpError::invalid(format!("{} is not an absolute path", path.display())).hint(
                "give the new binary's full path on the server, such as /usr/local/bin/berth",
            ),
        );
    }
    Ok(path)
}

/// Asks `binary --version` what it is: it must say it is berth.
async fn binary_version(binary: &Path) -> Result<String, OpError> {
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(binary)
            .arg("--version")
            .env_remove(HANDOVER_ENV)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let output = match output {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            return Err(
                OpError::invalid(format!("cannot run {}: {error}", binary.display()))
                    .hint("give the path of a berth binary for this server's architecture"),
            );
        }
        Err(_) => {
            return Err(OpError::invalid(format!(
                "{} --version did not answer within 10s",
                binary.display()
            )));
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    match text.trim().strip_prefix("berth ") {
        Some(version) if output.status.success() && !version.is_empty() => {
            Ok(version.trim().to_owned())
        }
        _ => Err(OpError::invalid(format!(
            "{} is not a berth binary (`--version` said {:?})",
            binary.display(),
            output::first_line(&text)
        ))
        .hint("give the path of the new berth binary")),
    }
}

mod output {
    pub(super) fn first_line(text: &str) -> String {
        text.lines().next().unwrap_or("").chars().take(80).collect()
    }
}

/// The successor's side, before it takes the data directory: receives the listeners, asks
/// for the lock and waits until it is released.
pub(crate) struct Predecessor {
    channel: Arc<Channel>,
    listeners: Mutex<Vec<berth_handover::Listener>>,
}

impl Predecessor {
    /// Reaches the agent that started this one (at `path`, from [`HANDOVER_ENV`]).
    pub(crate) async fn reach(path: PathBuf) -> Result<Predecessor, HandoverError> {
        tokio::task::spawn_blocking(move || {
            let channel = Channel::connect(&path)?;
            let listeners = channel.take(STEP_WAIT)?;
            channel.send(&Message::Received)?;
            channel.expect(&Message::Released, STEP_WAIT)?;
            Ok(Predecessor {
                channel: Arc::new(channel),
                listeners: Mutex::new(listeners),
            })
        })
        .await
        .map_err(|e| HandoverError::Protocol(e.to_string()))?
    }

    /// The sockets of the listener `kind` configured as `name`, once.
    pub(crate) fn take(&self, kind: &str, name: &str) -> Option<Vec<OwnedFd>> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let index = listeners
            .iter()
            .position(|l| l.kind == kind && l.name == name)?;
        Some(listeners.swap_remove(index).fds)
    }

    /// Tells the old agent this one serves.
    pub(crate) async fn ready(&self) -> Result<(), OpError> {
        blocking(&self.channel, |c| {
            c.send(&Message::Ready {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
        })
        .await
    }

    /// Tells the old agent this one gives up, and why.
    pub(crate) async fn fail(&self, error: String) {
        let _ = blocking(&self.channel, move |c| c.send(&Message::Failed { error })).await;
    }
}
