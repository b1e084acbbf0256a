//! A named volume of the app: its files as a tar archive, optionally with its users paused
//! and commands run before and after; put back by unpacking beside the volume's data and
//! swapping it in while every service mounting the volume is stopped.

use super::*;

pub(crate) struct NamedVolume<'a> {
    /// The app-level volume name, as the manifest writes it.
    pub volume: &'a str,
    pub pause: bool,
    /// Where `before` and `after` run.
    pub service: Option<&'a str>,
    pub before: Option<&'a [String]>,
    pub after: Option<&'a [String]>,
}

#[async_trait]
impl SourceKind for NamedVolume<'_> {
    fn content(&self) -> ContentKind {
        ContentKind::Tar
    }

    fn users(&self, manifest: &Manifest) -> Vec<String> {
        volume_users(manifest, self.volume)
    }

    async fn prepare(&self, backups: &Backups, manifest: &Manifest) -> Result<Prepared, OpError> {
        let dir = backups
            .volume_dir(&manifest.app, self.volume, false)
            .await?;
        let mut paused = Vec::new();
        if self.pause {
            for user in self.users(manifest) {
                paused.extend(backups.running_containers(manifest, &user).await?);
            }
        }
        let place = match self.service {
            Some(service) if self.before.is_some() || self.after.is_some() => {
                Some(backups.place_in(manifest, service).await?)
            }
            _ => None,
        };
        let inner = Box::new(Directory {
            path: dir,
            label: format!("volume {}", names::volume(&manifest.app, self.volume)),
            kind: ContentKind::Tar,
        });
        let mut prepared = Prepared::builtin(backups, inner, self.content());
        prepared.source = Box::new(Guarded {
            inner: prepared.source,
            runtime: backups.runtime().clone(),
            pause: paused,
            before: place.clone().zip(self.before.map(<[String]>::to_vec)),
            after: place.zip(self.after.map(<[String]>::to_vec)),
            warnings: prepared.warnings.clone(),
        });
        Ok(prepared)
    }

    async fn restore(&self, backups: &Backups, job: &mut dyn Restoring) -> Result<(), OpError> {
        let app = job.manifest().app.clone();
        let dir = backups.volume_dir(&app, self.volume, true).await?;
        job.set_target(format!("volume {}", names::volume(&app, self.volume)));
        let users = self.users(job.manifest());
        job.restore_directory(&dir, &users).await
    }
}

/// A source with things to do around it: containers to pause, commands before and after.
pub(super) struct Guarded {
    pub(super) inner: Box<dyn Source>,
    pub(super) runtime: Arc<dyn ContainerRuntime>,
    pub(super) pause: Vec<(String, String)>,
    pub(super) before: Option<(Place, Vec<String>)>,
    pub(super) after: Option<(Place, Vec<String>)>,
    pub(super) warnings: Arc<Mutex<Vec<String>>>,
}

impl Guarded {
    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }
}

#[async_trait]
impl Source for Guarded {
    fn kind(&self) -> ContentKind {
        self.inner.kind()
    }

    fn describe(&self) -> String {
        let mut text = self.inner.describe();
        if !self.pause.is_empty() {
            let names: Vec<&str> = self.pause.iter().map(|(_, n)| n.as_str()).collect();
            text.push_str(&format!(" (with {} paused)", names.join(", ")));
        }
        text
    }

    async fn produce(&mut self, out: PlainSender) -> Result<String, BackupError> {
        if let Some((place, command)) = &self.before {
            place
                .query(command, &[])
                .await
                .map_err(|e| BackupError::Source(format!("the `before` command failed: {e}")))?;
        }
        let mut paused = Vec::new();
        for (id, name) in &self.pause {
            match self.runtime.pause_container(id).await {
                Ok(()) => paused.push((id.clone(), name.clone())),
                Err(error) => {
                    for (id, name) in &paused {
                        if let Err(e) = self.runtime.unpause_container(id).await {
                            self.warn(format!("cannot unpause {name}: {e}"));
                        }
                    }
                    return Err(BackupError::Source(format!(
                        "cannot pause {name} for the backup: {error}"
                    )));
                }
            }
        }
        let result = self.inner.produce(out).await;
        for (id, name) in &paused {
            // Retried: a container left paused is an outage.
            let mut last = None;
            for attempt in 0..5 {
                match self.runtime.unpause_container(id).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
            if let Some(e) = last {
                self.warn(format!(
                    "cannot unpause {name} after the backup: {e}; run `docker unpause {name}`"
                ));
            }
        }
        if let Some((place, command)) = &self.after
            && let Err(e) = place.query(command, &[]).await
        {
            self.warn(format!("the `after` command failed: {e}"));
        }
        result
    }
}
