//! A MySQL or MariaDB database, in an accessory or on another server: `mariadb-dump` (or
//! `mysqldump`) in one transaction, checked as a complete dump, loaded back with `mariadb`
//! (or `mysql`) while the app keeps running.

use super::*;

pub(crate) struct MysqlDatabase<'a> {
    pub db: &'a Database,
}

#[async_trait]
impl SourceKind for MysqlDatabase<'_> {
    fn content(&self) -> ContentKind {
        ContentKind::MysqlDump
    }

    async fn prepare(&self, backups: &Backups, manifest: &Manifest) -> Result<Prepared, OpError> {
        let db = self.db;
        let access = backups.database_access(manifest, db, false).await?;
        let mut args = strings(&[
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--user",
            &db.user,
        ]);
        args.extend(access.host_args.clone());
        args.push(db.database.clone());
        let command = mysql_tool(&access.place, "mariadb-dump", "mysqldump", args);
        let label = format!(
            "mysql database {} in {}",
            db.database,
            access.place.describe()
        );
        let source = CommandDump {
            place: access.place,
            command,
            env: access.env,
            kind: self.content(),
            label,
            what: "mariadb-dump".to_owned(),
        };
        Ok(Prepared::builtin(backups, Box::new(source), self.content()))
    }

    async fn restore(&self, backups: &Backups, job: &mut dyn Restoring) -> Result<(), OpError> {
        let db = self.db;
        let access = backups.database_access(job.manifest(), db, false).await?;
        job.set_target(format!(
            "mysql database {} in {}",
            db.database,
            access.place.describe()
        ));
        let mut count = strings(&["--batch", "--skip-column-names", "--user", &db.user]);
        count.extend(access.host_args.clone());
        count.extend(strings(&[
            "--execute",
            &format!(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}'",
                db.database.replace('\'', "''")
            ),
        ]));
        let tables = access
            .place
            .query(
                &mysql_tool(&access.place, "mariadb", "mysql", count),
                &access.env,
            )
            .await
            .map_err(|e| OpError::failed(format!("cannot look at the database: {e}")))?;
        job.guard(tables_held(&tables)).await?;
        let staged = job.stage().await?;
        let step = job
            .progress()
            .step(format!("load the dump into {}", db.database));
        let mut args = strings(&["--user", &db.user]);
        args.extend(access.host_args.clone());
        args.push(db.database.clone());
        let command = mysql_tool(&access.place, "mariadb", "mysql", args);
        let ran = access
            .place
            .run(&command, &access.env, Some(feed_file(staged.clone())), None)
            .await;
        let _ = std::fs::remove_file(&staged);
        let outcome = step.finish(ran.map_err(OpError::from))?.0;
        if outcome.exit_code != Some(0) {
            return Err(OpError::failed(format!(
                "loading the dump stopped part-way: {}",
                last_lines(&outcome.stderr)
            ))
            .hint(match job.safety_backup() {
                Some(id) => format!(
                    "the safety backup {id} holds what was there before: berth restore {} --id {id} --force",
                    job.backup_name()
                ),
                None => "the database held no tables before".to_owned(),
            }));
        }
        let id = job.backup_id().to_owned();
        job.did(format!("loaded {id} into database {}", db.database));
        Ok(())
    }
}

/// The MySQL tool named `preferred`, or `fallback` where it is missing (older images and
/// servers have only `mysqldump`/`mysql`).
pub(crate) fn mysql_tool(
    place: &Place,
    preferred: &str,
    fallback: &str,
    args: Vec<String>,
) -> Vec<String> {
    match place {
        Place::Container { .. } => {
            let mut command = strings(&[
                "sh",
                "-c",
                &format!(
                    "if command -v {preferred} >/dev/null 2>&1; then exec {preferred} \"$@\"; else exec {fallback} \"$@\"; fi"
                ),
                preferred,
            ]);
            command.extend(args);
            command
        }
        Place::Host => {
            let found = std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(preferred).is_file())
            });
            let mut command = vec![if found { preferred } else { fallback }.to_owned()];
            command.extend(args);
            command
        }
    }
}
