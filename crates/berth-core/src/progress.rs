//! Reporting an operation's steps: to the client that asked (as [`OperationEvent`]s) and to
//! the state file's event log.

use berth_api::OperationEvent;
use berth_state::Store;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    sender: Option<UnboundedSender<OperationEvent>>,
    store: Option<Arc<Store>>,
    app: String,
    release: Mutex<Option<i64>>,
}

impl Progress {
    pub fn new(
        app: &str,
        sender: Option<UnboundedSender<OperationEvent>>,
        store: Option<Arc<Store>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sender,
                store,
                app: app.to_owned(),
                release: Mutex::new(None),
            }),
        }
    }

    /// Progress that goes nowhere (background work nobody watches).
    pub fn silent(app: &str) -> Self {
        Self::new(app, None, None)
    }

    pub fn app(&self) -> &str {
        &self.inner.app
    }

    pub fn set_release(&self, release: i64) {
        *self.inner.release.lock().unwrap_or_else(|p| p.into_inner()) = Some(release);
    }

    fn emit(&self, event: OperationEvent) {
        if let Some(sender) = &self.inner.sender {
            // The client may have gone away; the operation goes on regardless.
            let _ = sender.send(event);
        }
    }

    fn record(&self, level: &str, message: &str) {
        if let Some(store) = &self.inner.store {
            let release = *self.inner.release.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = store.add_event(&self.inner.app, release, level, message) {
                tracing::warn!(%error, "cannot record a deploy event");
            }
        }
    }

    pub fn step(&self, name: impl Into<String>) -> Step {
        let name = name.into();
        tracing::info!(app = %self.inner.app, step = %name, "started");
        self.emit(OperationEvent::Started { step: name.clone() });
        Step {
            progress: self.clone(),
            name,
            started: Instant::now(),
            finished: false,
        }
    }

    pub fn log(&self, message: impl Into<String>) {
        self.emit(OperationEvent::Log {
            message: message.into(),
        });
    }

    /// Bytes a step has moved so far (a progress bar in a terminal).
    pub fn transfer(&self, step: &str, bytes: u64, total: Option<u64>) {
        self.emit(OperationEvent::Transfer {
            step: step.to_owned(),
            bytes,
            total,
        });
    }

    pub fn finish(&self, event: OperationEvent) {
        self.emit(event);
    }
}

/// A step in progress. Dropping it unfinished reports it as failed.
pub struct Step {
    progress: Progress,
    name: String,
    started: Instant,
    finished: bool,
}

impl Step {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn done(mut self, detail: Option<String>) {
        self.finished = true;
        let elapsed_ms = self.elapsed_ms();
        let message = match &detail {
            Some(d) => format!("{}: {d} ({elapsed_ms} ms)", self.name),
            None => format!("{} ({elapsed_ms} ms)", self.name),
        };
        tracing::info!(app = %self.progress.inner.app, step = %self.name, elapsed_ms, "done");
        self.progress.record("info", &message);
        self.progress.emit(OperationEvent::Done {
            step: self.name.clone(),
            elapsed_ms,
            detail,
        });
    }

    /// Ends the step as the result says, passing the result on.
    pub fn finish<T>(
        self,
        result: Result<T, crate::error::OpError>,
    ) -> Result<T, crate::error::OpError> {
        match &result {
            Ok(_) => self.done(None),
            Err(error) => self.fail(&error.message),
        }
        result
    }

    pub fn fail(mut self, message: &str) {
        self.finished = true;
        let elapsed_ms = self.elapsed_ms();
        tracing::warn!(app = %self.progress.inner.app, step = %self.name, elapsed_ms, message, "failed");
        self.progress
            .record("error", &format!("{}: {message}", self.name));
        self.progress.emit(OperationEvent::Failed {
            step: self.name.clone(),
            elapsed_ms,
            message: message.to_owned(),
        });
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            let elapsed_ms = self.elapsed_ms();
            self.progress.emit(OperationEvent::Failed {
                step: self.name.clone(),
                elapsed_ms,
                message: "interrupted".into(),
            });
        }
    }
}

/// `count` and `noun`, plural unless the count is one ("1 container", "3 containers").
pub fn counted(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::counted;

    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(counted(1, "container"), "1 container");
        assert_eq!(counted(0, "volume"), "0 volumes");
        assert_eq!(counted(3, "container"), "3 containers");
    }
}
