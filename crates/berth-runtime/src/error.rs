//! Runtime errors: each names what failed, why, and what the operator can do about it.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot reach Docker at {endpoint}: {reason}; {hint}")]
    Unreachable {
        endpoint: String,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "permission denied on the Docker socket {endpoint}; add the agent's user to the docker group (`sudo usermod -aG docker $USER`, then log in again) or run the agent as root"
    )]
    PermissionDenied { endpoint: String },
    #[error(
        "the Docker host is out of disk space while trying to {action}; free space (`docker system prune`, old volumes, logs) or grow the disk"
    )]
    DiskFull { action: String },
    #[error("image `{reference}` could not be pulled: {reason}")]
    ImageUnavailable { reference: String, reason: String },
    #[error("{kind} `{name}` does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error(
        "Docker has no address space left for the network {network} ({message}); berth gives each app a /24 of --app-subnets (10.213.0.0/16 unless set): choose a free range there, or widen Docker's `default-address-pools` in /etc/docker/daemon.json"
    )]
    AddressPools { network: String, message: String },
    #[error("cannot {action}: {message}")]
    Conflict { action: String, message: String },
    #[error("building image `{tag}` failed: {message}")]
    BuildFailed {
        tag: String,
        message: String,
        /// The last lines of build output, for the operator.
        log_tail: Vec<String>,
    },
    #[error("Docker did not answer within {}s while trying to {action}; it may be overloaded", timeout.as_secs())]
    Timeout { action: String, timeout: Duration },
    #[error("Docker refused to {action}: {message}")]
    Api {
        action: String,
        status: u16,
        message: String,
    },
    #[error("cannot {action}: {message}")]
    Io { action: String, message: String },
}

impl RuntimeError {
    /// True when Docker itself could not be reached (nothing was done).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            RuntimeError::Unreachable { .. } | RuntimeError::PermissionDenied { .. }
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
