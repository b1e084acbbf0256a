//! Where backups are stored: a directory on the server, or an S3-compatible bucket (AWS,
//! DigitalOcean Spaces, Backblaze B2, Cloudflare R2, MinIO, Garage...).
//!
//! Both hold the same layout, `APP/NAME/ID.KIND.zst.age` beside `APP/NAME/ID.json`, and both
//! make an object appear whole or not at all: a directory writes to a hidden `.partial` file
//! and renames it after `fsync`; a bucket completes (or aborts) a multipart upload.

use crate::error::{BackupError, Result, is_disk_full};
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// How an S3-compatible destination is reached. Credentials come from the agent's secrets.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// `https://…` for anything but AWS itself (whose endpoint follows from the region).
    pub endpoint: Option<String>,
    pub region: String,
    /// Address buckets as `endpoint/bucket` (MinIO, Garage) instead of `bucket.endpoint`.
    pub path_style: bool,
    /// A key prefix inside the bucket, without slashes at either end (may be empty).
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The names of the secrets the keys came from, for error messages.
    pub key_secret_names: (String, String),
    /// Bytes per multipart part; uploads larger than one part go up in parts.
    pub part_size: usize,
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Where multipart uploads in progress are recorded (a directory only the agent writes),
    /// so one cut off by an outage can be aborted once the bucket answers again; `None`
    /// records nothing.
    pub unfinished_uploads: Option<PathBuf>,
}

pub enum Destination {
    Local(LocalDir),
    S3(Box<S3Bucket>),
}

impl Destination {
    pub fn local(name: &str, root: PathBuf) -> Self {
        Destination::Local(LocalDir {
            name: name.to_owned(),
            root,
        })
    }

    pub fn s3(name: &str, settings: S3Settings) -> Result<Self> {
        let endpoint = settings.endpoint.clone();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(&settings.secret_access_key)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(60),
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300))
                    .with_allow_http(
                        endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    ),
            );
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| {
            BackupError::Invalid(format!("destination {name}: cannot set up S3: {e}"))
        })?;
        Ok(Destination::S3(Box::new(S3Bucket {
            name: name.to_owned(),
            store: Arc::new(store),
            settings,
        })))
    }

    pub fn name(&self) -> &str {
        match self {
            Destination::Local(d) => &d.name,
            Destination::S3(b) => &b.name,
        }
    }

    /// Where it is, for people: a path or `s3://bucket/prefix at endpoint`.
    pub fn describe(&self) -> String {
        match self {
            Destination::Local(d) => d.root.display().to_string(),
            Destination::S3(b) => b.url(),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Destination::Local(_))
    }

    /// Aborts the uploads an earlier outage left unfinished here; returns their keys.
    pub async fn abort_unfinished(&self) -> Vec<String> {
        match self {
            Destination::Local(_) => Vec::new(),
            Destination::S3(bucket) => bucket.abort_unfinished().await,
        }
    }

    /// Stores the chunks arriving on `chunks` as `key`, once `commit` says `true` after the
    /// channel closed; anything else leaves no trace. Returns the bytes stored.
    pub async fn put_stream(
        &self,
        key: &str,
        chunks: mpsc::Receiver<Bytes>,
        commit: oneshot::Receiver<bool>,
        progress: Arc<AtomicU64>,
    ) -> Result<u64> {
        match self {
            Destination::Local(d) => d.put_stream(key, chunks, commit, progress).await,
            Destination::S3(b) => b.put_stream(key, chunks, commit, progress).await,
        }
    }

    /// Stores a small object atomically.
    pub async fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        match self {
            Destination::Local(d) => d.put_bytes(key, data).await,
            Destination::S3(b) => b
                .store
                .put(&b.path(key), data.into())
                .await
                .map(|_| ())
                .map_err(|e| b.classify(e, key)),
        }
    }

    pub async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        match self {
            Destination::Local(d) => d.get_stream(key).await,
            Destination::S3(b) => {
                let result = b
                    .store
                    .get(&b.path(key))
                    .await
                    .map_err(|e| b.classify(e, key))?;
                let this = b.error_context();
                let key = key.to_owned();
                Ok(result
                    .into_stream()
                    .map_err(move |e| this.classify(e, &key))
                    .boxed())
            }
        }
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let mut stream = self.get_stream(key).await?;
        let mut data = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?);
        }
        Ok(data.freeze())
    }

    /// The file names directly under `dir` (a key prefix such as `app/db`).
    pub async fn list(&self, dir: &str) -> Result<Vec<String>> {
        match self {
            Destination::Local(d) => d.list(dir).await,
            Destination::S3(b) => {
                let prefix = b.path(dir);
                let listing = b
                    .store
                    .list_with_delimiter(Some(&prefix))
                    .await
                    .map_err(|e| b.classify(e, dir))?;
                Ok(listing
                    .objects
                    .into_iter()
                    .filter_map(|o| o.location.filename().map(str::to_owned))
                    .collect())
            }
        }
    }

    /// Removes unfinished uploads under `dir` older than `age` (what a crash mid-backup left)
    /// and returns their names. A bucket keeps unfinished multipart uploads out of listings;
    /// a lifecycle rule on the bucket expires them.
    pub async fn remove_stale_partials(&self, dir: &str, age: std::time::Duration) -> Vec<String> {
        let Destination::Local(local) = self else {
            return Vec::new();
        };
        let path = local.path(dir);
        let Ok(mut entries) = tokio::fs::read_dir(&path).await else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `.NAME.berth-RANDOM` (and `.NAME.partial` from older versions of berth).
            if !(name.starts_with('.') && (name.ends_with(".partial") || name.contains(".berth-")))
            {
                continue;
            }
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|elapsed| elapsed > age);
            if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
                removed.push(name);
            }
        }
        removed
    }

    /// Removes `key`; a missing key is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self {
            Destination::Local(d) => d.delete(key).await,
            Destination::S3(b) => match b.store.delete(&b.path(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(b.classify(e, key)),
            },
        }
    }
}

