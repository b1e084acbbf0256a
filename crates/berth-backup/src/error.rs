//! Backup errors. Each names what failed, where, and what to do about it: they end up in
//! `berth backup` output, the audit log and `berth status`.

use std::io;

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "destination {destination}: cannot reach {endpoint}: {detail}; check the endpoint in \
         berth.toml and that the storage server is up and reachable from this server"
    )]
    Unreachable {
        destination: String,
        endpoint: String,
        detail: String,
    },
    #[error(
        "destination {destination}: the storage server refused the credentials ({detail}); \
         check the secrets {key_secret} and {secret_secret} (berth secrets set NAME)"
    )]
    CredentialsRefused {
        destination: String,
        detail: String,
        key_secret: String,
        secret_secret: String,
    },
    #[error("destination {destination}: bucket {bucket} does not exist; create it first")]
    NoSuchBucket { destination: String, bucket: String },
    #[error(
        "destination {destination}: disk full writing {path}; free space there or send \
         backups elsewhere"
    )]
    DiskFull { destination: String, path: String },
    #[error("destination {destination}: {detail}")]
    Storage { destination: String, detail: String },
    #[error("destination {destination}: {key} not found")]
    NotFound { destination: String, key: String },

    /// The dump or copy of the data failed: exit code, error output, or missing data.
    #[error("{0}")]
    Source(String),
    #[error(
        "backup {id} on {destination} is corrupt: its SHA-256 is {actual}, but {expected} was \
         recorded when it was written; restore from another destination or another backup"
    )]
    ChecksumMismatch {
        id: String,
        destination: String,
        expected: String,
        actual: String,
    },
    #[error("backup {id} cannot be decrypted: {detail}")]
    Decrypt { id: String, detail: String },
    /// None of the keys at hand is one of the backup's recipients (its stored bytes may be
    /// perfectly good).
    #[error("backup {id} cannot be decrypted: {detail}")]
    NoKey { id: String, detail: String },
    #[error("backup {id} is damaged: {detail}")]
    Damaged { id: String, detail: String },
    #[error("backup {id} failed its content check: {detail}")]
    Content { id: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "backup {id} on {destination} is not one berth can vouch for: {why}; look at it with \
         `berth backup list`, and restore it only with --allow-untrusted if you trust the storage"
    )]
    Untrusted {
        id: String,
        destination: String,
        why: String,
    },
    /// A file operation where another party can write was refused (a planted link) or
    /// failed.
    #[error(transparent)]
    File(#[from] berth_fs::FsError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl BackupError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        BackupError::Io {
            context: context.into(),
            source,
        }
    }

    /// A short machine-readable cause, for JSON output and metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            BackupError::Unreachable { .. } => "unreachable",
            BackupError::CredentialsRefused { .. } => "credentials-refused",
            BackupError::NoSuchBucket { .. } => "no-such-bucket",
            BackupError::DiskFull { .. } => "disk-full",
            BackupError::Storage { .. } => "storage",
            BackupError::NotFound { .. } => "not-found",
            BackupError::Source(_) => "source-failed",
            BackupError::ChecksumMismatch { .. } => "checksum-mismatch",
            BackupError::Decrypt { .. } => "decrypt",
            BackupError::NoKey { .. } => "no-key",
            BackupError::Damaged { .. } => "damaged",
            BackupError::Content { .. } => "content-check",
            BackupError::Invalid(_) => "invalid",
            BackupError::Untrusted { .. } => "untrusted",
            BackupError::File(berth_fs::FsError::Io { source, .. }) if is_disk_full(source) => {
                "disk-full"
            }
            BackupError::File(_) => "file",
            BackupError::Io { source, .. } if is_disk_full(source) => "disk-full",
            BackupError::Io { .. } => "io",
        }
    }
}

/// True for the errors a full disk or an exhausted quota produce.
pub fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || error.raw_os_error() == Some(28)
}
