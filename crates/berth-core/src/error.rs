//! Errors of agent operations, carrying what the operator needs: the cause, a fix, and the
//! log lines of whatever failed.

use berth_api::{ApiError, OperationError};

pub use berth_api::ErrorKind;

/// The HTTP status an error of `kind` is answered with.
pub fn http_status(kind: ErrorKind) -> http::StatusCode {
    match kind {
        ErrorKind::Invalid => http::StatusCode::BAD_REQUEST,
        ErrorKind::Locked | ErrorKind::Conflict => http::StatusCode::CONFLICT,
        ErrorKind::NotFound => http::StatusCode::NOT_FOUND,
        ErrorKind::Unauthorized => http::StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => http::StatusCode::FORBIDDEN,
        ErrorKind::Failed => http::StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An operation's error. Boxed: it travels through many `Result`s and is rarely built.
#[derive(Debug, Clone)]
pub struct OpError(Box<OpErrorBody>);

#[derive(Debug, Clone)]
pub struct OpErrorBody {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
    pub details: Vec<String>,
    pub log_source: Option<String>,
    pub log_tail: Vec<String>,
    /// The classification of a library's error underneath, when there is one.
    pub cause: Option<&'static str>,
}

impl std::ops::Deref for OpError {
    type Target = OpErrorBody;
    fn deref(&self) -> &OpErrorBody {
        &self.0
    }
}

impl std::ops::DerefMut for OpError {
    fn deref_mut(&mut self) -> &mut OpErrorBody {
        &mut self.0
    }
}

impl OpError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(Box::new(OpErrorBody {
            kind,
            message: message.into(),
            hint: None,
            details: Vec::new(),
            log_source: None,
            log_tail: Vec::new(),
            cause: None,
        }))
    }

    /// Names what failed underneath (`disk-full`, `docker-unreachable`, ...).
    pub fn cause(mut self, cause: &'static str) -> Self {
        self.cause = Some(cause);
        self
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn logs(mut self, source: impl Into<String>, tail: Vec<String>) -> Self {
        self.log_source = Some(source.into());
        self.log_tail = tail;
        self
    }

    pub fn to_api(&self) -> ApiError {
        ApiError {
            message: self.message.clone(),
            hint: self.hint.clone(),
            kind: self.kind,
            details: self.details.clone(),
            cause: self.cause.map(str::to_owned),
        }
    }

    pub fn to_operation(&self) -> OperationError {
        OperationError {
            kind: self.kind,
            message: self.message.clone(),
            hint: self.hint.clone(),
            cause: self.cause.map(str::to_owned),
            log_source: self.log_source.clone(),
            log_tail: self.log_tail.clone(),
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<berth_runtime::RuntimeError> for OpError {
    fn from(error: berth_runtime::RuntimeError) -> Self {
        use berth_runtime::RuntimeError as E;
        let cause = match &error {
            E::Unreachable { .. } => "docker-unreachable",
            E::PermissionDenied { .. } => "docker-permission-denied",
            E::DiskFull { .. } => "disk-full",
            E::ImageUnavailable { .. } => "image-unavailable",
            E::NotFound { .. } => "docker-not-found",
            E::AddressPools { .. } => "address-pools-exhausted",
            E::Conflict { .. } => "docker-conflict",
            E::BuildFailed { .. } => "build-failed",
            E::Timeout { .. } => "docker-timeout",
            E::Api { .. } => "docker-refused",
            E::Io { .. } => "io",
        };
        OpError::failed(error.to_string()).cause(cause)
    }
}

impl From<berth_fs::FsError> for OpError {
    fn from(error: berth_fs::FsError) -> Self {
        OpError::failed(error.to_string())
    }
}

impl From<berth_state::StateError> for OpError {
    fn from(error: berth_state::StateError) -> Self {
        let cause = match &error {
            berth_state::StateError::DiskFull { .. } => "disk-full",
            _ => "state",
        };
        OpError::failed(error.to_string()).cause(cause)
    }
}

impl From<berth_backup::BackupError> for OpError {
    fn from(error: berth_backup::BackupError) -> Self {
        let kind = match error {
            berth_backup::BackupError::Invalid(_) => ErrorKind::Invalid,
            berth_backup::BackupError::NotFound { .. } => ErrorKind::NotFound,
            _ => ErrorKind::Failed,
        };
        let cause = error.cause();
        OpError::new(kind, error.to_string()).cause(cause)
    }
}

impl From<crate::secrets::SecretError> for OpError {
    fn from(error: crate::secrets::SecretError) -> Self {
        OpError::failed(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_librarys_classification_reaches_the_api_as_the_cause() {
        let unreachable = OpError::from(berth_runtime::RuntimeError::Unreachable {
            endpoint: "unix:///var/run/docker.sock".into(),
            reason: "connection refused".into(),
            hint: "start Docker",
        });
        assert_eq!(
            unreachable.to_api().cause.as_deref(),
            Some("docker-unreachable")
        );
        assert_eq!(unreachable.to_api().kind, ErrorKind::Failed);
        let full = OpError::from(berth_state::StateError::DiskFull {
            action: "record a release",
        });
        assert_eq!(full.to_operation().cause.as_deref(), Some("disk-full"));
        // Errors berth makes itself name no cause.
        assert_eq!(OpError::invalid("no command given").to_api().cause, None);
    }
}