pub struct LocalDir {
    name: String,
    root: PathBuf,
}

impl LocalDir {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io_error(&self, path: &Path, action: &str, error: std::io::Error) -> BackupError {
        if is_disk_full(&error) {
            BackupError::DiskFull {
                destination: self.name.clone(),
                path: path.display().to_string(),
            }
        } else if error.kind() == std::io::ErrorKind::NotFound && action == "read" {
            BackupError::NotFound {
                destination: self.name.clone(),
                key: path.display().to_string(),
            }
        } else {
            BackupError::Storage {
                destination: self.name.clone(),
                detail: format!("cannot {action} {}: {error}", path.display()),
            }
        }
    }

    /// The directory holding `key` (made when `create`), opened below the storage's root
    /// without following a link, and the key's file name. The storage may be a directory
    /// others can write: nothing in it is followed.
    fn open_dir(&self, key: &str, create: bool) -> Result<(berth_fs::Dir, std::ffi::OsString)> {
        let relative = Path::new(key);
        let (Some(parent), Some(name)) = (relative.parent(), relative.file_name()) else {
            return Err(BackupError::Invalid(format!(
                "`{key}` is not a storage key"
            )));
        };
        if create {
            std::fs::create_dir_all(&self.root)
                .map_err(|e| self.io_error(&self.root, "create", e))?;
        }
        let dir = berth_fs::Dir::open_beneath(&self.root, parent, create).map_err(|e| match e {
            berth_fs::FsError::Io { source, path, .. } => {
                self.io_error(&path, if create { "create" } else { "read" }, source)
            }
            other => BackupError::File(other),
        })?;
        Ok((dir, name.to_owned()))
    }

