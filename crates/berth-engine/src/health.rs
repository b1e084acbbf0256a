//! Health probes and the deploy health gate.

use berth_manifest::{Probe, Service};
use berth_runtime::{ContainerRuntime, ContainerState};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How a probe went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Healthy,
    Unhealthy(String),
}

/// Probes one container once. `ip` is its address on the app network.
pub async fn probe(
    runtime: &dyn ContainerRuntime,
    container_id: &str,
    ip: Option<IpAddr>,
    service: &Service,
    host: &str,
) -> ProbeResult {
    let check = &service.healthcheck;
    let timeout = check.timeout;
    let addr = match (ip, service.port) {
        (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
        _ => None,
    };
    match &check.probe {
        Probe::Http { path, status } => {
            let Some(addr) = addr else {
                return ProbeResult::Unhealthy(
                    "the container has no address on the app network".into(),
                );
            };
            match http_status(addr, path, host, timeout).await {
                Ok(code) if status.contains(code) => ProbeResult::Healthy,
                Ok(code) => {
                    ProbeResult::Unhealthy(format!("GET {path} returned {code}, expected {status}"))
                }
                Err(message) => ProbeResult::Unhealthy(format!("GET {path}: {message}")),
            }
        }
        Probe::Tcp => {
            let Some(addr) = addr else {
                return ProbeResult::Unhealthy(
                    "the container has no address on the app network".into(),
                );
            };
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => ProbeResult::Healthy,
                Ok(Err(e)) => {
                    ProbeResult::Unhealthy(format!("TCP connect to port {}: {e}", addr.port()))
                }
                Err(_) => {
                    ProbeResult::Unhealthy(format!("TCP connect to port {} timed out", addr.port()))
                }
            }
        }
        Probe::Command(command) => match runtime
            .exec_collect(container_id, command, 2048, timeout)
            .await
        {
            Ok(output) if output.exit_code == 0 => ProbeResult::Healthy,
            Ok(output) => ProbeResult::Unhealthy(format!(
                "`{}` exited with {}: {}",
                command.join(" "),
                output.exit_code,
                output.output.trim().lines().last().unwrap_or("")
            )),
            Err(e) => ProbeResult::Unhealthy(format!("`{}`: {e}", command.join(" "))),
        },
        Probe::Running => ProbeResult::Healthy,
    }
}

async fn http_status(
    addr: SocketAddr,
    path: &str,
    host: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "berth-health-check")
            .header(http::header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // Read (and discard) the body so the app's handler completes normally.
        let _ = response.into_body().collect().await;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            berth_manifest::units::format_duration(timeout)
        )),
    }
}

/// Why a container did not pass the health gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateFailure {
    /// The container stopped while starting.
    Exited { code: Option<i64>, oom_killed: bool },
    /// It kept failing its check until the start timeout.
    TimedOut { after: Duration, last: String },
    /// It vanished or Docker failed.
    Lost(String),
}

impl GateFailure {
    pub fn describe(&self) -> String {
        match self {
            GateFailure::Exited {
                oom_killed: true, ..
            } => "the container was killed for using more memory than its limit (raise `memory`)"
                .into(),
            GateFailure::Exited {
                code: Some(code), ..
            } => format!("the container exited with status {code} while starting"),
            GateFailure::Exited { code: None, .. } => "the container stopped while starting".into(),
            GateFailure::TimedOut { after, last } => {
                format!(
                    "not healthy after {}: {last}",
                    berth_manifest::units::format_duration(*after)
                )
            }
            GateFailure::Lost(message) => message.clone(),
        }
    }
}

/// How long a container without a check must keep running to count as started.
pub const SETTLE_TIME: Duration = Duration::from_secs(1);

/// Waits until a new container passes its health check. Polls quickly at first (most apps
/// are up within a second) and no slower than the check's interval.
pub async fn gate(
    runtime: &dyn ContainerRuntime,
    container_id: &str,
    network: &str,
    service: &Service,
    host: &str,
) -> Result<Option<IpAddr>, GateFailure> {
    let started = Instant::now();
    let check = &service.healthcheck;
    let mut pause = Duration::from_millis(50);
    let mut last = String::from("no check has completed yet");
    loop {
        let info = match runtime.inspect_container(container_id).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                return Err(GateFailure::Lost(
                    "the container disappeared while starting".into(),
                ));
            }
            Err(e) => return Err(GateFailure::Lost(e.to_string())),
        };
        match info.state {
            ContainerState::Exited | ContainerState::Dead => {
                return Err(GateFailure::Exited {
                    code: info.exit_code,
                    oom_killed: info.oom_killed,
                });
            }
            ContainerState::Restarting => {
                return Err(GateFailure::Exited {
                    code: info.exit_code,
                    oom_killed: info.oom_killed,
                });
            }
            _ => {}
        }
        let ip = info.addresses.get(network).copied();
        if info.state == ContainerState::Running {
            let result = if check.probe == Probe::Running {
                if started.elapsed() >= SETTLE_TIME.min(check.start_timeout) {
                    ProbeResult::Healthy
                } else {
                    ProbeResult::Unhealthy("starting".into())
                }
            } else {
                probe(runtime, container_id, ip, service, host).await
            };
            match result {
                ProbeResult::Healthy => return Ok(ip),
                ProbeResult::Unhealthy(why) => last = why,
            }
        }
        if started.elapsed() >= check.start_timeout {
            return Err(GateFailure::TimedOut {
                after: check.start_timeout,
                last,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2)
            .min(check.interval)
            .min(Duration::from_millis(500));
    }
}
