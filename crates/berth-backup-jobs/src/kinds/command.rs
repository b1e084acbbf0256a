//! Anything a command in a service's container can print (Redis's `--rdb -`, `mongodump
//! --archive`, an app's own export): stored as a stream, put back by feeding it to the
//! restore command.

use super::*;

pub(crate) struct DumpCommand<'a> {
    pub service: &'a str,
    pub dump: &'a [String],
    pub restore: Option<&'a [String]>,
}

#[async_trait]
impl SourceKind for DumpCommand<'_> {
    fn content(&self) -> ContentKind {
        ContentKind::Stream
    }

    async fn prepare(&self, backups: &Backups, manifest: &Manifest) -> Result<Prepared, OpError> {
        let place = backups.place_in(manifest, self.service).await?;
        let source = CommandDump {
            label: format!("`{}` in {}", self.dump.join(" "), place.describe()),
            place,
            command: self.dump.to_vec(),
            env: Vec::new(),
            kind: self.content(),
            what: format!("`{}`", self.dump.join(" ")),
        };
        Ok(Prepared::builtin(backups, Box::new(source), self.content()))
    }

    async fn restore(&self, backups: &Backups, job: &mut dyn Restoring) -> Result<(), OpError> {
        let Some(restore) = self.restore else {
            return Err(OpError::invalid(format!(
                "backup {} has no restore command",
                job.backup_name()
            ))
            .hint("add restore = [\"…\"] to its source, or restore to a file with --to PATH"));
        };
        let service = self.service;
        job.set_target(format!("`{}` in {service}", restore.join(" ")));
        // What a command keeps cannot be looked at: it always counts as live data.
        job.guard(Some("unknown".to_owned())).await?;
        let staged = job.stage().await?;
        let place = backups
            .running_containers(job.manifest(), service)
            .await?
            .into_iter()
            .next()
            .map(|(id, name)| Place::Container {
                runtime: backups.runtime().clone(),
                id,
                name,
            })
            .ok_or_else(|| OpError::failed(format!("{service} has no running container")))?;
        let step = job.progress().step(format!("run `{}`", restore.join(" ")));
        let ran = place
            .run(restore, &[], Some(feed_file(staged.clone())), None)
            .await;
        let _ = std::fs::remove_file(&staged);
        let outcome = step.finish(ran.map_err(OpError::from))?.0;
        if outcome.exit_code != Some(0) {
            return Err(OpError::failed(format!(
                "the restore command exited with status {}: {}",
                outcome
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                outcome.stderr.trim()
            )));
        }
        let id = job.backup_id().to_owned();
        job.did(format!("fed {id} to `{}`", restore.join(" ")));
        Ok(())
    }
}