    async fn put_stream(
        &self,
        key: &str,
        mut chunks: mpsc::Receiver<Bytes>,
        commit: oneshot::Receiver<bool>,
        progress: Arc<AtomicU64>,
    ) -> Result<u64> {
        let (dir, name) = self.open_dir(key, true)?;
        // A new hidden file under a random name, created exclusively: never a file (or a
        // link) someone placed there first.
        let (file, temp) = dir.create_temp(&name).map_err(|e| BackupError::Storage {
            destination: self.name.clone(),
            detail: e.to_string(),
        })?;
        let partial = dir.path().join(&temp);
        let result = async {
            let mut file = tokio::fs::File::from_std(file);
            let mut written = 0u64;
            while let Some(chunk) = chunks.recv().await {
                file.write_all(&chunk)
                    .await
                    .map_err(|e| self.io_error(&partial, "write", e))?;
                written += chunk.len() as u64;
                progress.store(written, Ordering::Relaxed);
            }
            if !commit.await.unwrap_or(false) {
                return Err(BackupError::Source("the backup was abandoned".to_owned()));
            }
            file.flush()
                .await
                .map_err(|e| self.io_error(&partial, "write", e))?;
            file.sync_all()
                .await
                .map_err(|e| self.io_error(&partial, "sync", e))?;
            drop(file);
            dir.rename(&temp, &name).map_err(|e| BackupError::Storage {
                destination: self.name.clone(),
                detail: e.to_string(),
            })?;
            let _ = dir.sync();
            Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = dir.remove_file(&temp);
        }
        result
    }

    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        // The same hidden-file, fsync and rename path as a whole backup.
        let (sender, chunks) = mpsc::channel(1);
        let (commit, committed) = oneshot::channel();
        let _ = sender.send(data).await;
        drop(sender);
        let _ = commit.send(true);
        self.put_stream(key, chunks, committed, Arc::new(AtomicU64::new(0)))
            .await
            .map(|_| ())
    }

    async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = self.path(key);
        // A regular file, reached without following a link: a link or FIFO planted in a
        // shared storage directory is refused, never read (or waited on).
        let (dir, name) = self.open_dir(key, false)?;
        let file = dir.open_file(&name).map_err(|e| match e {
            berth_fs::FsError::Io { source, .. } => self.io_error(&path, "read", source),
            other => BackupError::File(other),
        })?;
        let file = tokio::fs::File::from_std(file);
        let name = self.name.clone();
        let shown = path.display().to_string();
        Ok(
            tokio_util::io::ReaderStream::with_capacity(file, crate::pipeline::CHUNK)
                .map_err(move |e| BackupError::Storage {
                    destination: name.clone(),
                    detail: format!("cannot read {shown}: {e}"),
                })
                .boxed(),
        )
    }

    async fn list(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.path(dir);
        let mut entries = match tokio::fs::read_dir(&path).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_error(&path, "list", e)),
        };
        let mut names = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| self.io_error(&path, "list", e))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        let (dir, name) = match self.open_dir(key, false) {
            Ok(found) => found,
            Err(BackupError::NotFound { .. }) => return Ok(()),
            Err(error) => return Err(error),
        };
        dir.remove_file(&name).map(|_| ()).map_err(|e| match e {
            berth_fs::FsError::Io { source, .. } => self.io_error(&path, "delete", source),
            other => BackupError::Storage {
                destination: self.name.clone(),
                detail: other.to_string(),
            },
        })
    }
}

pub struct S3Bucket {
    name: String,
    store: Arc<AmazonS3>,
    settings: S3Settings,
}

/// What an S3 error message needs, detached from the bucket so streams can own it.
#[derive(Clone)]
struct S3ErrorContext {
    name: String,
    bucket: String,
    endpoint: String,
    key_secret_names: (String, String),
}

