//! The build context uploads a deploy refers to: received whole, quota-limited, swept after an hour.

use super::*;

/// The largest JSON body a request may have.
pub(super) const JSON_LIMIT: usize = 4 << 20;
/// How long an upload waits for the deploy that uses it.
pub(super) const UPLOAD_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes uploads older than [`UPLOAD_TTL`] (their deploy never came, or failed before it
/// could clean up) and returns the bytes the others hold.
pub(super) fn sweep_uploads(dir: &std::path::Path) -> u64 {
    let mut held = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let expired = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > UPLOAD_TTL);
        if expired {
            tracing::info!(upload = %entry.path().display(), "removing an upload no deploy used within an hour");
            let _ = std::fs::remove_file(entry.path());
        } else {
            held += meta.len();
        }
    }
    held
}

pub(super) async fn upload(State(state): State<ApiState>, body: Body) -> ApiResult<Json<Upload>> {
    let id = hex::encode(rand::random::<[u8; 12]>());
    let path = state.uploads.join(format!("{id}.tar"));
    let dir = state.uploads.clone();
    let held = tokio::task::spawn_blocking(move || sweep_uploads(&dir))
        .await
        .unwrap_or(0);
    let quota = state.upload_quota;
    let over_quota = |bytes: u64, others: u64| -> ApiFailure {
        ApiFailure(
            OpError::invalid(format!(
                "the agent holds {} of build contexts for deploys in progress, and this one would take it past its quota of {} (at {} so far)",
                human_size(held.saturating_add(others)),
                human_size(quota),
                human_size(bytes)
            ))
            .hint("shrink the build context (.dockerignore), wait for other deploys to finish, or raise the agent's --upload-quota"),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
    };
    let failed = |e: std::io::Error| -> ApiFailure {
        let message = if e.raw_os_error() == Some(28) {
            format!(
                "the agent's disk is full while receiving the build context ({})",
                state.uploads.display()
            )
        } else {
            format!(
                "cannot store the build context in {}: {e}",
                state.uploads.display()
            )
        };
        OpError::failed(message).into()
    };
    let mut file = tokio::fs::File::create(&path).await.map_err(failed)?;
    // Removes the file unless the upload completes, however this handler ends (a client
    // that goes away drops it mid-way), and counts its bytes against the quota meanwhile.
    let mut receiving = Receiving {
        path: Some(path.clone()),
        counted: 0,
        in_progress: Arc::clone(&state.uploads_in_progress),
    };
    let mut stream = body.into_data_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                return Err(
                    OpError::invalid(format!("the upload was interrupted: {error}")).into(),
                );
            }
        };
        bytes += chunk.len() as u64;
        let all_in_progress = receiving.count(chunk.len() as u64);
        if held.saturating_add(all_in_progress) > quota {
            drop(file);
            return Err(over_quota(bytes, all_in_progress - bytes));
        }
        if let Err(error) = file.write_all(&chunk).await {
            return Err(failed(error));
        }
    }
    file.sync_all().await.map_err(failed)?;
    receiving.done();
    Ok(Json(Upload { id, bytes }))
}

/// An upload being received: its file is removed unless [`Receiving::done`] is called, and
/// its bytes are counted among those in progress until it ends either way.
pub(super) struct Receiving {
    path: Option<PathBuf>,
    counted: u64,
    in_progress: Arc<std::sync::atomic::AtomicU64>,
}

impl Receiving {
    /// Counts `n` more bytes; returns the bytes of every upload in progress.
    fn count(&mut self, n: u64) -> u64 {
        self.counted += n;
        self.in_progress
            .fetch_add(n, std::sync::atomic::Ordering::AcqRel)
            .saturating_add(n)
    }

    fn done(mut self) {
        self.path = None;
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.in_progress
            .fetch_sub(self.counted, std::sync::atomic::Ordering::AcqRel);
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(super) fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{b} bytes"),
    }
}

pub(super) fn upload_path(state: &ApiState, id: &str) -> Option<PathBuf> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let path = state.uploads.join(format!("{id}.tar"));
    path.exists().then_some(path)
}