impl S3Bucket {
    fn path(&self, key: &str) -> ObjectPath {
        if self.settings.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.settings.prefix))
        }
    }

    fn url(&self) -> String {
        let mut url = format!("s3://{}", self.settings.bucket);
        if !self.settings.prefix.is_empty() {
            url.push('/');
            url.push_str(&self.settings.prefix);
        }
        if let Some(endpoint) = &self.settings.endpoint {
            url.push_str(" at ");
            url.push_str(endpoint);
        }
        url
    }

    fn error_context(&self) -> S3ErrorContext {
        S3ErrorContext {
            name: self.name.clone(),
            bucket: self.settings.bucket.clone(),
            endpoint: self
                .settings
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("s3.{}.amazonaws.com", self.settings.region)),
            key_secret_names: self.settings.key_secret_names.clone(),
        }
    }

    fn classify(&self, error: object_store::Error, key: &str) -> BackupError {
        self.error_context().classify(error, key)
    }

    async fn put_stream(
        &self,
        key: &str,
        mut chunks: mpsc::Receiver<Bytes>,
        commit: oneshot::Receiver<bool>,
        progress: Arc<AtomicU64>,
    ) -> Result<u64> {
        let path = self.path(key);
        let part_size = self.settings.part_size.max(5 << 20);
        // Hold back the first part: a backup smaller than one part goes up in one PUT.
        let mut first = BytesMut::new();
        let mut written = 0u64;
        while first.len() < part_size {
            match chunks.recv().await {
                Some(chunk) => {
                    written += chunk.len() as u64;
                    first.extend_from_slice(&chunk);
                }
                None => {
                    if !commit.await.unwrap_or(false) {
                        return Err(BackupError::Source("the backup was abandoned".to_owned()));
                    }
                    self.store
                        .put(&path, first.freeze().into())
                        .await
                        .map_err(|e| self.classify(e, key))?;
                    progress.store(written, Ordering::Relaxed);
                    return Ok(written);
                }
            }
        }
        let id = self
            .store
            .create_multipart(&path)
            .await
            .map_err(|e| self.classify(e, key))?;
        let record = self.record_upload(key, &id);
        in_progress().insert(id.clone());
        // Each part uploads in a task of its own, so parts keep moving while the next one is
        // read from a slow source; dropping the queue on an error aborts the rest.
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        let outcome = async {
            let concurrency = self.settings.concurrency.max(1);
            let mut parts = Vec::new();
            let mut pending = first;
            let mut index = 0usize;
            let mut closed = false;
            loop {
                if !closed && pending.len() < part_size {
                    match chunks.recv().await {
                        Some(chunk) => {
                            written += chunk.len() as u64;
                            pending.extend_from_slice(&chunk);
                            progress.store(written, Ordering::Relaxed);
                            continue;
                        }
                        None => closed = true,
                    }
                }
                // Never an empty part: some stores refuse one.
                if pending.is_empty() {
                    break;
                }
                let part = pending.split_to(pending.len().min(part_size)).freeze();
                let store = Arc::clone(&self.store);
                let (part_path, part_id) = (path.clone(), id.clone());
                let part_index = index;
                in_flight.push_back(AbortOnDrop(tokio::spawn(async move {
                    store
                        .put_part(&part_path, &part_id, part_index, part.into())
                        .await
                })));
                index += 1;
                while in_flight.len() >= concurrency {
                    if let Some(done) = in_flight.next().await {
                        parts.push(done.map_err(|e| self.classify(e, key))?);
                    }
                }
            }
            while let Some(done) = in_flight.next().await {
                parts.push(done.map_err(|e| self.classify(e, key))?);
            }
            Ok::<_, BackupError>((commit.await.unwrap_or(false), parts))
        }
        .await;
        drop(in_flight);
        let result = match outcome {
            Ok((true, parts)) => self
                .store
                .complete_multipart(&path, &id, parts)
                .await
                .map(|_| written)
                .map_err(|e| self.classify(e, key)),
            Ok((false, _)) => Err(BackupError::Source("the backup was abandoned".to_owned())),
            Err(error) => Err(error),
        };
        match &result {
            Ok(_) => {
                progress.store(written, Ordering::Relaxed);
                forget_upload(record);
            }
            // An outage usually takes the abort with it: the record stays, and the next
            // run against this bucket aborts it.
            Err(_) => {
                if self.store.abort_multipart(&path, &id).await.is_ok() {
                    forget_upload(record);
                }
            }
        }
        in_progress().remove(&id);
        result
    }

    fn journal_dir(&self) -> Option<PathBuf> {
        let root = self.settings.unfinished_uploads.as_ref()?;
        // One directory per bucket and prefix, so another storage never aborts these.
        let identity = format!(
            "{}\n{}\n{}",
            self.settings
                .endpoint
                .as_deref()
                .unwrap_or(&self.settings.region),
            self.settings.bucket,
            self.settings.prefix
        );
        Some(root.join(hex::encode(&sha2::Sha256::digest(identity.as_bytes())[..8])))
    }

    /// Records a multipart upload in progress; a failure to record only costs the cleanup.
    fn record_upload(&self, key: &str, id: &str) -> Option<PathBuf> {
        let dir = self.journal_dir()?;
        let file = dir.join(format!("{}.json", hex::encode(rand::random::<[u8; 8]>())));
        let record = UploadRecord {
            key: key.to_owned(),
            upload_id: id.to_owned(),
        };
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| serde_json::to_vec(&record).map_err(std::io::Error::other))
            .and_then(|json| std::fs::write(&file, json));
        match written {
            Ok(()) => Some(file),
            Err(error) => {
                tracing::warn!(%error, "cannot record a multipart upload in progress");
                None
            }
        }
    }

    /// Aborts the multipart uploads an earlier outage left unfinished in this bucket (their
    /// parts cost storage and are invisible in listings); returns the keys aborted. Uploads
    /// the bucket still cannot be asked about stay on record for the next time.
    pub async fn abort_unfinished(&self) -> Vec<String> {
        let Some(dir) = self.journal_dir() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut aborted = Vec::new();
        for entry in entries.flatten() {
            let record: Option<UploadRecord> = std::fs::read(entry.path())
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let Some(record) = record else {
                let _ = std::fs::remove_file(entry.path());
                continue;
            };
            // Another backup's upload, running now (backups of different apps, or an
            // environment's, may share a bucket and run at once).
            if in_progress().contains(&record.upload_id) {
                continue;
            }
            match self
                .store
                .abort_multipart(&self.path(&record.key), &record.upload_id)
                .await
            {
                Ok(()) => aborted.push(record.key),
                // Already gone (aborted by a lifecycle rule, or completed after all).
                Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), key = %record.key, "an unfinished upload could not be aborted yet");
                    continue;
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
        aborted
    }
}

/// The multipart uploads this process is running, which no cleanup may abort.
fn in_progress() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    static UPLOADS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    UPLOADS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A part upload's task, aborted when its queue is dropped (the upload failed).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<object_store::Result<T>> {
    type Output = object_store::Result<T>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|e| {
                Err(object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(e),
                })
            })
        })
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A multipart upload in progress, as recorded.
#[derive(serde::Serialize, serde::Deserialize)]
struct UploadRecord {
    key: String,
    upload_id: String,
}

fn forget_upload(record: Option<PathBuf>) {
    if let Some(file) = record {
        let _ = std::fs::remove_file(file);
    }
}

impl S3ErrorContext {
    fn classify(&self, error: object_store::Error, key: &str) -> BackupError {
        let text = error_chain(&error);
        let lower = text.to_ascii_lowercase();
        let refused_credentials = matches!(
            error,
            object_store::Error::Unauthenticated { .. }
                | object_store::Error::PermissionDenied { .. }
        ) || [
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "accessdenied",
            "403 forbidden",
            "status 403",
        ]
        .iter()
        .any(|needle| lower.contains(needle));
        if lower.contains("nosuchbucket") {
            return BackupError::NoSuchBucket {
                destination: self.name.clone(),
                bucket: self.bucket.clone(),
            };
        }
        if refused_credentials {
            return BackupError::CredentialsRefused {
                destination: self.name.clone(),
                detail: summarize(&text),
                key_secret: self.key_secret_names.0.clone(),
                secret_secret: self.key_secret_names.1.clone(),
            };
        }
        if let object_store::Error::NotFound { .. } = error {
            return BackupError::NotFound {
                destination: self.name.clone(),
                key: key.to_owned(),
            };
        }
        let unreachable = [
            "connection refused",
            "error trying to connect",
            "tcp connect error",
            "dns error",
            "failed to lookup address",
            "connection reset",
            "timed out",
            "deadline has elapsed",
            "error sending request",
            "client error (connect)",
        ]
        .iter()
        .any(|needle| lower.contains(needle));
        if unreachable {
            return BackupError::Unreachable {
                destination: self.name.clone(),
                endpoint: self.endpoint.clone(),
                detail: summarize(&text),
            };
        }
        BackupError::Storage {
            destination: self.name.clone(),
            detail: format!("{key}: {}", summarize(&text)),
        }
    }
}

/// The error and its sources, joined: the useful part of an object_store error is often
/// several sources deep.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

/// Keeps error text to one readable line.
fn summarize(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 400 {
        let mut end = 400;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn put(dest: &Destination, key: &str, data: &[u8], commit: bool) -> Result<u64> {
        let (tx, rx) = mpsc::channel(4);
        let (commit_tx, commit_rx) = oneshot::channel();
        let data = Bytes::copy_from_slice(data);
        let feeder = tokio::spawn(async move {
            for chunk in data.chunks(1000) {
                if tx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                    break;
                }
            }
            drop(tx);
            let _ = commit_tx.send(commit);
        });
        let result = dest
            .put_stream(key, rx, commit_rx, Arc::new(AtomicU64::new(0)))
            .await;
        feeder.await.unwrap();
        result
    }

    #[tokio::test]
    async fn a_local_object_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = Destination::local("local", dir.path().to_owned());
        let data = vec![5u8; 10_000];
        assert_eq!(
            put(&dest, "app/db/a.bin", &data, true).await.unwrap(),
            10_000
        );
        assert!(put(&dest, "app/db/b.bin", &data, false).await.is_err());
        assert_eq!(dest.list("app/db").await.unwrap(), ["a.bin"]);
        assert_eq!(dest.get_bytes("app/db/a.bin").await.unwrap(), data);
        dest.delete("app/db/a.bin").await.unwrap();
        dest.delete("app/db/a.bin").await.unwrap();
        assert!(dest.list("app/db").await.unwrap().is_empty());
        let missing = dest.get_bytes("app/db/a.bin").await.unwrap_err();
        assert!(matches!(missing, BackupError::NotFound { .. }), "{missing}");
    }

    #[tokio::test]
    async fn stale_partial_uploads_are_removed_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = Destination::local("local", dir.path().to_owned());
        let folder = dir.path().join("app/db");
        std::fs::create_dir_all(&folder).unwrap();
        let stale = folder.join(".20250101T000000Z-aaaa.sqlite.zst.age.partial");
        let fresh = folder.join(".20250102T000000Z-bbbb.sqlite.zst.age.partial");
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&fresh, b"x").unwrap();
        let two_days_ago =
            std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        let removed = dest
            .remove_stale_partials("app/db", std::time::Duration::from_secs(86_400))
            .await;
        assert_eq!(removed.len(), 1);
        assert!(!stale.exists());
        assert!(fresh.exists());
    }

    #[test]
    fn long_errors_are_summarized_on_one_line() {
        let text = format!("a\n  b {}", "x".repeat(1000));
        let line = summarize(&text);
        assert!(!line.contains('\n'));
        assert!(line.len() < 410);
    }
}
